"""Fine-tuning: read a task's data, turn it into model inputs, train with `roberta.train`, evaluate.

Four tasks, one shape each:

    classification   TSV / CSV / JSONL rows, columns named by the caller  -> RobertaForSequenceClassification
    NER              CoNLL files (a token and its IOB2 tag per line)       -> RobertaForTokenClassification
    extractive QA    SQuAD v1.1 JSON                                       -> RobertaForQuestionAnswering
    translation      two line-aligned text files (source, target)          -> EncoderDecoder (seq2seq.py)

    result = finetune_classifier("train.tsv", "dev.tsv", "roberta-small-books",
                                 TrainConfig(out_dir="runs/sst2", max_epochs=3, lr=1e-4),
                                 text_column="sentence", label_column="label")
    evaluate_classifier("runs/sst2/best", "dev.tsv", text_column="sentence")  # {"accuracy", "macro_f1"}

Everything that can be wrong with the data (a missing column, a label the training data never
showed, an empty file, a broken JSON line, more labels than the model's head has) is found and
reported before training starts. Labels are read from the training data and stored in the
model's config as `id2label`, so a checkpoint knows its own labels.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from roberta.checkpoint import architectures
from roberta.config import RobertaConfig, write_text_atomic
from roberta.heads import (
    IGNORE_INDEX,
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
)
from roberta.hub import MODEL_FILES, resolve
from roberta.metrics import accuracy, bleu, entity_scores, macro_f1, squad_scores
from roberta.predict import Translator
from roberta.quantize import int8_device
from roberta.seq2seq import EncoderDecoder
from roberta.tokenizer import Tokenizer
from roberta.train import Batch, ShuffledBatches, TrainConfig, TrainResult, seed_everything, train

Feature = dict[str, Any]  # model inputs of one example: input_ids (list of T ints) + its labels

# ---- reading: classification tables --------------------------------------------------------------


@dataclass
class TextExample:
    """One row: a text (or a text pair) and its label, with the line it came from."""

    text: str
    text_pair: str | None
    label: str
    line: int


def _read_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) for each row of a .tsv, .csv or .jsonl file; the first line of a
    .tsv/.csv names the columns. TSV fields are taken literally (no quoting), as in GLUE."""
    text = _read_text(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return _read_jsonl(path, text)
    if suffix not in (".tsv", ".csv"):
        raise ValueError(f"{path}: unknown table format {suffix!r}; use .tsv, .csv or .jsonl")
    if suffix == ".tsv":
        reader = csv.DictReader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.DictReader(text.splitlines())
    rows = [(reader.line_num, row) for row in reader]
    if not rows:
        raise ValueError(f"{path} has a header line but no rows")
    return rows


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"{path} is empty")
    return text


def _read_jsonl(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{path} line {n} is not valid JSON ({e.msg}); each line must be one JSON object"
            ) from None
        if not isinstance(row, dict):
            raise ValueError(f"{path} line {n} holds a {type(row).__name__}, not a JSON object")
        rows.append((n, row))
    return rows


def read_table(
    path: str | os.PathLike, text_column: str, label_column: str, text_pair_column: str | None = None
) -> list[TextExample]:
    """Read a classification table (.tsv, .csv or .jsonl); labels are kept as strings.

    Raises ValueError naming the columns that exist when a named column is missing, and the line
    of any row whose text or label is empty.
    """
    path = Path(path)
    rows = _read_rows(path)
    wanted = [c for c in (text_column, text_pair_column, label_column) if c is not None]
    for line, row in rows:
        missing = [c for c in wanted if c not in row]
        if missing:
            raise ValueError(
                f"{path} line {line} has no column {missing[0]!r} (columns: {', '.join(map(str, row))}); "
                "name the right ones with --text-column / --label-column / --text-pair-column"
            )
    examples = []
    for line, row in rows:
        for c in wanted:
            if row[c] is None or str(row[c]).strip() == "":
                raise ValueError(f"{path} line {line}: column {c!r} is empty")
        pair = str(row[text_pair_column]) if text_pair_column else None
        examples.append(TextExample(str(row[text_column]), pair, str(row[label_column]).strip(), line))
    return examples


# ---- reading: CoNLL and SQuAD --------------------------------------------------------------------


