"""Extractive question answering: the span of a context that answers a question.

    finetune_qa("train.json", "dev.json", "roberta-small-books", TrainConfig(out_dir="runs/squad"))
    evaluate_qa("runs/squad/best", "dev-v1.1.json")          # {"exact_match", "f1"}
    QuestionAnswerer.from_pretrained("runs/squad/best").answer("Who visited Paris?", "Angela Merkel visited Paris.")

    roberta finetune qa --train train.json --dev dev.json --out runs/squad
    roberta finetune split-squad dev-v1.1.json --train-out train.json --dev-out dev.json
    roberta qa --question "Who visited Paris?" --context "Angela Merkel visited Paris." --model runs/squad/best
    POST /qa {"question": "Who visited Paris?", "context": "Angela Merkel visited Paris."}

Data: SQuAD v1.1 JSON. Long contexts are cut into overlapping windows, in training and at
inference; spans are decoded as transformers' (v4) question-answering pipeline did (tests/
test_predict.py checks it on SQuAD questions that need several windows).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from roberta.atomic import write_text_atomic
from roberta.heads import RobertaForQuestionAnswering
from roberta.metrics import squad_scores
from roberta.predict import Predictor, Texts, as_text_list
from roberta.tasks.common import (
    Feature,
    Task,
    field_of,
    load_finetuned,
    max_length_for,
    read_jsonl,
    read_text,
    run_finetuning,
    short,
    with_token_types,
)
from roberta.tasks.common import (
    Texts as BodyTexts,
)
from roberta.tokenizer import Tokenizer
from roberta.train import TrainConfig, TrainResult, seed_everything

# ---- data ------------------------------------------------------------------------------------------


@dataclass
class QaExample:
    """One SQuAD question: the answers' texts and character starts in `context`."""

    id: str
    question: str
    context: str
    answers: list[str]
    answer_starts: list[int]


def load_squad(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ValueError(f"{path} is not SQuAD JSON: expected an object with a 'data' list of articles")
    return data["data"]


def read_squad(path: str | os.PathLike) -> list[QaExample]:
    """Read SQuAD v1.1 JSON (articles -> paragraphs -> questions). Every question needs an answer
    whose text sits at its `answer_start` in the context (unanswerable questions are not supported)."""
    path = Path(path)
    examples = []
    try:
        for article in load_squad(path):
            for paragraph in article["paragraphs"]:
                context = paragraph["context"]
                for qa in paragraph["qas"]:
                    examples.append(qa_example(path, qa, context))
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path} is not SQuAD v1.1 JSON: missing or malformed field {e}") from None
    if not examples:
        raise ValueError(f"{path} holds no questions")
    return examples


def qa_example(path: Path, qa: dict[str, Any], context: str) -> QaExample:
    answers = [a["text"] for a in qa["answers"]]
    starts = [int(a["answer_start"]) for a in qa["answers"]]
    if not answers:
        raise ValueError(
            f"{path}: question {qa['id']!r} has no answer (SQuAD v2 unanswerables are not supported)"
        )
    for text, start in zip(answers, starts):
        if context[start : start + len(text)] != text:
            raise ValueError(
                f"{path}: question {qa['id']!r}: answer {text!r} is not at character {start} of its context"
            )
    return QaExample(str(qa["id"]), qa["question"], context, answers, starts)


