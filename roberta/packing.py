"""Packing: the encoder's speed machinery that is not the paper's idea — real tokens only, attention per sequence.

On realistic text most of a padded (B, T) batch is padding (about two thirds for sentence-length
inputs batched as they come). The encoder's cost is in its projections and feed-forward layers,
which treat every position alike, so the encoder computes them on the real tokens only:

    packing = Packing.from_mask(real)      # where the real tokens are, once per batch
    x = pack(x, packing)                   # (B, T, C) -> (N, C)
    ... every Linear / GELU / LayerNorm / dropout works on (N, C) ...
    packed_attention(qkv, packing)         # each sequence attends to its own real tokens only
    x = unpack(x, packing)                 # (N, C) -> (B, T, C)

What padding positions hold. The padded computation gives them values too: a padding query
attends to its row's real keys. Task code can see them (a question-answering loss takes its
softmax over all T positions, as in transformers), so we keep them rather than invent new ones.
With the usual padding (pad token ids, default positions) every padding position of a row has
the same embedding, hence the same state in every layer, so one padding *slot* per padded row,
a query that is never a key, carries them all: N = real tokens + padded rows. `pad` writes the
slot's state into each padding position of its row. Results equal the padded path at every
position for such batches (tests/test_packing.py); for padding positions whose inputs differ
within a row (explicit position_ids, or dropout in training) they hold the first one's state.

Heads that read few positions (a classifier reads <s>, the MLM loss the masked tokens) pass
them as `subset_mask`; the last layer then computes keys and values at every row but queries,
attention, Wᴼ, the FFN and the LayerNorms at those rows only (`Packing.rows_of`,
`subset_attention`).

Every function here is pure and pinned to the padded path by tests/test_packing.py. Those that take a
`Packing` stay out of `torch.compile` graphs (`eager`): their loops and sizes are Python ints that
differ in every batch, which a graph would guard on and be recompiled for. The dense layers between
them compile once for any number of rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

eager = torch.compiler.disable  # run as plain Python under torch.compile (a graph break, no guards)


@dataclass(frozen=True)
class Packing:
    """Where the real tokens (and each padded row's slot) of a padded batch go when packed.

    indices: (N,) flat positions `b * T + t` of the packed rows: sequence after sequence, each
        sequence's real tokens in order, then its first padding position if it has padding.
    lengths: (B,) real tokens per sequence (Python ints: they size the per-sequence work).
    sizes: (B,) packed rows per sequence: its length, plus 1 when it has padding (the slot).
    batch_size, seq_len: B and T of the padded batch.
    """

    indices: torch.Tensor
    lengths: tuple[int, ...]
    sizes: tuple[int, ...]
    batch_size: int
    seq_len: int

    @classmethod
    @eager
    def from_mask(cls, real: torch.Tensor) -> Packing:
        """real: (B, T) bool or 0/1, True = real token."""
        real = real.bool()
        B, T = real.shape
        padded = ~real.all(dim=1)  # (B,)
        first_pad = (~real).int().argmax(dim=1)  # (B,) 0 for rows without padding, unused there
        keep = real.clone()
        keep[padded, first_pad[padded]] = True  # (B, T) real tokens and one slot per padded row
        t = torch.arange(T, device=real.device)
        rank = torch.where(real, t, T) + torch.arange(B, device=real.device)[:, None] * (T + 1)  # slot last
        order = rank[keep].argsort()
        indices = keep.flatten().nonzero().squeeze(1)[order]  # (N,)
        lengths = real.sum(dim=1)
        return cls(indices, tuple(lengths.tolist()), tuple((lengths + padded).tolist()), B, T)

    @property
    def num_rows(self) -> int:
        """N: packed rows, real tokens plus slots."""
        return int(self.indices.numel())

    @eager
    def rows_of(self, positions: torch.Tensor) -> Subset:
        """The packed rows holding the states of `positions`, (B, T) bool, in row-major order.

        A padding position maps to its row's slot (it holds that position's state, see `unpack`)."""
        B, T = self.batch_size, self.seq_len
        if tuple(positions.shape) != (B, T):
            raise ValueError(f"positions must be (batch, length) = {(B, T)}, got {tuple(positions.shape)}")
        device = self.indices.device
        last = torch.tensor(self.sizes, device=device).cumsum(0) - 1  # (B,) each sequence's last row
        row_of = last.clamp(min=0).repeat_interleave(T)  # (B * T,) padding -> its row's slot
        row_of = row_of.index_copy(0, self.indices, torch.arange(self.num_rows, device=device))
        positions = positions.bool()
        return Subset(row_of[positions.flatten()], tuple(positions.sum(dim=1).tolist()))


@dataclass(frozen=True)
class Subset:
    """Some packed rows, sequence after sequence: the positions whose final state a head reads.

    indices: (M,) packed row of each wanted position; counts: (B,) wanted positions per sequence.
    """

    indices: torch.Tensor
    counts: tuple[int, ...]


@eager
def has_padding(attention_mask: torch.Tensor) -> bool:
    """Whether a (B, T) mask (1 = real token) has any padding: the encoder unpads only then."""
    return not bool(attention_mask.all())


def pack(x: torch.Tensor, packing: Packing) -> torch.Tensor:
    """(B, T, ...) -> (N, ...): the packed rows, in `packing.indices` order."""
    return x.flatten(0, 1).index_select(0, packing.indices)


@eager
def unpack(x: torch.Tensor, packing: Packing) -> torch.Tensor:
    """(N, ...) -> (B, T, ...): every packed row back in its place; each padding position of a
    row gets the state of that row's slot."""
    B, T = packing.batch_size, packing.seq_len
    last = torch.tensor(packing.sizes, device=x.device).cumsum(0) - 1  # (B,) each sequence's last row
    fill = x.index_select(0, last.clamp(min=0)).repeat_interleave(T, dim=0)  # (B * T, ...)
    return fill.index_copy(0, packing.indices, x).view(B, T, *x.shape[1:])