@dataclass
class TaggedSentence:
    """A sentence of a CoNLL file: its words and their IOB2 tags; `line` = its first line."""

    words: list[str]
    tags: list[str]
    line: int


def read_conll(path: str | os.PathLike) -> list[TaggedSentence]:
    """Read a CoNLL file: one token per line, the token first and its tag last (CoNLL-2003 has
    POS and chunk columns between them); a blank line ends a sentence; `-DOCSTART-` is skipped."""
    path = Path(path)
    sentences: list[TaggedSentence] = []
    words: list[str] = []
    tags: list[str] = []
    for n, line in enumerate([*_read_text(path).splitlines(), ""], start=1):
        fields = line.split()
        if fields and fields[0] == "-DOCSTART-":
            continue
        if not fields:
            if words:
                sentences.append(TaggedSentence(words, tags, n - len(words)))
            words, tags = [], []
            continue
        if len(fields) < 2:
            raise ValueError(f"{path} line {n}: expected a token and its tag, got {line!r}")
        words.append(fields[0])
        tags.append(fields[-1])
    if not sentences:
        raise ValueError(f"{path} holds no sentences")
    return sentences


@dataclass
class QaExample:
    """One SQuAD question: the answers' texts and character starts in `context`."""

    id: str
    question: str
    context: str
    answers: list[str]
    answer_starts: list[int]


def _load_squad(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(_read_text(path))
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
        for article in _load_squad(path):
            for paragraph in article["paragraphs"]:
                context = paragraph["context"]
                for qa in paragraph["qas"]:
                    examples.append(_qa_example(path, qa, context))
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path} is not SQuAD v1.1 JSON: missing or malformed field {e}") from None
    if not examples:
        raise ValueError(f"{path} holds no questions")
    return examples


def _qa_example(path: Path, qa: dict[str, Any], context: str) -> QaExample:
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
    path: str | os.PathLike, fraction: float, train_out: str | os.PathLike, dev_out: str | os.PathLike
) -> tuple[int, int]:
    """Write the first `fraction` of a SQuAD file's articles (in file order) to `train_out` and the
    rest to `dev_out` (each atomically); returns the two article counts. No question's context is
    in both files, since a paragraph belongs to one article."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
    articles = _load_squad(Path(path))
    cut = round(fraction * len(articles))
    if cut == 0 or cut == len(articles):
        raise ValueError(f"{path} has {len(articles)} articles: a {fraction} split leaves one side empty")
    for out, part in ((train_out, articles[:cut]), (dev_out, articles[cut:])):
        write_text_atomic(Path(out), json.dumps({"version": "1.1", "data": part}))
    return cut, len(articles) - cut


# ---- labels ----------------------------------------------------------------------------------------


def label_list(labels: Iterable[str]) -> list[str]:
    """The distinct labels, sorted (numerically when they are all integers: "2" before "10")."""
    distinct = set(labels)
    if all(s.lstrip("-").isdigit() for s in distinct):
        return sorted(distinct, key=int)
    return sorted(distinct)


def check_labels(found: Iterable[tuple[str, int]], label2id: dict[str, int], path: str | os.PathLike) -> None:
    """Raise if a (label, line) is not among the known labels, naming it, its line and the known ones."""
    for label, line in found:
        if label not in label2id:
            raise ValueError(
                f"{path} line {line}: label {label!r} is not among the labels the model knows "
                f"({', '.join(label2id)}); they come from the training data"
            )


def fit_labels(model: str | os.PathLike, cls: type[nn.Module], labels: list[str]) -> dict[int, str]:
    """The id2label to train with: `labels` in order, or, if `model` already has a `cls` head, that
    head's own order — which must hold exactly these labels, else ValueError (they do not fit)."""
    config = RobertaConfig.from_json_file(resolve(model, MODEL_FILES) / "config.json")
    if cls.__name__ not in architectures(model):
        return dict(enumerate(labels))  # no head of this kind yet: a fresh one is made for these labels
    have = list((config.id2label or {i: f"LABEL_{i}" for i in range(config.num_labels)}).values())
    if sorted(have) != sorted(labels):
        raise ValueError(
            f"the model {model} has a {cls.__name__} head with num_labels {len(have)} ({', '.join(have)}) "
            f"but the training data has {len(labels)} labels ({', '.join(labels)}); start from a model "
            "without this head (e.g. the pretrained encoder) or use data with the head's labels"
        )
    return dict(config.id2label)