def split_squad(
    path: str | os.PathLike,
    fraction: float,
    train_out: str | os.PathLike,
    dev_out: str | os.PathLike,
    overwrite: bool = False,
) -> tuple[int, int]:
    """Write the first `fraction` of a SQuAD file's articles (in file order) to `train_out` and the
    rest to `dev_out` (each atomically); returns the two article counts. No question's context is
    in both files, since a paragraph belongs to one article. Never writes over `path`; an existing
    output file is replaced only with `overwrite`."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
    source = Path(path).resolve()
    outs = [Path(train_out), Path(dev_out)]
    if outs[0].resolve() == outs[1].resolve():
        raise ValueError(f"--train-out and --dev-out are the same file ({train_out}); name two files")
    for out in outs:
        if out.resolve() == source:
            raise ValueError(f"{out} is the input file: splitting it would write over it; name another file")
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} exists: pass --overwrite to replace it, or name another file")
    articles = load_squad(Path(path))
    cut = round(fraction * len(articles))
    if cut == 0 or cut == len(articles):
        raise ValueError(f"{path} has {len(articles)} articles: a {fraction} split leaves one side empty")
    for out, part in ((train_out, articles[:cut]), (dev_out, articles[cut:])):
        write_text_atomic(Path(out), json.dumps({"version": "1.1", "data": part}))
    return cut, len(articles) - cut


@dataclass
class QaWindow:
    """Where a QA feature came from: its example, and each token's (start, end) characters in the
    context (None for question, special and padding tokens)."""

    example: int
    offsets: list[tuple[int, int] | None]


def qa_features(
    tokenizer: Tokenizer, examples: Sequence[QaExample], max_length: int, stride: int
) -> tuple[list[Feature], list[QaWindow]]:
    """`<s> question </s></s> context window </s>` rows: contexts too long for max_length are cut
    into windows that overlap by `stride` tokens; questions are cut to half of max_length.

    Each feature has input_ids and start_positions / end_positions: the first answer's first and
    last token, or 0 (`<s>`) when the window does not hold the whole answer.
    """
    qa_stride(max_length, stride)
    questions = [cut_question(tokenizer, e.question, max_length // 2) for e in examples]
    enc = tokenizer(
        questions,
        [e.context for e in examples],
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    features, windows = [], []
    for row, ids in enumerate(enc["input_ids"]):
        i = enc["overflow_to_sample_mapping"][row]
        offsets = [
            tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][row], enc.sequence_ids(row))
        ]
        start, end = answer_tokens(offsets, examples[i].answer_starts[0], examples[i].answers[0])
        features.append({"input_ids": ids, "start_positions": start, "end_positions": end})
        windows.append(QaWindow(i, offsets))
    return with_token_types(features, enc), windows


def qa_stride(max_length: int, stride: int | None) -> int:
    """The overlap of context windows: stride, default max_length // 8; below max_length // 4, so
    that a window (whose question takes at most half) always moves on through the context."""
    stride = max_length // 8 if stride is None else stride
    if not 0 <= stride < max_length // 4:
        raise ValueError(f"stride must be between 0 and {max_length // 4 - 1} for max_length {max_length}")
    return stride


def cut_question(tokenizer: Tokenizer, question: str, max_tokens: int) -> str:
    """The question, cut after its first max_tokens tokens (so the context always has room)."""
    enc = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
    if len(enc["input_ids"]) <= max_tokens:
        return question
    return question[: enc["offset_mapping"][max_tokens - 1][1]]


def answer_tokens(offsets: Sequence[tuple[int, int] | None], start_char: int, answer: str) -> tuple[int, int]:
    """The first and last token whose characters overlap answer = context[start_char : start_char +
    len(answer)], given each token's context offsets (None outside the context); (0, 0) when the
    answer is not wholly inside these tokens."""
    end_char = start_char + len(answer)
    inside = [t for t, o in enumerate(offsets) if o is not None]
    if not inside or offsets[inside[0]][0] > start_char or offsets[inside[-1]][1] < end_char:
        return 0, 0
    first = next(t for t in inside if offsets[t][1] > start_char)
    last = next(t for t in reversed(inside) if offsets[t][0] < end_char)
    return first, last


def qa_predictions(
    model: nn.Module,
    tokenizer: Tokenizer,
    examples: Sequence[QaExample],
    max_length: int,
    stride: int,
    batch_size: int = 32,
) -> dict[str, str]:
    """Question id -> predicted answer, decoded by `QuestionAnswerer` (the best span
    over all of the question's windows, widened to whole words), with questions cut as in training."""
    answerer = QuestionAnswerer(model, tokenizer)
    questions = [cut_question(tokenizer, e.question, max_length // 2) for e in examples]
    contexts = [e.context for e in examples]
    answers = answerer.answer(
        questions, contexts, max_length=max_length, doc_stride=stride, batch_size=batch_size
    )
    return {e.id: a["answer"] for e, a in zip(examples, answers)}


def qa_scores(
    model: nn.Module,
    tokenizer: Tokenizer,
    examples: Sequence[QaExample],
    max_length: int,
    stride: int,
    batch_size: int = 32,
) -> dict[str, float]:
    """SQuAD exact match and F1 (percent) of `qa_predictions` against every gold answer."""
    predictions = qa_predictions(model, tokenizer, examples, max_length, stride, batch_size)
    return squad_scores(predictions, {e.id: e.answers for e in examples})


# ---- fine-tuning and evaluation --------------------------------------------------------------------


def finetune_qa(
    train_file: str | os.PathLike,
    dev_file: str | os.PathLike,
    model: str | os.PathLike,
    cfg: TrainConfig,
    *,
    max_length: int | None = None,
    stride: int | None = None,
    resume: bool = False,
) -> TrainResult:
    """Fine-tune `model` for extractive QA on SQuAD v1.1 JSON; the dev file is scored by SQuAD exact
    match and F1. stride: tokens shared by consecutive context windows (default max_length // 8)."""
    train_ex, dev_ex = read_squad(train_file), read_squad(dev_file)
    tokenizer = Tokenizer.from_pretrained(model)
    seed_everything(cfg.seed)
    net = RobertaForQuestionAnswering.from_pretrained(model, num_labels=2, id2label=None)
    length = max_length_for(tokenizer, net.config, max_length)
    stride = qa_stride(length, stride)
    train_f, _ = qa_features(tokenizer, train_ex, length, stride)

    def eval_fn(m: nn.Module) -> dict[str, float]:
        return qa_scores(m, tokenizer, dev_ex, length, stride, cfg.batch_size)

    return run_finetuning(net, tokenizer, train_f, cfg, eval_fn, "f1", resume)


def evaluate_qa(
    model: str | os.PathLike,
    data_file: str | os.PathLike,
    *,
    max_length: int | None = None,
    stride: int | None = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """SQuAD exact match and F1 (percent) of a fine-tuned QA model on a SQuAD v1.1 file."""
    tokenizer, net = load_finetuned(model, RobertaForQuestionAnswering, device, dtype)
    examples = read_squad(data_file)
    length = max_length_for(tokenizer, net.config, max_length)
    return qa_scores(net, tokenizer, examples, length, qa_stride(length, stride), batch_size)


# ---- inference -------------------------------------------------------------------------------------


class QuestionAnswerer(Predictor):
    """The span of a context that answers a question, with its character offsets."""

    model_class = RobertaForQuestionAnswering

    def answer(
        self,
        question: Texts,
        context: Texts,
        top_k: int = 1,
        max_answer_len: int = 30,
        doc_stride: int | None = None,
        max_length: int | None = None,
        batch_size: int = 32,
    ) -> dict | list:
        """The best answer(s) to each question in its context.

        Args:
            question, context: a str each, or two lists of the same length.
            top_k: how many answers per question.
            max_answer_len: the longest answer, in tokens.
            max_length: tokens per window (question + context + 4 special tokens); default
                min(384, the model's maximum).
            doc_stride: tokens shared by consecutive windows of a long context; default
                min(max_length // 2, 128).
        Returns:
            Per question, {"answer", "score", "start", "end"} with context[start:end] == answer when
            top_k == 1, else a list of up to top_k such dicts, best first. The score is the span's
            probability, summed over the spans that give the same text (see `merge_answers`).
        """
        questions, single = as_text_list(question, "question")
        contexts, single_context = as_text_list(context, "context")
        if single != single_context or len(questions) != len(contexts):
            raise ValueError(
                "pass one context per question: a str and a str, or two lists of the same length"
            )
        max_length, doc_stride = self._check(
            questions, contexts, top_k, max_answer_len, max_length, doc_stride
        )
        batch = self.tokenizer(
            questions,
            contexts,
            truncation="only_second",
            max_length=max_length,
            stride=doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )  # a row per window: <s> question </s></s> part of the context </s>
        windows = self.run(batch["input_ids"], batch_size, self._span_logits, batch.get("token_type_ids"))
        rows_of: list[list[int]] = [[] for _ in questions]
        for w, q in enumerate(batch["overflow_to_sample_mapping"]):
            rows_of[q].append(w)
        results = []
        for q, rows in enumerate(rows_of):
            # 2k + 10 candidates per window, as the pipeline: spans merge when they give one text
            answers = merge_answers(
                contexts[q], [(batch.encodings[w], *windows[w]) for w in rows], 2 * top_k + 10, max_answer_len
            )[:top_k]
            results.append(answers[0] if top_k == 1 else answers)
        return results[0] if single else results

    def _span_logits(self, ids: torch.Tensor, mask: torch.Tensor, **types) -> list:
        """Per row: (start logits, end logits), each (T,) without the padding; `types`: the
        token_type_ids of a family that has them (BERT: 1 on the context)."""
        out = self.model(ids, mask, **types)
        starts, ends = out.start_logits.float().cpu(), out.end_logits.float().cpu()  # (B, T) each
        return [(s[:n], e[:n]) for s, e, n in zip(starts, ends, mask.sum(1).tolist())]

    def _check(self, questions, contexts, top_k, max_answer_len, max_length, doc_stride):
        """Clear errors for bad arguments; returns (max_length, doc_stride) with defaults filled in."""
        for i, (q, c) in enumerate(zip(questions, contexts)):
            if not c.strip():
                raise ValueError(
                    f"question #{i} has no context (empty text): pass the text that holds the answer"
                )
            if not q.strip():
                raise ValueError(f"question #{i} is empty")
        for name, value in (("top_k", top_k), ("max_answer_len", max_answer_len)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        max_length = min(384, self.max_length) if max_length is None else max_length
        if not 8 <= max_length <= self.max_length:
            raise ValueError(
                f"max_length must be in 8..{self.max_length} (the model's limit), got {max_length}"
            )
        doc_stride = min(max_length // 2, 128) if doc_stride is None else doc_stride
        for i, q in enumerate(questions):
            room = max_length - 4 - len(self.tokenizer.tokenize(q))  # 4: <s> Q </s></s> C </s>
            if room <= doc_stride or doc_stride < 0:
                raise ValueError(
                    f"question #{i} leaves {room} context tokens per window of max_length={max_length}; "
                    f"doc_stride={doc_stride} must be in 0..{room - 1}: shorten the question, "
                    "raise max_length or lower doc_stride"
                )
        return max_length, doc_stride


def window_candidates(
    start: torch.Tensor, end: torch.Tensor, context: torch.Tensor, n: int, max_answer_len: int
):
    """The n best spans of one window: [(probability, first token, last token)], best first.

    start, end: (T,) logits; context: (T,) bool, True on the context's tokens. Probabilities are
    softmaxes over the context tokens and <s> — the "no answer here" position of SQuAD 2-style models,
    so a window the model finds no answer in gives low span scores — then <s> is dropped.
    A span's probability is p_start * p_end, with first <= last < first + max_answer_len.
    """
    allowed = context.clone()
    allowed[0] = True
    p_start = start.masked_fill(~allowed, float("-inf")).softmax(-1)  # (T,)
    p_end = end.masked_fill(~allowed, float("-inf")).softmax(-1)
    p_start[0] = p_end[0] = 0.0
    spans = (p_start[:, None] * p_end[None, :]).triu().tril(max_answer_len - 1)  # (T, T): [first, last]
    flat = spans.flatten()
    best = flat.topk(min(n, int(flat.gt(0).sum())))
    T = start.numel()
    return [(p, i // T, i % T) for p, i in zip(best.values.tolist(), best.indices.tolist())]


def merge_answers(context: str, windows: list, n: int, max_answer_len: int) -> list[dict]:
    """All windows' best spans as answers, best first, as transformers' question-answering pipeline
    gives them: each span is widened to whole words (the first token's word start to the last
    token's word end), and spans that give the same text (ignoring case) add their scores — the
    same answer found twice, by other sub-tokens or in overlapping windows, is one answer.

    windows: [(tokenizers.Encoding, start logits (T,), end logits (T,))] in context order.
    """
    answers: dict[str, dict] = {}
    for encoding, start, end in windows:
        in_context = torch.tensor([s == 1 for s in encoding.sequence_ids])  # (T,)
        for score, first, last in window_candidates(start, end, in_context, n, max_answer_len):
            a = encoding.word_to_chars(encoding.token_to_word(first), 1)[0]
            b = encoding.word_to_chars(encoding.token_to_word(last), 1)[1]
            key = context[a:b].lower()
            if key in answers:
                answers[key]["score"] += score
            else:
                answers[key] = {"answer": context[a:b], "score": score, "start": a, "end": b}
    return sorted(answers.values(), key=lambda x: x["score"], reverse=True)


# ---- the task --------------------------------------------------------------------------------------


class QaTask(Task):
    name = "qa"
    predictor = QuestionAnswerer
    architectures = ("RobertaForQuestionAnswering",)
    onnx_outputs = ("start_logits", "end_logits")
    head_required = True
    finetune_help = "extractive question answering: SQuAD v1.1 JSON"
    evaluate_help = "SQuAD exact match and F1 on a SQuAD v1.1 JSON file"

    def add_arguments(self, p) -> None:
        p.add_argument("--question", help="the question")
        p.add_argument("--context", help="the text that holds the answer")
        p.add_argument("--context-file", help="read the context from this UTF-8 file instead")
        p.add_argument("--jsonl", help="a JSON-lines file of objects with 'question' and 'context' fields")
        p.add_argument("--top-k", type=int, default=1, help="answers per question (default: 1)")
        p.add_argument(
            "--max-answer-len", type=int, default=30, help="longest answer in tokens (default: 30)"
        )
        p.add_argument("--max-length", type=int, help="tokens per window (default: min(384, the model's))")
        p.add_argument(
            "--doc-stride", type=int, help="tokens shared by windows (default: min(max-length/2, 128))"
        )

    def inputs(self, args) -> list[tuple[str, str]]:
        """(question, context) pairs: from --jsonl, or one from --question and --context(-file)."""
        if args.jsonl is not None:
            if args.question or args.context or args.context_file:
                raise ValueError(
                    "give either --jsonl FILE or --question with --context/--context-file, not both"
                )
            rows = read_jsonl(Path(args.jsonl))
            return [
                (
                    field_of(r, "question", args.jsonl, n, "--jsonl"),
                    field_of(r, "context", args.jsonl, n, "--jsonl"),
                )
                for n, r in rows
            ]
        if args.question is None or (args.context is None) == (args.context_file is None):
            raise ValueError(
                "give --question and one of --context TEXT or --context-file FILE (or --jsonl FILE)"
            )
        context = args.context if args.context is not None else read_text(Path(args.context_file))
        return [(args.question, context)]

    def input_fields(self, args) -> set[str]:
        return {"question", "context"}

    def options(self, args) -> dict[str, Any]:
        return dict(
            top_k=args.top_k,
            max_answer_len=args.max_answer_len,
            doc_stride=args.doc_stride,
            max_length=args.max_length,
        )

    def predict(self, predictor: QuestionAnswerer, items: list, options: dict, batch_size: int) -> list:
        questions, contexts = (list(x) for x in zip(*items))
        answers = predictor.answer(questions, contexts, batch_size=batch_size, **options)
        return answers

    def json_line(self, item: tuple[str, str], result) -> dict:
        return {"question": item[0], "answers": result if isinstance(result, list) else [result]}

    def show(self, items: list, results: list, options: dict) -> None:
        for (question, _), answers in zip(items, results):
            print(f"Q: {short(question)}")
            for a in answers if isinstance(answers, list) else [answers]:
                print(f"  {a['score']:.4f}  chars {a['start']}-{a['end']}  {a['answer']}")

    def request_fields(self) -> dict:
        return {
            "question": (BodyTexts, dict(description="a question, or a list of them")),
            "context": (BodyTexts, dict(description="the text holding each answer: one per question")),
            "top_k": (int, dict(default=1, ge=1, description="answers per question")),
            "max_answer_len": (int, dict(default=30, ge=1, description="the longest answer, in tokens")),
        }

    def request_items(self, body: dict) -> tuple[list, bool, dict]:
        question, context = body.pop("question"), body.pop("context")
        single = isinstance(question, str)
        questions = [question] if single else list(question)
        contexts = [context] if isinstance(context, str) else list(context)
        if single != isinstance(context, str) or len(questions) != len(contexts):
            raise ValueError("send one context per question: two strings, or two lists of one length")
        return list(zip(questions, contexts)), single, body

    def add_finetune_arguments(self, p) -> None:
        super().add_finetune_arguments(p)
        p.add_argument("--stride", type=int, help="window overlap in tokens (default max_length/8)")

    def finetune(self, args, cfg: TrainConfig) -> TrainResult:
        return finetune_qa(
            args.train,
            args.dev,
            args.model,
            cfg,
            max_length=args.max_length,
            stride=args.stride,
            resume=args.resume,
        )

    def add_evaluate_arguments(self, p) -> None:
        super().add_evaluate_arguments(p)
        p.add_argument("--stride", type=int, help="window overlap in tokens (default max_length/8)")

    def evaluate(self, args, dtype) -> dict[str, float]:
        return evaluate_qa(
            args.model, args.data, stride=args.stride, max_length=args.max_length, batch_size=args.batch_size,
            dtype=dtype,
        )  # fmt: skip

    def add_finetune_tools(self, fsub) -> None:
        s = fsub.add_parser("split-squad", help="split a SQuAD file by article into train and dev files")
        s.add_argument("squad", metavar="FILE", help="SQuAD v1.1 JSON")
        s.add_argument("--fraction", type=float, default=0.8, help="share of articles (first ones) for train")
        s.add_argument("--train-out", required=True, metavar="FILE")
        s.add_argument("--dev-out", required=True, metavar="FILE")
        s.add_argument("--overwrite", action="store_true", help="replace --train-out/--dev-out if they exist")
        s.set_defaults(func=_run_split_squad)


def _run_split_squad(args) -> None:
    n_train, n_dev = split_squad(args.squad, args.fraction, args.train_out, args.dev_out, args.overwrite)
    print(f"{n_train} articles -> {args.train_out}, {n_dev} articles -> {args.dev_out}")


TASK = QaTask()
