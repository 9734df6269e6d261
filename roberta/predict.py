"""Task-level inference: text in, answers out. Shaped like fairseq's RoBERTa hub interface.

One small class per task, each holding a model and its tokenizer:

    FillMask.from_pretrained(path).fill_mask("Paris is the <mask> of France.")
    Classifier.from_pretrained(path).classify(["great film", "dull"])
    Tagger.from_pretrained(path).tag("Angela Merkel visited Paris.")
    QuestionAnswerer.from_pretrained(path).answer("Who visited?", "Angela Merkel visited Paris.")
    Embedder.from_pretrained(path).embed(["a text", "another"])  # (2, C)
    Translator.from_pretrained(path).translate("A man rides a bike.")  # an encoder-decoder

Every method takes one text (and returns one result) or a list of texts (and returns a list), runs
under `torch.inference_mode()` in batches of `batch_size` texts of similar length (optionally
also bounded by a token budget, `max_tokens`; sorted by
length, then put back in input order, so results do not depend on batch size or order), on the
model's device. Input longer than the model takes is truncated with a warning; question answering
instead slides overlapping windows over a long context. The decoding rules of fill-mask, tagging
and question answering follow transformers' pipelines, so results can be compared with theirs.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from roberta.checkpoint import PretrainedModel, read_weights
from roberta.config import RobertaConfig
from roberta.fast import token_budget_batches
from roberta.heads import (
    RobertaForMaskedLM,
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
)
from roberta.hub import MODEL_FILES, resolve
from roberta.model import RobertaModel
from roberta.quantize import int8_device, set_dtype
from roberta.seq2seq import EncoderDecoder
from roberta.tokenizer import Tokenizer

Texts = str | Sequence[str]


# ---- shared machinery --------------------------------------------------------------------------


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def as_text_list(texts: Any, name: str = "texts") -> tuple[list[str], bool]:
    """(the texts as a list, whether a single str was given); clear errors for anything else."""
    if isinstance(texts, str):
        return [texts], True
    if not isinstance(texts, (list, tuple)):
        raise TypeError(f"{name} must be a str or a list of str, got {type(texts).__name__}")
    if not texts:
        raise ValueError(f"{name} is an empty list; pass at least one text")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(text).__name__}")
    return list(texts), False


def length_sorted_batches(
    lengths: Sequence[int], batch_size: int, max_tokens: int | None = None
) -> Iterator[list[int]]:
    """Indices grouped into batches of similar length, longest first (little padding): at most
    `batch_size` texts each, and with `max_tokens`, at most that many tokens once padded
    (texts x longest; a text longer than the budget goes alone).

    Callers store each result at its index, so the output order is the input order.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if max_tokens is not None:
        yield from token_budget_batches(lengths, max_tokens, max_batch_size=batch_size)
        return
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    for k in range(0, len(order), batch_size):
        yield order[k : k + batch_size]