def _model_labels(model: nn.Module) -> dict[str, int]:
    if model.config.id2label is None:
        raise ValueError("the model's config has no id2label: was it fine-tuned with `roberta finetune`?")
    return model.config.label2id


# ---- reading: translation pairs --------------------------------------------------------------------


@dataclass
class Pair:
    source: str
    target: str
    line: int  # 1-based line number in both files


def read_parallel(source_file: str | os.PathLike, target_file: str | os.PathLike) -> list[Pair]:
    """Line-aligned text files (e.g. Multi30k's train.en and train.de): line i of the target file
    translates line i of the source file. Lines blank in both files are skipped."""
    sources = _read_text(Path(source_file)).splitlines()
    targets = _read_text(Path(target_file)).splitlines()
    if len(sources) != len(targets):
        raise ValueError(
            f"{source_file} has {len(sources)} lines but {target_file} has {len(targets)}; "
            "the files must be line-aligned (line i of one translates line i of the other)"
        )
    pairs = []
    for n, (src, tgt) in enumerate(zip(sources, targets), start=1):
        if not src.strip() and not tgt.strip():
            continue
        if not src.strip() or not tgt.strip():
            blank = source_file if not src.strip() else target_file
            raise ValueError(f"line {n} is blank in {blank} but not in the other file; are they aligned?")
        pairs.append(Pair(src.strip(), tgt.strip(), n))
    return pairs


# ---- features --------------------------------------------------------------------------------------


def _max_length(tokenizer: Tokenizer, config: RobertaConfig, max_length: int | None) -> int:
    """The caller's max_length, else what the model's position table holds; never more."""
    limit = min(config.max_length, tokenizer.model_max_length)
    if max_length is None:
        return limit
    if not 8 <= max_length <= limit:
        raise ValueError(f"max_length must be between 8 and {limit} (the model's limit), got {max_length}")
    return max_length


def classification_features(
    tokenizer: Tokenizer, examples: Sequence[TextExample], label2id: dict[str, int], max_length: int
) -> list[Feature]:
    """Tokenize each text (pair), truncated to max_length tokens: {"input_ids": [T ints], "labels": id}."""
    texts = [e.text for e in examples]
    pairs = [e.text_pair for e in examples] if examples[0].text_pair is not None else None
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
    return [{"input_ids": ids, "labels": label2id[e.label]} for ids, e in zip(enc["input_ids"], examples)]


