"""Masked-language-model pretraining, as RoBERTa did it (Liu et al., 2019, section 4).

    stream = tokenize_corpus(files, tokenizer)           # every document's ids, each followed by </s>
    blocks = Blocks(stream, max_length=128, bos_id=0)    # <s> + 127 consecutive stream tokens each
    data = MLMBatches(blocks, batch_size=64, masker=Masker.for_tokenizer(tokenizer), seed=0)
    train(model, data, cfg, loss_fn=mlm_loss)            # the shared loop (roberta/train.py)

FULL-SENTENCES inputs: the corpus is one stream of tokens in which every document ends with
`</s>`; blocks are cut from it back to back, so a block may span documents (the `</s>` marks the
border) and nothing is padded, lost or repeated. Like fairseq (TokenBlockDataset of
`tokens_per_sample - 1`, then PrependTokenDataset), each block is `<s>` followed by `max_length - 1`
stream tokens; only the very last block is shorter. A document is a paragraph: a run of non-blank
lines, joined with single spaces (the books are hard-wrapped at ~70 characters).

Dynamic masking: each time a block is read, 15% of its non-special tokens are chosen (fairseq's
count: `int(0.15 * n + u)`, u ~ U[0, 1), so the expected rate is exactly 15%); of those, 80% become
`<mask>`, 10% a random non-special token, 10% stay. The randomness comes from a generator seeded by
(seed, epoch, block index): a resumed run masks exactly as before, and each epoch differently.
No next-sentence prediction; the LM head projects only the masked positions (`sparse_logits`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from roberta.heads import IGNORE_INDEX, RobertaForMaskedLM
from roberta.model import sinusoidal_table
from roberta.train import Batch, ShuffledBatches, mix_seed

logger = logging.getLogger(__name__)

CACHE_FORMAT = "paragraphs-v1"  # bump when read_documents or the stream layout changes
_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")


# ---- corpus -> token stream ------------------------------------------------------------------------


def read_documents(path: str | os.PathLike) -> Iterator[str]:
    """The documents of a UTF-8 text file: its paragraphs (blank-line separated), each with its
    lines stripped and joined by one space. Empty paragraphs are skipped."""
    text = Path(path).read_text(encoding="utf-8")
    for para in _BLANK_LINE.split(text):
        doc = " ".join(line.strip() for line in para.splitlines() if line.strip())
        if doc:
            yield doc


def corpus_files(files: Sequence[str | os.PathLike]) -> list[Path]:
    """The corpus files as paths; ValueError for none given, FileNotFoundError for a missing one."""
    if not files:
        raise ValueError("no corpus files given")
    paths = [Path(f) for f in files]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"corpus file not found: {p}")
    return paths


def corpus_key(files: Sequence[Path], tokenizer) -> str:
    """A hash of the files' contents, the tokenizer and the stream format: the cache key."""
    h = hashlib.sha256(CACHE_FORMAT.encode())
    h.update(tokenizer.backend.to_str().encode())
    for p in files:
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:24]


def encode_documents(docs: list[str], tokenizer, eos_id: int) -> np.ndarray:
    """Token ids of each document (no <s>), each followed by </s>, concatenated: (N,)."""
    dtype = np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max + 1 else np.int32
    parts = []
    for enc in tokenizer.backend.encode_batch(docs, add_special_tokens=False):
        parts.append(np.asarray(enc.ids + [eos_id], dtype=dtype))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def tokenize_corpus(
    files: Sequence[str | os.PathLike],
    tokenizer,
    cache_dir: str | os.PathLike | None = None,
) -> np.ndarray:
    """The corpus as one token stream (N,), uint16 when the vocabulary fits, else int32.

    Files are read in the order given; every document ends with `</s>`. With `cache_dir`, the
    stream is stored as `<key>.npy` (key: files' contents + tokenizer) and reused next time.
    """
    paths = corpus_files(files)
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"tokens-{corpus_key(paths, tokenizer)}.npy"
        if cache.exists():
            return np.load(cache, mmap_mode="r")
    docs = [doc for p in paths for doc in read_documents(p)]
    stream = encode_documents(docs, tokenizer, tokenizer.eos_token_id)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=".tokens.", suffix=".npy")
        with os.fdopen(fd, "wb") as f:
            np.save(f, stream)
        os.replace(tmp, cache)
        logger.info("cached %d tokens of %d documents in %s", len(stream), len(docs), cache)
    return stream


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "roberta" / "tokens"