def pad(
    rows: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ids -> input_ids (B, T) right-padded with `pad_id`, attention_mask (B, T), 1 = real."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids.to(device), mask.to(device)


class Predictor:
    """A model and its tokenizer; subclasses add one task method.

    Args:
        model: a model of `model_class`; it runs in eval mode (no dropout), and a model in training
            mode is put back in training mode afterwards.
        tokenizer: the tokenizer it was trained with.
        max_tokens: a token budget per forward pass (texts x longest, padding included) on top of
            each method's `batch_size`: with a large `batch_size`, short texts go in big batches
            and long ones in small batches, so memory stays bounded. None: `batch_size` alone.
    """

    model_class: ClassVar[type[PretrainedModel]] = RobertaModel

    def __init__(self, model: PretrainedModel, tokenizer: Tokenizer, max_tokens: int | None = None):
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise ValueError(f"max_tokens must be a positive int or None, got {max_tokens!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        device: str | torch.device | None = None,
        max_tokens: int | None = None,
        dtype: torch.dtype | None = None,
    ):
        """Load model and tokenizer from one folder, built-in model name or Hub id.

        device: "cpu", "cuda", ...; default: the GPU if there is one, else the CPU.
        max_tokens: the token budget per forward pass (see the class).
        dtype: e.g. torch.bfloat16 to run in bf16 (opt-in: fast on GPUs and on CPUs with AMX or
            AVX512-BF16, emulated and slow on others; results differ from fp32 by ~1e-2 relative).
            torch.int8: the Transformer layers' matmuls in int8 on the CPU (opt-in: fast on CPUs
            with AVX-512 VNNI or AMX; see roberta/quantize.py). Scores and vectors are returned in
            fp32 either way. Default: fp32.
        """
        if dtype == torch.int8:
            device = int8_device(device)
        device = torch.device(device) if device is not None else default_device()
        model = set_dtype(cls.load_model(name_or_path, device), dtype)
        return cls(model, Tokenizer.from_pretrained(name_or_path), max_tokens=max_tokens)

    @classmethod
    def load_model(cls, name_or_path: str | os.PathLike, device: torch.device) -> PretrainedModel:
        return cls.model_class.from_pretrained(name_or_path, device=device)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def max_length(self) -> int:
        """The longest input in tokens: what both the tokenizer and the position table allow."""
        return min(self.tokenizer.model_max_length, self.model.config.max_length)

    def encode(self, texts: list[str]):
        """Tokenize with offsets, truncating (with a warning) to `max_length` tokens."""
        batch = self.tokenizer(
            texts,
            truncation=True,
            max_length=self.max_length,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
        )
        cut = [i for i, e in enumerate(batch.encodings) if e.overflowing]
        if cut:
            warnings.warn(
                f"{len(cut)} text(s) longer than the model's {self.max_length} tokens were truncated "
                f"(text #{cut[0]} is the first); only the first {self.max_length} tokens were read",
                stacklevel=3,
            )
        return batch

    @torch.inference_mode()
    def run(self, rows: Sequence[Sequence[int]], batch_size: int, fn: Callable[..., list]) -> list:
        """fn(input_ids (B, T), attention_mask (B, T)) -> one output per row, on batches of rows of
        similar length; returns the outputs in the order of `rows`."""
        out: list = [None] * len(rows)
        was_training = self.model.training  # e.g. evaluation during fine-tuning: put the mode back
        self.model.eval()
        try:
            for idx in length_sorted_batches([len(r) for r in rows], batch_size, self.max_tokens):
                ids, mask = pad([rows[i] for i in idx], self.tokenizer.pad_token_id, self.device)
                for i, result in zip(idx, fn(ids, mask)):
                    out[i] = result
        finally:
            self.model.train(was_training)
        return out


# ---- fill-mask ---------------------------------------------------------------------------------


class FillMask(Predictor):
    """Predict the token at each `<mask>`: the masked-LM head of pretraining."""

    model_class = RobertaForMaskedLM

    def fill_mask(self, texts: Texts, top_k: int = 5, batch_size: int = 32) -> list:
        """The `top_k` most likely tokens at each `<mask>` of each text.

        Returns, per text, a list of `top_k` dicts {"token" (id), "token_str", "score" (probability),
        "sequence" (the text with this mask filled)}, best first; a text with several masks gets
        one such list per mask, in text order.
        """
        texts, single = as_text_list(texts)
        if not isinstance(top_k, int) or not 1 <= top_k <= self.model.config.vocab_size:
            raise ValueError(f"top_k must be an int in 1..{self.model.config.vocab_size}, got {top_k!r}")
        batch = self.encode(texts)
        mask, mask_id = self.tokenizer.mask_token, self.tokenizer.mask_token_id
        for i, ids in enumerate(batch["input_ids"]):
            if mask_id in ids:
                continue
            if mask in texts[i]:
                raise ValueError(
                    f"text #{i}: its {mask} lies beyond the first {self.max_length} tokens, which is all "
                    "the model reads; shorten the text"
                )
            raise ValueError(
                f"text #{i} has no {mask}: put {mask} where the word to predict goes, "
                f"e.g. 'Paris is the {mask} of France.'"
            )

        def top_tokens(ids: torch.Tensor, mask: torch.Tensor) -> list:
            h = self.model.roberta(ids, mask).last_hidden_state  # (B, T, C)
            at_mask = ids.eq(mask_id)  # (B, T)
            probs = self.model.lm_head(h[at_mask]).float().softmax(-1)  # (N masks, V): only where needed
            best = probs.topk(top_k, dim=-1)
            counts = at_mask.sum(1).tolist()
            return list(zip(best.values.cpu().split(counts), best.indices.cpu().split(counts)))

        tops = self.run(batch["input_ids"], batch_size, top_tokens)
        results = [self._fill(texts[i], batch, i, *tops[i]) for i in range(len(texts))]
        return results[0] if single else results

    def _fill(self, text: str, batch, row: int, scores: torch.Tensor, ids: torch.Tensor) -> list:
        """One text's predictions: scores, ids (M masks, top_k) -> a list per mask (or the only list)."""
        tokens, offsets = batch["input_ids"][row], batch["offset_mapping"][row]
        spans = [span for t, span in zip(tokens, offsets) if t == self.tokenizer.mask_token_id]
        per_mask = []
        for (start, end), row_scores, row_ids in zip(spans, scores.tolist(), ids.tolist()):
            while start > 0 and text[start - 1].isspace():  # <mask> takes the space before it (lstrip)
                start -= 1
            words = [self.tokenizer.decode([t]) for t in row_ids]  # " Paris": a space is part of a token
            per_mask.append(
                [
                    {"token": t, "token_str": w, "score": p, "sequence": text[:start] + w + text[end:]}
                    for t, w, p in zip(row_ids, words, row_scores)
                ]
            )
        return per_mask[0] if len(per_mask) == 1 else per_mask


# ---- sequence classification -------------------------------------------------------------------


def label_names(config: RobertaConfig) -> list[str]:
    """Label i's name: config.id2label, else transformers' default LABEL_i."""
    names = config.id2label or {}
    return [names.get(i, f"LABEL_{i}") for i in range(config.num_labels)]


class Classifier(Predictor):
    """A label (or labels, or a value) per text, as the checkpoint's config says:
    single-label (softmax), multi-label (sigmoid) or regression (the raw output)."""

    model_class = RobertaForSequenceClassification

    @property
    def problem_type(self) -> str:
        """config.problem_type, else regression for one output and single-label otherwise."""
        config = self.model.config
        if config.problem_type:
            return config.problem_type
        return "regression" if config.num_labels == 1 else "single_label_classification"

    def classify(self, texts: Texts, batch_size: int = 32) -> dict | list[dict]:
        """Classify each text. Returns, per text, a dict:

        single-label: {"label": best label, "score": its probability, "scores": {label: probability}}
        multi-label:  {"labels": labels with probability > 0.5, best first, "scores": {label: probability}}
        regression:   {"label": the output's name, "score": the predicted value}
        """
        texts, single = as_text_list(texts)
        batch = self.encode(texts)

        def logits(ids: torch.Tensor, mask: torch.Tensor) -> list:
            return list(self.model(ids, mask).logits.float().cpu())  # B x (num_labels,)

        results = [self._result(x) for x in self.run(batch["input_ids"], batch_size, logits)]
        return results[0] if single else results

    def _result(self, logits: torch.Tensor) -> dict:
        names, kind = label_names(self.model.config), self.problem_type
        if kind == "regression":
            if len(names) == 1:
                return {"label": names[0], "score": logits.item()}
            return {"scores": dict(zip(names, logits.tolist()))}
        probs = logits.sigmoid() if kind == "multi_label_classification" else logits.softmax(-1)
        scores = dict(zip(names, probs.tolist()))
        if kind == "multi_label_classification":
            chosen = sorted((n for n in names if scores[n] > 0.5), key=scores.get, reverse=True)
            return {"labels": chosen, "scores": scores}
        best = int(probs.argmax())
        return {"label": names[best], "score": probs[best].item(), "scores": scores}


# ---- token classification (NER) ----------------------------------------------------------------


def split_tag(label: str) -> tuple[str, str]:
    """'B-PER' -> ('B', 'PER'), 'I-PER' -> ('I', 'PER'); any other label continues: 'O' -> ('I', 'O')."""
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


def words_of(text: str, offsets: Sequence[Sequence[int]], special: Sequence[int]) -> list[list[int]]:
    """Token indices grouped into whitespace-delimited words: a token starts a word when it is the
    first or follows whitespace. Special tokens, padding and whitespace-only tokens belong to none."""
    words: list[list[int]] = []
    for t, (start, end) in enumerate(offsets):
        if special[t] or not text[start:end].strip():
            continue
        if not words or start == 0 or text[start - 1].isspace():
            words.append([t])
        else:
            words[-1].append(t)
    return words


def group_entities(text: str, words: list[tuple[str, float, int, int]]) -> list[dict]:
    """(label, score, start, end) per word -> entities: a B- tag (or a new type) starts one, an I- tag
    of the same type extends it; 'O' words are not entities. Score: the mean over its words."""
    groups: list[tuple[str, list]] = []
    for word in words:
        bi, tag = split_tag(word[0])
        if groups and groups[-1][0] == tag and bi != "B":
            groups[-1][1].append(word)
        else:
            groups.append((tag, [word]))
    return [
        {
            "entity": tag,
            "score": sum(w[1] for w in members) / len(members),
            "word": text[members[0][2] : members[-1][3]],
            "start": members[0][2],
            "end": members[-1][3],
        }
        for tag, members in groups
        if tag != "O"
    ]


class Tagger(Predictor):
    """Named entities (or any B-/I- tags) with character spans."""

    model_class = RobertaForTokenClassification

    def tag(self, texts: Texts, batch_size: int = 32) -> list:
        """Entities in each text: a list of {"entity" (type, e.g. "PER"), "score", "word", "start", "end"}
        per text, where text[start:end] == word.

        A word (whitespace-delimited) takes the label of its first sub-token, with that token's
        probability as its score; then B-/I- tags group words into entities (transformers'
        token-classification pipeline with aggregation_strategy="first").
        """
        texts, single = as_text_list(texts)
        batch = self.encode(texts)

        def probs(ids: torch.Tensor, mask: torch.Tensor) -> list:
            return list(self.model(ids, mask).logits.float().softmax(-1).cpu())  # B x (T, num_labels)

        per_row = self.run(batch["input_ids"], batch_size, probs)
        names = label_names(self.model.config)
        results = []
        for i, (text, p) in enumerate(zip(texts, per_row)):
            offsets = batch["offset_mapping"][i]
            words = []
            for tokens in words_of(text, offsets, batch["special_tokens_mask"][i]):
                score, label = p[tokens[0]].max(-1)  # the first sub-token decides
                words.append((names[int(label)], score.item(), offsets[tokens[0]][0], offsets[tokens[-1]][1]))
            results.append(group_entities(text, words))
        return results[0] if single else results


# ---- extractive question answering -------------------------------------------------------------


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
        windows = self.run(batch["input_ids"], batch_size, self._span_logits)
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

    def _span_logits(self, ids: torch.Tensor, mask: torch.Tensor) -> list:
        """Per row: (start logits, end logits), each (T,) without the padding."""
        out = self.model(ids, mask)
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


# ---- embeddings ---------------------------------------------------------------------------------


class Embedder(Predictor):
    """One vector per text, from the encoder's last layer."""

    model_class = RobertaModel

    @classmethod
    def load_model(cls, name_or_path: str | os.PathLike, device: torch.device) -> RobertaModel:
        """The encoder of any checkpoint (base or task), without the <s> pooler: it is not used here."""
        folder = resolve(name_or_path, MODEL_FILES)
        model = RobertaModel(RobertaConfig.from_json_file(folder / "config.json"), add_pooler=False)
        model.load_hf_state_dict(read_weights(folder), source=str(name_or_path))
        return model.to(device)

    def embed(
        self, texts: Texts, pooling: str = "mean", normalize: bool = True, batch_size: int = 32
    ) -> torch.Tensor:
        """Embeddings: (C,) for one text, (N, C) for a list, on the CPU in fp32.

        pooling: "mean" (the average over the text's tokens, <s> and </s> included) or "cls" (the
            <s> token's vector). normalize: scale each to unit length (cosine similarity = dot product).
        """
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        texts, single = as_text_list(texts)
        batch = self.encode(texts)

        def pool(ids: torch.Tensor, mask: torch.Tensor) -> list:
            h = self.model(ids, mask).last_hidden_state.float()  # (B, T, C)
            if pooling == "cls":
                v = h[:, 0]
            else:
                m = mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
                v = (h * m).sum(1) / m.sum(1)  # (B, C)
            return list((F.normalize(v, dim=-1) if normalize else v).cpu())

        vectors = torch.stack(self.run(batch["input_ids"], batch_size, pool))  # (N, C)
        return vectors[0] if single else vectors


# ---- translation -------------------------------------------------------------------------------


class Translator(Predictor):
    """Text to text with an encoder-decoder (roberta/seq2seq.py), by beam search."""

    model_class = EncoderDecoder

    def translate(
        self,
        texts: Texts,
        num_beams: int = 4,
        max_new_tokens: int | None = None,
        length_penalty: float = 1.0,
        batch_size: int = 32,
    ) -> str | list[str]:
        """The translation of each text (see EncoderDecoder.generate for the search's arguments)."""
        texts, single = as_text_list(texts)
        batch = self.encode(texts)

        def generate(ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
            out = self.model.generate(ids, mask, num_beams, max_new_tokens, length_penalty)
            return [self.tokenizer.decode(row, skip_special_tokens=True).strip() for row in out]

        results = self.run(batch["input_ids"], batch_size, generate)
        return results[0] if single else results
