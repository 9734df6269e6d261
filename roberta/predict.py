"""The predictor base: what every task's inference shares. Shaped like fairseq's RoBERTa hub interface.

Each task (roberta/tasks/) has one small Predictor subclass holding a model and its tokenizer:

    FillMask.from_pretrained(path).fill_mask("Paris is the <mask> of France.")   # tasks/fill_mask.py
    Classifier.from_pretrained(path).classify(["great film", "dull"])            # tasks/classify.py

Every task method takes one text (and returns one result) or a list of texts (and returns a list), runs
under `torch.inference_mode()` in batches of `batch_size` texts of similar length (optionally
also bounded by a token budget, `max_tokens`; sorted by
length, then put back in input order, so results do not depend on batch size or order), on the
model's device. Input longer than the model takes is truncated with a warning; question answering
instead slides overlapping windows over a long context. The decoding rules of fill-mask, tagging
and question answering follow transformers' pipelines, so results can be compared with theirs.

Here: `Predictor` (loading, encoding, batched running), `load_for_inference` (the one place where
a model is put on its device and in the dtype it runs in, int8 included), and the batching policy
(`length_sorted_batches`, `token_budget_batches`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import torch

from roberta.checkpoint import PretrainedModel
from roberta.collate import pad_batch
from roberta.model import RobertaModel
from roberta.onednn import use_onednn
from roberta.quantize import int8_device, set_dtype
from roberta.tokenizer import Tokenizer

Texts = str | Sequence[str]


# ---- shared machinery --------------------------------------------------------------------------


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device to run on: the one asked for, checked, else the GPU if there is one, else the CPU.

    ValueError for a name torch does not know ("gpu") and for a device this machine lacks (cuda on a
    CPU-only build or without a GPU, cuda:3 with two GPUs), saying what to pass instead."""
    if device is None:
        return default_device()
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device {device!r} is not one torch knows: use cpu, cuda, cuda:1, ... or mps"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise ValueError(f"device {str(device)!r} is not available here ({why}): use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' is not available here: use --device cpu")
    return device


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


def token_budget_batches(
    lengths: Sequence[int], max_tokens: int, max_batch_size: int | None = None
) -> list[list[int]]:
    """Indices grouped by length, longest first, so that each batch padded to its longest member
    holds at most `max_tokens` tokens (batch size x longest), and at most `max_batch_size` texts.

    lengths: token count of each sequence. A sequence longer than `max_tokens` gets a batch of its
    own. Returns lists of indices into `lengths`; each index appears exactly once. Run them in any
    order and put the outputs back by index.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    if max_batch_size is not None and max_batch_size < 1:
        raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        batch = batches[-1] if batches else None
        fits = batch is not None and (len(batch) + 1) * lengths[batch[0]] <= max_tokens
        if fits and (max_batch_size is None or len(batch) < max_batch_size):
            batch.append(i)
        else:
            batches.append([i])
    return batches


def load_for_inference(
    model_class: type[PretrainedModel],
    name_or_path: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> PretrainedModel:
    """`model_class` from a checkpoint, in eval mode, on `device` (default: the GPU if there is
    one) and in `dtype`: None keeps the checkpoint's fp32; a float dtype converts; torch.int8
    quantizes the Transformer layers (roberta/quantize.py; CPU only, ValueError elsewhere). In
    fp32 on a CPU where oneDNN's kernels are faster than torch's default, the layers' linears take
    them (roberta/onednn.py; same numbers within 1e-5).

    The one place where how a model runs is applied: predictors, `roberta evaluate` and the
    server all load through here."""
    device = int8_device(device) if dtype == torch.int8 else resolve_device(device)
    model = set_dtype(model_class.from_pretrained(name_or_path, device=device), dtype)
    return use_onednn(model).eval()


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
        model = load_for_inference(cls.model_class, name_or_path, device, dtype)
        return cls(model, Tokenizer.from_pretrained(name_or_path), max_tokens=max_tokens)

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
    def run(
        self,
        rows: Sequence[Sequence[int]],
        batch_size: int,
        fn: Callable[..., list],
        token_types: Sequence[Sequence[int]] | None = None,
    ) -> list:
        """fn(input_ids (B, T), attention_mask (B, T)) -> one output per row, on batches of rows of
        similar length; returns the outputs in the order of `rows`.

        token_types: each row's token_type_ids (the tokenizer's, for a family that has them: BERT),
        then passed on as fn(..., token_type_ids=(B, T)), padded with 0. None: fn gets none."""
        out: list = [None] * len(rows)
        was_training = self.model.training  # e.g. evaluation during fine-tuning: put the mode back
        self.model.eval()
        pad = {"input_ids": self.tokenizer.pad_token_id, "token_type_ids": 0}
        try:
            for idx in length_sorted_batches([len(r) for r in rows], batch_size, self.max_tokens):
                features = [{"input_ids": rows[i]} for i in idx]
                if token_types is not None:
                    for feature, i in zip(features, idx):
                        feature["token_type_ids"] = token_types[i]
                batch = pad_batch(features, pad, self.device)
                ids, mask = batch.pop("input_ids"), batch.pop("attention_mask")
                for i, result in zip(idx, fn(ids, mask, **batch)):
                    out[i] = result
        finally:
            self.model.train(was_training)
        return out