# ---- blocks and masking ----------------------------------------------------------------------------


class Blocks:
    """Block i = `<s>` + stream[i * (L - 1) : (i + 1) * (L - 1)], L = max_length; the last may be shorter."""

    def __init__(self, stream: np.ndarray, max_length: int, bos_id: int):
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 (<s> + one token), got {max_length}")
        if len(stream) == 0:
            raise ValueError("the corpus holds no tokens; are the files empty?")
        self.stream, self.max_length, self.bos_id = stream, max_length, bos_id
        self.span = max_length - 1

    def __len__(self) -> int:
        return math.ceil(len(self.stream) / self.span)

    def __getitem__(self, i: int) -> torch.Tensor:
        """(T,) int64, T <= max_length."""
        if not 0 <= i < len(self):
            raise IndexError(f"block {i} out of range (0..{len(self) - 1})")
        body = torch.from_numpy(np.asarray(self.stream[i * self.span : (i + 1) * self.span], dtype=np.int64))
        return torch.cat([torch.tensor([self.bos_id]), body])


@dataclass
class Masker:
    """RoBERTa's dynamic masking (see the module docstring).

    Each block draws its randomness from its own generator, seeded by (seed, epoch, index): one
    vector of 3T + 1 uniforms (the rounding offset of the count; a score per position, the n lowest
    candidates are chosen; a draw for 80/10/10; a draw for the random replacement). The rest is
    computed for the whole batch at once, so a block's mask never depends on its batch.
    """

    mask_id: int
    special_ids: torch.Tensor  # (S,) ids never chosen: <s> <pad> </s> <unk> <mask>
    random_ids: torch.Tensor  # (R,) ids a chosen token may be replaced by
    mask_prob: float = 0.15

    def __post_init__(self) -> None:
        size = int(max(self.special_ids.max(), self.random_ids.max(), self.mask_id)) + 1
        self.is_special = torch.zeros(size, dtype=torch.bool)  # (V,) lookup table
        self.is_special[self.special_ids] = True
        self._generator = torch.Generator()

    @classmethod
    def for_tokenizer(cls, tokenizer) -> Masker:
        specials = sorted(
            {tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id}
            | {tokenizer.mask_token_id}
        )
        special = torch.tensor(specials)
        ids = torch.arange(len(tokenizer))
        return cls(tokenizer.mask_token_id, special, ids[~torch.isin(ids, special)])

    def __call__(self, ids: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (T,) -> (input_ids (T,), labels (T,): the original id where chosen, -100 elsewhere)."""
        draws = torch.rand(3 * len(ids) + 1, generator=generator)
        out, labels = self._mask(ids[None], torch.ones(1, len(ids), dtype=torch.bool), draws[None])
        return out[0], labels[0]

    def mask_block(self, ids: torch.Tensor, seed: int, epoch: int, index: int):
        """Mask block `index` as seen in `epoch`: the same (seed, epoch, index) gives the same mask."""
        return self(ids, self._generator.manual_seed(mix_seed(seed, epoch, index)))

    def mask_batch(
        self, blocks: Sequence[torch.Tensor], seed: int, epoch: int, indices: Sequence[int], pad_id: int
    ) -> Batch:
        """Blocks (T_i,) with their indices -> input_ids, attention_mask, labels: (B, T) padded
        with pad_id / 0 / -100. Row i equals `mask_block(blocks[i], seed, epoch, indices[i])`."""
        B, T = len(blocks), max(len(b) for b in blocks)
        ids = torch.full((B, T), pad_id, dtype=torch.long)
        real = torch.zeros((B, T), dtype=torch.bool)
        draws = torch.zeros((B, 3 * T + 1))
        for i, (block, index) in enumerate(zip(blocks, indices)):
            n = len(block)
            ids[i, :n], real[i, :n] = block, True
            d = torch.rand(3 * n + 1, generator=self._generator.manual_seed(mix_seed(seed, epoch, index)))
            draws[i, 0] = d[0]
            for part in range(3):  # scores, 80/10/10 draw, replacement draw: each T wide
                draws[i, 1 + part * T : 1 + part * T + n] = d[1 + part * n : 1 + (part + 1) * n]
        out, labels = self._mask(ids, real, draws)
        return {"input_ids": out, "attention_mask": real.long(), "labels": labels}

    def _mask(
        self, ids: torch.Tensor, real: torch.Tensor, draws: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ids, real: (B, T); draws: (B, 3T + 1) uniforms laid out as in `mask_batch`."""
        B, T = ids.shape
        offset = draws[:, 0]  # (B,)
        scores, kind, pick = draws[:, 1:].reshape(B, 3, T).unbind(1)  # 3 x (B, T)
        candidate = real & ~self.is_special[ids]  # (B, T)
        n = (self.mask_prob * candidate.sum(1) + offset).long()  # (B,) fairseq's int(0.15 * c + u)
        order = scores.masked_fill(~candidate, 2.0).argsort(dim=1)  # candidates first, in random order
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(T).expand_as(order))  # (B, T)
        chosen = rank < n[:, None]
        labels = torch.where(chosen, ids, IGNORE_INDEX)
        out = torch.where(chosen & (kind < 0.8), self.mask_id, ids)
        swap = chosen & (kind >= 0.8) & (kind < 0.9)
        R = len(self.random_ids)
        replacement = self.random_ids[(pick * R).long().clamp(max=R - 1)]  # (B, T)
        return torch.where(swap, replacement, out), labels


