"""Packing: the encoder's speed machinery that is not the paper's idea — real tokens only, attention per sequence.

On realistic text most of a padded (B, T) batch is padding (about two thirds for sentence-length
inputs batched as they come). The encoder's cost is in its projections and feed-forward layers,
which treat every position alike, so the encoder computes them on the real tokens only:

    packing = Packing.from_mask(real)      # where the real tokens are, once per batch
    x = pack(x, packing)                   # (B, T, C) -> (N, C)
    ... every Linear / GELU / LayerNorm / dropout works on (N, C) ...
    packed_attention(qkv, packing)         # each sequence attends to its own real tokens only
    x = unpack(x, packing)                 # (N, C) -> (B, T, C)

How the attention runs. At inference on the CPU, where roberta/kernels.py's kernels are built: one
call of its `varlen_attention` for the whole batch, reading each sequence's rows where they lie
(`Packing.bounds`). Elsewhere (training, whose dropout and gradient that kernel lacks; GPUs; no
compiler), sequences of similar length share an SDPA call, gathered into a padded block and their
outputs put back in place (`Packing.attention_plan`, `grouped_attention`).

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
`subset_attention`). Where those positions are all real tokens, no padding position's state is
read, and the batch is packed without slots (`Packing.from_mask(real, slots=False)`): every layer
runs on the real tokens alone.

Spare rows. A kernel may want the row count rounded (oneDNN's, roberta/onednn.py, builds a kernel
per shape, so it sees multiples of 32): `Packing.from_mask(real, round_rows)` then adds `spare`
zero rows after the packed ones, once per batch, instead of every linear copying its input into a
rounded one. They belong to no sequence: attention gives them zeros, no key is one of them, and
`unpack` and `rows_of` never read them.

Every function here is pure and pinned to the padded path by tests/test_packing.py. Those that take a
`Packing` stay out of `torch.compile` graphs (`eager`): their loops and sizes are Python ints that
differ in every batch, which a graph would guard on and be recompiled for. The dense layers between
them compile once for any number of rows.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from roberta import kernels

eager = torch.compiler.disable  # run as plain Python under torch.compile (a graph break, no guards)


@dataclass(frozen=True)
class Packing:
    """Where the real tokens (and each padded row's slot) of a padded batch go when packed.

    indices: (N,) flat positions `b * T + t` of the packed rows: sequence after sequence, each
        sequence's real tokens in order, then its first padding position if it has padding.
    lengths: (B,) real tokens per sequence (Python ints: they size the per-sequence work).
    sizes: (B,) packed rows per sequence: its length, plus 1 when it has padding (the slot).
    batch_size, seq_len: B and T of the padded batch.
    spare: zero rows after the N packed ones, which no sequence owns (see "Spare rows" above).
    slots: whether padded rows have their slot; without (`from_mask(..., slots=False)`: a caller
        that reads no padding position) the packed rows are the real tokens alone, and padding
        positions have no state to unpack or read.
    """

    indices: torch.Tensor
    lengths: tuple[int, ...]
    sizes: tuple[int, ...]
    batch_size: int
    seq_len: int
    spare: int = 0
    slots: bool = True

    @classmethod
    @eager
    def from_mask(
        cls, real: torch.Tensor, round_rows: Callable[[int], int] | None = None, slots: bool = True
    ) -> Packing:
        """real: (B, T) bool or 0/1, True = real token. round_rows: N -> the row count the layers'
        kernels want (at least N); the difference becomes spare rows. slots: a slot per padded row
        (the default), or the real tokens alone where no padding position's state is wanted."""
        real = real.bool()
        B, T = real.shape
        padded = ~real.all(dim=1) if slots else real.new_zeros(B)  # (B,) rows that get a slot
        first_pad = (~real).int().argmax(dim=1)  # (B,) 0 for rows without padding, unused there
        keep = real.clone()
        keep[padded, first_pad[padded]] = True  # (B, T) real tokens and one slot per padded row
        t = torch.arange(T, device=real.device)
        rank = torch.where(real, t, T) + torch.arange(B, device=real.device)[:, None] * (T + 1)  # slot last
        order = rank[keep].argsort()
        indices = keep.flatten().nonzero().squeeze(1)[order]  # (N,)
        lengths = real.sum(dim=1)
        spare = round_rows(indices.numel()) - indices.numel() if round_rows is not None else 0
        if spare < 0:
            raise ValueError(
                f"round_rows({indices.numel()}) = {indices.numel() + spare} is below the row count"
            )
        return cls(indices, tuple(lengths.tolist()), tuple((lengths + padded).tolist()), B, T, spare, slots)

    @property
    def dense(self) -> bool:
        """No padding: the packed rows are the batch's positions in order, (B * T) of them."""
        return self.num_rows == self.batch_size * self.seq_len and sum(self.lengths) == self.num_rows

    @functools.cached_property
    def attention_plan(self) -> AttentionPlan:
        """Every packed row a query (`packed_attention`): the plan, made at the first layer."""
        return make_plan(self.sizes, self, call_cost(self.indices.device), self.indices.device, self.spare)

    @functools.cached_property
    def bounds(self) -> torch.Tensor:
        """(B, 4) int64 on the CPU: each sequence's first packed row and row count (its queries),
        then its first row and real tokens (its keys): `kernels.varlen_attention`'s plan."""
        return attention_bounds(self.sizes, self)

    @property
    def num_rows(self) -> int:
        """N: packed rows, real tokens plus slots (the spare rows not counted)."""
        return int(self.indices.numel())

    @eager
    def rows_of(self, positions: torch.Tensor) -> Subset:
        """The packed rows holding the states of `positions`, (B, T) bool, in row-major order.

        A padding position maps to its row's slot (it holds that position's state, see `unpack`)."""
        B, T = self.batch_size, self.seq_len
        if tuple(positions.shape) != (B, T):
            raise ValueError(f"positions must be (batch, length) = {(B, T)}, got {tuple(positions.shape)}")
        device = self.indices.device
        if not self.slots and not bool(
            positions.bool().flatten()[self.indices].sum() == positions.bool().sum()
        ):
            raise ValueError("positions include padding, and this packing has no padding slots (slots=False)")
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
    """(B, T, ...) -> (N + spare, ...): the packed rows, in `packing.indices` order, then the spare
    rows' zeros."""
    flat = x.flatten(0, 1)
    if not packing.spare:
        return flat if packing.dense else flat.index_select(0, packing.indices)
    n = packing.num_rows
    out = flat.new_empty(n + packing.spare, *flat.shape[1:])
    torch.index_select(flat, 0, packing.indices, out=out[:n])
    out[n:].zero_()
    return out


@eager
def unpack(x: torch.Tensor, packing: Packing) -> torch.Tensor:
    """(N + spare, ...) -> (B, T, ...): every packed row back in its place; each padding position
    of a row gets the state of that row's slot."""
    B, T = packing.batch_size, packing.seq_len
    if not packing.slots:
        raise ValueError("this packing has no padding slots (slots=False): padding positions have no state")
    x = x[: packing.num_rows]
    if packing.dense:
        return x.view(B, T, *x.shape[1:])
    last = torch.tensor(packing.sizes, device=x.device).cumsum(0) - 1  # (B,) each sequence's last row
    fill = x.index_select(0, last.clamp(min=0)).repeat_interleave(T, dim=0)  # (B * T, ...)
    return fill.index_copy(0, packing.indices, x).view(B, T, *x.shape[1:])


# One SDPA call's fixed cost on the CPU, in query-key pairs: about a 128-token sequence's attention.
# Per-sequence calls pay it B times per layer (on 2 busy cores a parallel call's thread hand-off
# costs more than a short sequence's arithmetic); one call re-padded to the longest pays for padding
# instead. `plan_groups` balances the two. Measured on workload A's batches (2 threads, a shared AMD
# EPYC, ours taking turns with itself at other costs), per CPU-second: busy, 65536 beat 4096 and
# 16384 by 14% and 6% and one call per batch by 10%; quieter, 4096..65536 within 4% of each other
# and a call per sequence (cost 0, as before) 26% slower. benchmarks/profile_a.py shows attention's share.
CPU_CALL_COST = 16384


@dataclass(frozen=True)
class Group:
    """Sequences attended in one SDPA call, re-padded to b x Q queries and b x S keys.

    q_rows: (b * Q,) the query row behind each padded query (a padding one repeats its sequence's
    last query); k_rows: (b * S,) the same for keys and values (padding ones are masked); key_mask:
    (b, 1, 1, S) True = a real key, or None when every key is real; dest: (b * Q,) where each padded
    query's output goes: its query's row of the result, or for a padding query a scratch row of its
    own past the result's end (dropped).
    """

    q_rows: torch.Tensor
    k_rows: torch.Tensor
    key_mask: torch.Tensor | None
    dest: torch.Tensor
    b: int
    Q: int
    S: int


@dataclass(frozen=True)
class AttentionPlan:
    """How a batch's attention runs: `groups`, each writing its output rows straight into their
    places (`Group.dest`) of a result of `rows` = M + spare rows (the spare ones zeros) and `scratch`
    rows after them that take the padding queries' outputs. `in_order`: one group whose padded
    queries are exactly the result's rows in order (equal lengths, no spare rows: workload B), whose
    output is then the result as it is. Made once per batch, used by every layer."""

    groups: tuple[Group, ...]
    rows: int
    scratch: int = 0
    spare: int = 0
    in_order: bool = False


def plan_groups(cost: list[tuple[int, int]], call_cost: float, window: int = 64) -> list[list[int]]:
    """Split sequences into groups of consecutive ones (in the given order) that minimise the sum
    over groups of call_cost + b * max queries * max keys. cost: (queries, keys) per sequence, sorted
    by keys. Exact dynamic programming over groups of at most `window` sequences."""
    n = len(cost)
    best, cut = [0.0] + [float("inf")] * n, [0] * (n + 1)
    for i in range(1, n + 1):
        Q = 0
        for j in range(i, max(0, i - window), -1):  # group = sequences j-1 .. i-1
            Q = max(Q, cost[j - 1][0])
            c = best[j - 1] + call_cost + (i - j + 1) * Q * cost[i - 1][1]
            if c <= best[i]:  # a tie: the bigger group, one call fewer
                best[i], cut[i] = c, j - 1
    groups, i = [], n
    while i > 0:
        groups.append(list(range(cut[i], i)))
        i = cut[i]
    return groups[::-1]


def make_plan(
    counts: tuple[int, ...], packing: Packing, call_cost: float, device: torch.device, spare: int = 0
) -> AttentionPlan:
    """The plan for counts[i] queries of each sequence i (consecutive rows, sequence after
    sequence) over its own real keys (the first lengths[i] of its sizes[i] packed rows), and
    `spare` rows of zeros after them."""
    lengths, sizes = packing.lengths, packing.sizes
    q_start = [0, *itertools.accumulate(counts)][:-1]
    k_start = [0, *itertools.accumulate(sizes)][:-1]
    order = sorted((i for i in range(len(counts)) if counts[i] > 0), key=lambda i: (lengths[i], counts[i]))
    split = plan_groups([(counts[i], max(lengths[i], 1)) for i in order], call_cost)
    rows = sum(counts) + spare  # the result's rows; scratch rows for padding queries follow
    groups, scratch = [], 0
    for part in split:
        seqs = [order[k] for k in part]
        n_q, n_k = torch.tensor([counts[i] for i in seqs]), torch.tensor([lengths[i] for i in seqs])
        Q, S, b = int(n_q.max()), max(int(n_k.max()), 1), len(seqs)
        t_q, t_k = torch.arange(Q)[None, :], torch.arange(S)[None, :]
        q_rows = torch.tensor([q_start[i] for i in seqs])[:, None] + torch.minimum(t_q, n_q[:, None] - 1)
        k_rows = torch.tensor([k_start[i] for i in seqs])[:, None] + torch.minimum(
            t_k, (n_k[:, None] - 1).clamp(min=0)
        )
        real_q, real_k = t_q < n_q[:, None], t_k < n_k[:, None]  # (b, Q), (b, S)
        dest = q_rows.clone()  # (b, Q)
        padding = int((~real_q).sum())
        dest[~real_q] = rows + scratch + torch.arange(padding)
        scratch += padding
        mask = None if bool(real_k.all()) else real_k[:, None, None, :].to(device)
        groups.append(
            Group(
                q_rows.flatten().to(device),
                k_rows.flatten().to(device),
                mask,
                dest.flatten().to(device),
                b,
                Q,
                S,
            )
        )
    # dest is the last group's, still on the CPU: no device sync to ask
    in_order = (
        len(groups) == 1 and not spare and not scratch and bool((dest.flatten() == torch.arange(rows)).all())
    )
    return AttentionPlan(tuple(groups), rows, scratch, spare, in_order)


def grouped_attention(
    q: torch.Tensor, kv: torch.Tensor | None, plan: AttentionPlan, dropout_p: float = 0.0
) -> torch.Tensor:
    """q: (M, nh, hs) queries and kv: (N, 2, nh, hs) keys and values; or q: (N, 3, nh, hs) the packed
    rows' queries, keys and values and kv None (then every row is a query, and one gather per group
    serves all three). One SDPA call per group of `plan`. Returns (M + plan.spare, nh * hs)."""
    nh, hs = q.shape[-2:]
    out = None if plan.in_order else q.new_empty(plan.rows + plan.scratch, nh * hs)
    if plan.spare:
        out[plan.rows - plan.spare : plan.rows].zero_()  # what the spare rows get
    for g in plan.groups:
        if kv is None:  # a key's row is its query's: the first S of each sequence's Q rows
            qkv = q.index_select(0, g.q_rows).view(g.b, g.Q, 3, nh, hs)
            qg, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (b, nh, Q, hs)
            k, v = k[:, :, : g.S], v[:, :, : g.S]
        else:
            qg = q.index_select(0, g.q_rows).view(g.b, g.Q, nh, hs).transpose(1, 2)  # (b, nh, Q, hs)
            kvg = kv.index_select(0, g.k_rows).view(g.b, g.S, 2, nh, hs)
            k, v = kvg.permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (b, nh, S, hs)
        y = kernels.scaled_dot_product_attention(qg, k, v, g.key_mask, dropout_p)  # (b, nh, Q, hs)
        y = y.transpose(1, 2).reshape(g.b * g.Q, nh * hs)  # (b * Q, nh * hs): a view where SDPA wrote it so
        if out is None:
            return y
        out.index_copy_(0, g.dest, y)
    return out[: plan.rows]  # (M + spare, nh * hs)


def attention_bounds(counts: tuple[int, ...], packing: Packing) -> torch.Tensor:
    """(B, 4) int64: for counts[i] queries of each sequence i (consecutive rows, sequence after
    sequence), their first row and count, then the sequence's first packed row and real tokens."""
    q_start = itertools.accumulate(counts, initial=0)
    k_start = itertools.accumulate(packing.sizes, initial=0)
    return torch.tensor(
        list(zip(q_start, counts, k_start, packing.lengths, strict=False)), dtype=torch.long
    ).view(-1, 4)


def call_cost(device: torch.device) -> float:
    """One group per call where launches are cheap next to padding (CPU), one call elsewhere (GPU)."""
    return CPU_CALL_COST if device.type == "cpu" else float("inf")


@eager
def packed_attention(
    qkv: torch.Tensor, packing: Packing, dropout_p: float = 0.0, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(QKᵀ/√d_k)·V of each sequence over its own real keys, on packed rows.

    qkv: (N + spare, 3, nh, hs) queries, keys and values of the packed rows; bias: (3 * nh * hs,)
    the projection's bias where qkv comes without it. Returns (N + spare, nh * hs), the heads
    concatenated, zeros at the spare rows. Equals SDPA on the padded batch with padding keys
    masked, at every row.
    At inference on the CPU, one call of roberta/kernels.py's `varlen_attention` for the batch; it
    adds Q's and V's bias as it reads them, and needs no K bias: that adds q·b_k to each score of a
    query alike, which the softmax takes away. Elsewhere sequences of similar length share one SDPA
    call (`Packing.attention_plan`, made once per batch).
    """
    rows, (_, nh, hs) = qkv.shape[0], qkv.shape[1:]
    if kernels.attention_ops(qkv, dropout_p) is not None:
        q, k, v = qkv.view(rows, 3 * nh * hs).chunk(3, dim=1)  # 3 x (N + spare, C), rows 3C apart
        q_bias, _, v_bias = bias.chunk(3) if bias is not None else (None, None, None)
        return kernels.varlen_attention(q, k, v, packing.bounds, nh, rows, q_bias, v_bias)
    if bias is not None:
        qkv = qkv + bias.view(3, nh, hs)
    return grouped_attention(qkv, None, packing.attention_plan, dropout_p)


@eager
def subset_attention(
    q: torch.Tensor, kv: torch.Tensor, packing: Packing, subset: Subset, dropout_p: float = 0.0
) -> torch.Tensor:
    """Attention for some queries only: each `subset` row attends over its own sequence's real keys.

    q: (M, nh, hs) the subset rows' queries; kv: (N, 2, nh, hs) keys and values of all packed rows.
    Returns (M, nh * hs). A classifier reads one position per sequence and the MLM loss the masked
    ones, so the last layer needs queries, attention, Wᴼ and the FFN at those rows only.
    """
    if kernels.attention_ops(q, dropout_p) is not None:
        (M, nh, hs), N = q.shape, kv.shape[0]
        k, v = kv.reshape(N, 2 * nh * hs).chunk(2, dim=1)  # 2 x (N, C)
        bounds = attention_bounds(subset.counts, packing)
        return kernels.varlen_attention(q.reshape(M, nh * hs), k, v, bounds, nh, M)
    plan = make_plan(subset.counts, packing, call_cost(q.device), q.device)
    return grouped_attention(q, kv, plan, dropout_p)