def ner_features(
    tokenizer: Tokenizer, sentences: Sequence[TaggedSentence], label2id: dict[str, int], max_length: int
) -> tuple[list[Feature], list[list[int]]]:
    """Tokenize the words (each as if after a space) and put each word's label on its first
    sub-token, -100 on the other sub-tokens and on <s>, </s>.

    Returns the features {"input_ids": [T], "labels": [T]} and, per sentence, the token position of
    each word's first sub-token (words cut off by truncation have none: evaluation predicts "O").
    """
    enc = tokenizer(
        [s.words for s in sentences], is_split_into_words=True, truncation=True, max_length=max_length
    )
    features, firsts = [], []
    for i, sentence in enumerate(sentences):
        labels, first, previous = [], [], None
        for t, word in enumerate(enc.word_ids(i)):
            if word is None or word == previous:
                labels.append(IGNORE_INDEX)
            else:
                labels.append(label2id[sentence.tags[word]])
                first.append(t)
            previous = word
        features.append({"input_ids": enc["input_ids"][i], "labels": labels})
        firsts.append(first)
    return features, firsts


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
    _qa_stride(max_length, stride)
    questions = [_cut_question(tokenizer, e.question, max_length // 2) for e in examples]
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
    return features, windows


def _qa_stride(max_length: int, stride: int | None) -> int:
    """The overlap of context windows: stride, default max_length // 8; below max_length // 4, so
    that a window (whose question takes at most half) always moves on through the context."""
    stride = max_length // 8 if stride is None else stride
    if not 0 <= stride < max_length // 4:
        raise ValueError(f"stride must be between 0 and {max_length // 4 - 1} for max_length {max_length}")
    return stride


def _cut_question(tokenizer: Tokenizer, question: str, max_tokens: int) -> str:
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


def translation_features(tokenizer: Tokenizer, pairs: Sequence[Pair], max_length: int) -> list[Feature]:
    """Per pair: the source ids `<s> x </s>`, the decoder's input `<s> y` and the labels `y </s>`
    (the target shifted by one), each at most max_length tokens."""
    sources = tokenizer([p.source for p in pairs], truncation=True, max_length=max_length)["input_ids"]
    targets = tokenizer([p.target for p in pairs], truncation=True, max_length=max_length + 1)["input_ids"]
    return [
        {"input_ids": src, "decoder_input_ids": tgt[:-1], "labels": tgt[1:]}
        for src, tgt in zip(sources, targets)
    ]


def seq2seq_batch(features: Sequence[Feature], pad_id: int) -> Batch:
    """input_ids and attention_mask (B, S) as `pad_batch`; decoder_input_ids (B, T) padded with
    pad_id and labels (B, T) with -100."""
    batch = pad_batch([{"input_ids": f["input_ids"]} for f in features], pad_id)
    T = max(len(f["labels"]) for f in features)
    batch["decoder_input_ids"] = torch.full((len(features), T), pad_id, dtype=torch.long)  # (B, T)
    batch["labels"] = torch.full((len(features), T), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    for b, f in enumerate(features):
        batch["decoder_input_ids"][b, : len(f["decoder_input_ids"])] = torch.tensor(f["decoder_input_ids"])
        batch["labels"][b, : len(f["labels"])] = torch.tensor(f["labels"])
    return batch


def pad_batch(features: Sequence[Feature], pad_id: int) -> Batch:
    """Stack features into tensors padded to the longest: input_ids (B, T) padded with pad_id,
    attention_mask (B, T) with 1 = real token, list labels (B, T) padded with -100, scalars (B,)."""
    T = max(len(f["input_ids"]) for f in features)
    batch = {"input_ids": torch.full((len(features), T), pad_id, dtype=torch.long)}  # (B, T)
    batch["attention_mask"] = torch.zeros(len(features), T, dtype=torch.long)  # (B, T)
    for key in features[0]:
        if key != "input_ids" and isinstance(features[0][key], list):
            batch[key] = torch.full((len(features), T), IGNORE_INDEX, dtype=torch.long)  # (B, T)
        elif key != "input_ids":
            batch[key] = torch.tensor([f[key] for f in features], dtype=torch.long)  # (B,)
    for b, f in enumerate(features):
        n = len(f["input_ids"])
        batch["input_ids"][b, :n] = torch.tensor(f["input_ids"])
        batch["attention_mask"][b, :n] = 1
        for key, value in f.items():
            if key != "input_ids" and isinstance(value, list):
                batch[key][b, :n] = torch.tensor(value)
    return batch


def _check_iob2(sentences: Sequence[TaggedSentence], path: str | os.PathLike) -> None:
    for s in sentences:
        for k, tag in enumerate(s.tags):
            if tag != "O" and not (len(tag) > 2 and tag[:2] in ("B-", "I-")):
                raise ValueError(
                    f"{path} line {s.line + k}: tag {tag!r} is not IOB2 ('O', 'B-<type>' or 'I-<type>')"
                )


# ---- evaluation ------------------------------------------------------------------------------------


@torch.no_grad()
def _outputs(model: nn.Module, features: Sequence[Feature], batch_size: int, pad_id: int):
    """Run the model over features in order, batch by batch; yields each batch's output."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    for i in range(0, len(features), batch_size):
        batch = pad_batch([{"input_ids": f["input_ids"]} for f in features[i : i + batch_size]], pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        yield model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    model.train(was_training)


def classification_scores(
    model: nn.Module, features: Sequence[Feature], batch_size: int = 32, pad_id: int = 1
) -> dict[str, float]:
    """Accuracy and macro-F1 of the model's argmax label against each feature's "labels"."""
    predicted = [
        p for out in _outputs(model, features, batch_size, pad_id) for p in out.logits.argmax(-1).tolist()
    ]
    gold = [f["labels"] for f in features]
    return {"accuracy": accuracy(predicted, gold), "macro_f1": macro_f1(predicted, gold)}


def ner_scores(
    model: nn.Module,
    features: Sequence[Feature],
    firsts: Sequence[Sequence[int]],
    sentences: Sequence[TaggedSentence],
    batch_size: int = 32,
    pad_id: int = 1,
) -> dict[str, float]:
    """Entity precision/recall/F1: each word's tag is the model's argmax at its first sub-token;
    words cut off by truncation are tagged "O"; the gold tags are the file's, for every word."""
    id2label = model.config.id2label
    predicted: list[list[str]] = []
    for out in _outputs(model, features, batch_size, pad_id):
        for row in out.logits.argmax(-1).tolist():  # (T,) label ids
            k = len(predicted)
            tags = [id2label[row[t]] for t in firsts[k]]
            predicted.append(tags + ["O"] * (len(sentences[k].words) - len(tags)))
    return entity_scores([s.tags for s in sentences], predicted)


def qa_predictions(
    model: nn.Module,
    tokenizer: Tokenizer,
    examples: Sequence[QaExample],
    max_length: int,
    stride: int,
    batch_size: int = 32,
) -> dict[str, str]:
    """Question id -> predicted answer, decoded by `roberta.predict.QuestionAnswerer` (the best span
    over all of the question's windows, widened to whole words), with questions cut as in training."""
    from roberta.predict import QuestionAnswerer

    answerer = QuestionAnswerer(model, tokenizer)
    questions = [_cut_question(tokenizer, e.question, max_length // 2) for e in examples]
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


def translation_scores(
    model: nn.Module, tokenizer: Tokenizer, pairs: Sequence[Pair], batch_size: int = 32, num_beams: int = 4
) -> tuple[dict[str, float], list[str]]:
    """BLEU and chrF of the model's translations of the sources against the targets; and the
    translations, in order."""
    hypotheses = Translator(model, tokenizer).translate(
        [p.source for p in pairs], num_beams, batch_size=batch_size
    )
    return bleu(hypotheses, [p.target for p in pairs]), hypotheses


# ---- fine-tuning runs ----------------------------------------------------------------------------------


def _train(
    model: nn.Module,
    tokenizer: Tokenizer,
    features: list[Feature],
    cfg: TrainConfig,
    eval_fn: Callable[[nn.Module], dict[str, float]],
    metric: str,
    resume: bool,
    collate: Callable[[Sequence[Feature], int], Batch] = pad_batch,
) -> TrainResult:
    """Train on shuffled, padded batches of features (`collate(features, pad_id)`); checkpoints
    carry the tokenizer, and out_dir/best is the checkpoint with the best `metric` on the dev set
    (unless cfg names another)."""
    pad = tokenizer.pad_token_id

    def make_batch(items: list[int], epoch: int) -> Batch:
        return collate([features[i] for i in items], pad)

    source = ShuffledBatches(len(features), cfg.batch_size, make_batch, seed=cfg.seed)
    if cfg.early_stopping_metric is None:
        cfg = dataclasses.replace(cfg, early_stopping_metric=metric)
    return train(model, source, cfg, eval_fn=eval_fn, save_extra=TokenizerFiles(tokenizer), resume=resume)


class TokenizerFiles:
    """Writes the tokenizer into each checkpoint folder (`save_extra`): serialised on the first
    call, then its files' bytes are copied, since serialising a 50k vocabulary takes seconds."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.files: dict[str, bytes] | None = None

    def __call__(self, folder: Path) -> None:
        if self.files is None:
            before = set(os.listdir(folder))
            self.tokenizer.save_pretrained(folder)
            self.files = {name: (folder / name).read_bytes() for name in set(os.listdir(folder)) - before}
            return
        for name, data in self.files.items():
            (folder / name).write_bytes(data)


def finetune_classifier(
    train_file: str | os.PathLike,
    dev_file: str | os.PathLike,
    model: str | os.PathLike,
    cfg: TrainConfig,
    *,
    text_column: str = "text",
    label_column: str = "label",
    text_pair_column: str | None = None,
    max_length: int | None = None,
    resume: bool = False,
) -> TrainResult:
    """Fine-tune `model` (a folder, built-in name or Hub id) to classify the rows of a table.

    Labels come from the training file (sorted; stored as id2label); the dev file is scored
    (accuracy, macro-F1) every cfg.eval_every steps or each epoch. max_length: tokens per input,
    default the model's limit. resume: continue from cfg.out_dir/last.
    """
    columns = (text_column, label_column, text_pair_column)
    train_rows, dev_rows = read_table(train_file, *columns), read_table(dev_file, *columns)
    id2label = fit_labels(model, RobertaForSequenceClassification, label_list(e.label for e in train_rows))
    label2id = {v: k for k, v in id2label.items()}
    check_labels(((e.label, e.line) for e in dev_rows), label2id, dev_file)
    tokenizer = Tokenizer.from_pretrained(model)
    seed_everything(cfg.seed)  # the new head's initial weights
    net = RobertaForSequenceClassification.from_pretrained(model, id2label=id2label)
    length = _max_length(tokenizer, net.config, max_length)
    train_f = classification_features(tokenizer, train_rows, label2id, length)
    dev_f = classification_features(tokenizer, dev_rows, label2id, length)

    def eval_fn(m: nn.Module) -> dict[str, float]:
        return classification_scores(m, dev_f, cfg.batch_size, tokenizer.pad_token_id)

    return _train(net, tokenizer, train_f, cfg, eval_fn, "accuracy", resume)


def finetune_ner(
    train_file: str | os.PathLike,
    dev_file: str | os.PathLike,
    model: str | os.PathLike,
    cfg: TrainConfig,
    *,
    max_length: int | None = None,
    resume: bool = False,
) -> TrainResult:
    """Fine-tune `model` to tag words, on CoNLL files (IOB2 tags, read from the training file);
    the dev file is scored by entity precision/recall/F1 (seqeval's convention)."""
    train_s, dev_s = read_conll(train_file), read_conll(dev_file)
    _check_iob2(train_s, train_file)
    _check_iob2(dev_s, dev_file)
    id2label = fit_labels(
        model, RobertaForTokenClassification, label_list(t for s in train_s for t in s.tags)
    )
    label2id = {v: k for k, v in id2label.items()}
    check_labels(((t, s.line + k) for s in dev_s for k, t in enumerate(s.tags)), label2id, dev_file)
    tokenizer = Tokenizer.from_pretrained(model)
    seed_everything(cfg.seed)
    net = RobertaForTokenClassification.from_pretrained(model, id2label=id2label)
    length = _max_length(tokenizer, net.config, max_length)
    train_f, _ = ner_features(tokenizer, train_s, label2id, length)
    dev_f, dev_firsts = ner_features(tokenizer, dev_s, label2id, length)

    def eval_fn(m: nn.Module) -> dict[str, float]:
        return ner_scores(m, dev_f, dev_firsts, dev_s, cfg.batch_size, tokenizer.pad_token_id)

    return _train(net, tokenizer, train_f, cfg, eval_fn, "f1", resume)


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
    length = _max_length(tokenizer, net.config, max_length)
    stride = _qa_stride(length, stride)
    train_f, _ = qa_features(tokenizer, train_ex, length, stride)

    def eval_fn(m: nn.Module) -> dict[str, float]:
        return qa_scores(m, tokenizer, dev_ex, length, stride, cfg.batch_size)

    return _train(net, tokenizer, train_f, cfg, eval_fn, "f1", resume)


# ---- evaluating a fine-tuned model ---------------------------------------------------------------------


def _load_finetuned(
    model: str | os.PathLike, cls, device: str | torch.device | None, dtype: torch.dtype | None
):
    """The tokenizer and `cls` model of a fine-tuned checkpoint; ValueError if it has no such head."""
    found = architectures(model)
    if cls.__name__ not in found:
        raise ValueError(
            f"{model} is not a {cls.__name__} checkpoint (its config.json names {found or 'no architecture'}); "
            "evaluate the folder `roberta finetune` wrote (OUT/best or OUT/last)"
        )
    return Tokenizer.from_pretrained(model), cls.from_pretrained(
        model, device=_eval_device(device, dtype), dtype=dtype
    )


def _eval_device(device: str | torch.device | None, dtype: torch.dtype | None) -> str | torch.device:
    """The device to evaluate on: the one asked for, else the GPU if there is one, else the CPU.

    dtype: None (fp32) or torch.int8, to measure what the opt-in int8 inference does to a score
    (on the CPU)."""
    if dtype not in (None, torch.float32, torch.int8):
        raise ValueError(f"evaluation runs in fp32 or int8, not {dtype}")
    if dtype == torch.int8:
        return int8_device(device)
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def evaluate_classifier(
    model: str | os.PathLike,
    data_file: str | os.PathLike,
    *,
    text_column: str = "text",
    label_column: str = "label",
    text_pair_column: str | None = None,
    max_length: int | None = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Accuracy and macro-F1 of a fine-tuned classifier on a labelled table."""
    tokenizer, net = _load_finetuned(model, RobertaForSequenceClassification, device, dtype)
    rows = read_table(data_file, text_column, label_column, text_pair_column)
    label2id = _model_labels(net)
    check_labels(((e.label, e.line) for e in rows), label2id, data_file)
    features = classification_features(
        tokenizer, rows, label2id, _max_length(tokenizer, net.config, max_length)
    )
    return classification_scores(net, features, batch_size, tokenizer.pad_token_id)


def evaluate_ner(
    model: str | os.PathLike,
    data_file: str | os.PathLike,
    *,
    max_length: int | None = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Entity precision, recall and F1 of a fine-tuned tagger on a CoNLL file."""
    tokenizer, net = _load_finetuned(model, RobertaForTokenClassification, device, dtype)
    sentences = read_conll(data_file)
    _check_iob2(sentences, data_file)
    label2id = _model_labels(net)
    check_labels(((t, s.line + k) for s in sentences for k, t in enumerate(s.tags)), label2id, data_file)
    length = _max_length(tokenizer, net.config, max_length)
    features, firsts = ner_features(tokenizer, sentences, label2id, length)
    return ner_scores(net, features, firsts, sentences, batch_size, tokenizer.pad_token_id)


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
    tokenizer, net = _load_finetuned(model, RobertaForQuestionAnswering, device, dtype)
    examples = read_squad(data_file)
    length = _max_length(tokenizer, net.config, max_length)
    return qa_scores(net, tokenizer, examples, length, _qa_stride(length, stride), batch_size)


def finetune_translation(
    train_files: tuple[str | os.PathLike, str | os.PathLike],
    dev_files: tuple[str | os.PathLike, str | os.PathLike],
    model: str | os.PathLike,
    cfg: TrainConfig,
    *,
    max_length: int | None = None,
    num_beams: int = 1,
    resume: bool = False,
) -> TrainResult:
    """Train a translation model on line-aligned (source, target) files.

    model: a RoBERTa checkpoint (both stacks start from it: EncoderDecoder.from_encoder_pretrained)
    or an encoder-decoder checkpoint (training continues). The dev pairs are translated with
    num_beams beams (1: greedy, fast) at each evaluation and scored by BLEU, which picks best/.
    """
    train_pairs, dev_pairs = read_parallel(*train_files), read_parallel(*dev_files)
    tokenizer = Tokenizer.from_pretrained(model)
    seed_everything(cfg.seed)  # cross-attention's initial weights
    if "EncoderDecoderModel" in architectures(model):
        net = EncoderDecoder.from_pretrained(model).train()
    else:
        net = EncoderDecoder.from_encoder_pretrained(model)
    length = _max_length(tokenizer, net.config.decoder, max_length)
    features = translation_features(tokenizer, train_pairs, length)

    def eval_fn(m: nn.Module) -> dict[str, float]:
        return translation_scores(m, tokenizer, dev_pairs, cfg.batch_size, num_beams)[0]

    return _train(net, tokenizer, features, cfg, eval_fn, "bleu", resume, collate=seq2seq_batch)


def evaluate_translation(
    model: str | os.PathLike,
    source_file: str | os.PathLike,
    target_file: str | os.PathLike,
    *,
    num_beams: int = 4,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    output_file: str | os.PathLike | None = None,
) -> dict[str, float]:
    """BLEU and chrF of an encoder-decoder checkpoint on line-aligned files; the translations go
    to output_file (one per line) if given."""
    if "EncoderDecoderModel" not in architectures(model):
        raise ValueError(
            f"{model} is not an encoder-decoder checkpoint; evaluate the folder `roberta finetune translate` wrote"
        )
    net = EncoderDecoder.from_pretrained(model, device=_eval_device(device, dtype), dtype=dtype)
    scores, hypotheses = translation_scores(
        net, Tokenizer.from_pretrained(model), read_parallel(source_file, target_file), batch_size, num_beams
    )
    if output_file is not None:
        write_text_atomic(Path(output_file), "".join(h + "\n" for h in hypotheses))
    return scores