class MLMBatches(ShuffledBatches):
    """Shuffled micro-batches of masked blocks; block order and masks depend on (seed, epoch)."""

    def __init__(self, blocks: Blocks, batch_size: int, masker: Masker, pad_id: int, seed: int = 0):
        self.blocks, self.masker, self.pad_id = blocks, masker, pad_id
        super().__init__(len(blocks), batch_size, self._make, seed=seed)

    def _make(self, indices: list[int], epoch: int) -> Batch:
        return self.masker.mask_batch(
            [self.blocks[i] for i in indices], self.seed, epoch, indices, self.pad_id
        )


def mlm_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The pretraining loss: cross-entropy at the masked positions only (sparse logits)."""
    return model(**batch, sparse_logits=True).loss


# ---- evaluation ------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_mlm(
    model: RobertaForMaskedLM,
    blocks: Blocks,
    masker: Masker,
    pad_id: int,
    batch_size: int = 64,
    seed: int = 1234,
    max_blocks: int | None = None,
) -> dict[str, float]:
    """Masked-token loss, accuracy and perplexity over held-out blocks, masked with a fixed seed.

    Returns {"loss": mean cross-entropy per masked token (nats), "accuracy": share of masked
    tokens whose top-1 prediction is the original, "perplexity": exp(loss), "masked_tokens": count}.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    n = len(blocks) if max_blocks is None else min(max_blocks, len(blocks))
    loss_sum, correct, count = 0.0, 0, 0
    for start in range(0, n, batch_size):
        indices = range(start, min(n, start + batch_size))
        batch = masker.mask_batch([blocks[i] for i in indices], seed, 0, indices, pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(**batch, sparse_logits=True).logits.float()  # (N, V)
        target = batch["labels"][batch["labels"] != IGNORE_INDEX]  # (N,)
        loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(-1) == target).sum())
        count += len(target)
    model.train(was_training)
    loss = loss_sum / max(1, count)
    return {
        "loss": loss,
        "accuracy": correct / max(1, count),
        "perplexity": math.exp(loss),
        "masked_tokens": count,
    }


# ---- the whole recipe ------------------------------------------------------------------------------


INITS = ("roberta", "neighbour-heads")