@eager
def packed_attention(qkv: torch.Tensor, packing: Packing, dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(QKᵀ/√d_k)·V of each sequence over its own real keys, on packed rows.

    qkv: (N, 3, nh, hs) queries, keys and values of the packed rows. Returns (N, nh * hs), the
    heads concatenated. Equals SDPA on the padded batch with padding keys masked, at every row.
    It is `subset_attention` with every row as a query.
    """
    every_row = Subset(torch.arange(packing.num_rows, device=qkv.device), packing.sizes)
    return subset_attention(qkv[:, 0], qkv[:, 1:], packing, every_row, dropout_p)


@eager
def subset_attention(
    q: torch.Tensor, kv: torch.Tensor, packing: Packing, subset: Subset, dropout_p: float = 0.0
) -> torch.Tensor:
    """Attention for some queries only: each `subset` row attends over its own sequence's real keys.

    q: (M, nh, hs) the subset rows' queries; kv: (N, 2, nh, hs) keys and values of all packed rows.
    Returns (M, nh * hs). A classifier reads one position per sequence and the MLM loss the masked
    ones, so the last layer needs queries, attention, Wᴼ and the FFN at those rows only. On CPU
    one SDPA call per sequence computes no padding at all (measured fastest: see
    benchmarks/speed.py); elsewhere one masked call on the re-padded batch avoids many launches.
    """
    if q.device.type != "cpu":
        return _repadded_subset_attention(q, kv, packing, subset, dropout_p)
    outs = []
    parts = zip(q.split(subset.counts), kv.split(packing.sizes), packing.lengths)
    for qs, part, n in parts:  # qs (m, nh, hs), part (S, 2, nh, hs): one sequence
        if qs.shape[0] == 0:
            continue
        k, v = part[:n].permute(1, 2, 0, 3).unsqueeze(1).unbind(0)  # 2 x (1, nh, n, hs)
        y = F.scaled_dot_product_attention(qs.transpose(0, 1)[None], k, v, dropout_p=dropout_p)
        outs.append(y[0].transpose(0, 1).flatten(1))  # (m, nh * hs)
    return torch.cat(outs) if outs else q.new_zeros(0, q.shape[1] * q.shape[2])


def _repadded_subset_attention(
    q: torch.Tensor, kv: torch.Tensor, packing: Packing, subset: Subset, dropout_p: float
) -> torch.Tensor:
    """`subset_attention` as one SDPA call: queries and keys re-padded per sequence, keys masked."""
    _, nh, hs = q.shape
    B, Q, S = packing.batch_size, max(subset.counts, default=0), max(packing.sizes, default=0)
    pos_q, pos_k = torch.arange(Q, device=q.device), torch.arange(S, device=q.device)
    q_rows = (pos_q < torch.tensor(subset.counts, device=q.device)[:, None]).flatten().nonzero().squeeze(1)
    k_rows = (pos_k < torch.tensor(packing.sizes, device=q.device)[:, None]).flatten().nonzero().squeeze(1)
    keys = pos_k < torch.tensor(packing.lengths, device=q.device)[:, None]  # (B, S)
    dq = q.new_zeros(B * Q, nh, hs).index_copy(0, q_rows, q).view(B, Q, nh, hs).transpose(1, 2)
    dkv = kv.new_zeros(B * S, 2, nh, hs).index_copy(0, k_rows, kv).view(B, S, 2, nh, hs)
    k, v = dkv.permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (B, nh, S, hs)
    y = F.scaled_dot_product_attention(dq, k, v, attn_mask=keys[:, None, None, :], dropout_p=dropout_p)
    return y.transpose(1, 2).reshape(B * Q, nh * hs).index_select(0, q_rows)  # (M, nh * hs)