def build_model(config, tokenizer, seed: int, init: str = "roberta") -> RobertaForMaskedLM:
    """A freshly initialised MLM whose vocabulary is the tokenizer's (config.vocab_size is set to it).

    init: "roberta", RoBERTa's N(0, 0.02²) everywhere; "neighbour-heads", the same, then
    `init_neighbour_heads` (two heads of layer 0 start by attending to the previous and the next
    token), which gets a small model past the bag-of-words plateau far sooner.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if config.vocab_size != len(tokenizer):
        logger.info("vocab_size %d -> %d (the tokenizer's)", config.vocab_size, len(tokenizer))
        config.vocab_size = len(tokenizer)
    if tokenizer.pad_token_id != config.pad_token_id:
        raise ValueError(
            f"tokenizer pad id {tokenizer.pad_token_id} != config pad_token_id {config.pad_token_id}"
        )
    torch.manual_seed(seed)
    model = RobertaForMaskedLM(config)
    if init == "neighbour-heads":
        init_neighbour_heads(model)
    return model


def init_neighbour_heads(model: RobertaForMaskedLM, offsets: Sequence[int] = (-1, 1), sharpness: float = 3.0):
    """Start the first layer's first heads as "attend to the token at offset δ" heads (in place).

    Why: from RoBERTa's random start, a small model on a CPU budget sits on the bag-of-words plateau
    (recipes/plateau_diag.py): attention stays uniform because the position table has no order in
    it, and the table learns no order because uniform attention never uses it. This breaks the
    circle at step 0 and changes nothing else: the architecture, the parameter names and the
    checkpoint format stay RoBERTa's, and every weight is trained from there as usual.

    How: the first `head_dim` (d) dimensions of the model width are kept for positions: the learned
    position table starts as the sin/cos table of Vaswani et al. there (and 0 elsewhere), while the
    word and token-type vectors start as 0 there; positions get the energy of a word vector. In
    layer 0, head h (for each δ_h in `offsets`) gets W_K = β·I and W_Q = β·R(δ_h) on the d/8 fastest
    (sin ωt, cos ωt) pairs and 0 elsewhere, where R rotates each pair by ω·δ_h, so that
    q_i·k_j ∝ Σ_ω cos(ω (i + δ_h - j)): largest at j = i + δ_h. (The slow pairs are left out: they
    are nearly equal for neighbours, so they would only add a large common score.) β is set so
    that, on random tokens, the score at i + δ_h beats the better of its two sides by `sharpness`
    nats on average: with the default 3, about 0.9 of each query's weight is on its neighbour.

    Used by `pretrain(..., init="neighbour-heads")` (`roberta pretrain --init neighbour-heads`).
    """
    cfg = model.config
    C, d, nh = cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads
    if len(offsets) > nh or cfg.position_embedding_type != "learned" or d % 2 or C <= d:
        raise ValueError(
            f"neighbour heads need learned positions, an even head_dim below the width and at most "
            f"{nh} offsets; got {cfg.position_embedding_type} positions, head_dim {d}, width {C}, "
            f"{len(offsets)} offsets"
        )
    emb, attn = model.roberta.embeddings, model.roberta.encoder.layers[0].attn
    sigma = cfg.initializer_range
    alpha = sigma * math.sqrt(2 * (C - d) / d)  # sin/cos amplitude: positions get a word's energy
    first = cfg.position_offset  # the first position: pad+1 (RoBERTa), 0 (BERT)
    omega = torch.exp(torch.arange(0, d, 2, dtype=torch.float64) * (-math.log(10000.0) / d))  # (d/2,)
    i = torch.arange(0, d // 4, 2)  # the fastest d/8 sin/cos pairs: they tell neighbours apart
    heads = [  # (W_Q rows, W_K rows, δ) of each neighbour head
        (slice(h * d, (h + 1) * d), slice(C + h * d, C + (h + 1) * d), delta)
        for h, delta in enumerate(offsets)
    ]
    with torch.no_grad():
        table = emb.position.weight  # (max_position_embeddings, C)
        table[first:] = 0
        table[first:, :d] = sinusoidal_table(table.size(0) - first, d) * alpha
        emb.word.weight[:, :d] = 0
        if emb.token_type is not None:
            emb.token_type.weight[:, :d] = 0
        W, b = attn.qkv.weight, attn.qkv.bias  # (3C, C), (3C,): rows Q | K | V
        for q, k, delta in heads:
            W[q], W[k], b[q], b[k] = 0, 0, 0, 0
            cos, sin = torch.cos(omega[: len(i)] * delta).float(), torch.sin(omega[: len(i)] * delta).float()
            W[q.start + i, i], W[q.start + i, i + 1] = cos, sin
            W[q.start + i + 1, i], W[q.start + i + 1, i + 1] = -sin, cos
            W[k.start + i, i], W[k.start + i + 1, i + 1] = 1.0, 1.0
        # β: measured, not derived (the LayerNorm's centring and scale move it): scores at β = 1 on
        # random tokens, then β² scaled so the peak beats its neighbours by `sharpness` on average
        T = min(64, cfg.max_length)
        ids = torch.randint(
            cfg.pad_token_id + 3, cfg.vocab_size - 1, (4, T), generator=torch.Generator().manual_seed(0)
        )
        training = emb.training
        x = emb.eval()(ids.to(W.device), None, None, None)  # (4, T, C); no dropout, no RNG drawn
        emb.train(training)
        for q, k, delta in heads:
            scores = (x @ W[q].T) @ (x @ W[k].T).transpose(1, 2) / math.sqrt(d)  # (4, T, T)
            rows = torch.arange(max(0, -delta) + 1, T - max(0, delta) - 1)  # peak and both sides inside
            peak = scores[:, rows, rows + delta]
            side = torch.maximum(scores[:, rows, rows + delta - 1], scores[:, rows, rows + delta + 1])
            beta = math.sqrt(sharpness / float((peak - side).mean()))
            W[q] *= beta
            W[k] *= beta


def pretrain(
    corpus: Sequence[str | os.PathLike],
    tokenizer,
    config,
    cfg,
    heldout: Sequence[str | os.PathLike] = (),
    max_length: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    eval_blocks: int | None = 512,
    resume: bool = False,
    init_from: str | os.PathLike | None = None,
    init: str = "roberta",
):
    """Pretrain a RobertaForMaskedLM on `corpus` (text files) with the shared loop: from scratch,
    or, with `init_from`, continuing from a pretrained model (domain-adaptive pretraining).

    Args:
        tokenizer: a roberta.tokenizer.Tokenizer (its vocabulary sets config.vocab_size).
        config: a RobertaConfig for the model; cfg: a TrainConfig (batch_size counts blocks).
            With init_from, the model's own config is used and `config` must be None.
        init_from: a model name or folder (RobertaForMaskedLM.from_pretrained) to start from: its
            weights, not its optimizer state (`resume` continues a run; this starts a new one).
        init: how a model trained from scratch starts: "roberta" or "neighbour-heads" (build_model).
        heldout: text files for the periodic evaluation (loss, accuracy, perplexity on at most
            `eval_blocks` blocks, fixed masks); none: no evaluation.
        max_length: tokens per block (default and maximum: config.max_length).
    Returns the TrainResult; the model is in cfg.out_dir/last (and the tokenizer beside it).
    """
    from roberta.train import train

    if init_from is not None:
        if config is not None or init != "roberta":
            raise ValueError(
                "give a config (and init) or init_from, not both: a pretrained model brings its own "
                "config and weights"
            )
        model = RobertaForMaskedLM.from_pretrained(init_from)
        config = model.config
        if config.vocab_size != len(tokenizer) or config.pad_token_id != tokenizer.pad_token_id:
            raise ValueError(
                f"{init_from} was pretrained with a vocabulary of {config.vocab_size} tokens (pad id "
                f"{config.pad_token_id}); the tokenizer has {len(tokenizer)} (pad id "
                f"{tokenizer.pad_token_id}): continue with the model's own tokenizer"
            )
        torch.manual_seed(cfg.seed)
    max_length = max_length or config.max_length
    if max_length > config.max_length:
        raise ValueError(
            f"max_length {max_length} exceeds what the position table holds ({config.max_length})"
        )
    if init_from is None:
        model = build_model(config, tokenizer, cfg.seed, init)
    masker = Masker.for_tokenizer(tokenizer)
    blocks = Blocks(tokenize_corpus(corpus, tokenizer, cache_dir), max_length, tokenizer.bos_token_id)
    data = MLMBatches(blocks, cfg.batch_size, masker, tokenizer.pad_token_id, seed=cfg.seed)
    eval_fn = None
    if heldout:
        held = Blocks(tokenize_corpus(heldout, tokenizer, cache_dir), max_length, tokenizer.bos_token_id)

        def eval_fn(m):
            return evaluate_mlm(
                m, held, masker, tokenizer.pad_token_id, cfg.batch_size, max_blocks=eval_blocks
            )

        if cfg.early_stopping_metric is None:  # best/: the lowest held-out loss
            cfg = dataclasses.replace(cfg, early_stopping_metric="loss", early_stopping_mode="min")
    logger.info("%d training blocks of %d tokens (%d tokens)", len(blocks), max_length, len(blocks.stream))
    return train(model, data, cfg, eval_fn, mlm_loss, save_extra=tokenizer.save_pretrained, resume=resume)
