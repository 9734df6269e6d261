"""The RoBERTa encoder, in the paper's order.

    Embeddings -> SelfAttention -> FeedForward -> EncoderLayer -> Encoder -> RobertaModel

RoBERTa (Liu et al., 2019) is BERT's architecture (Devlin et al., 2019), itself the Transformer
encoder (Vaswani et al., 2017): post-LayerNorm residual blocks of multi-head self-attention and a
GELU feed-forward network. What RoBERTa changes is the training recipe (see pretrain.py), a
byte-level BPE vocabulary (tokenizer.py) and one detail here: positions start at `pad_token_id + 1`.

Masks: `attention_mask` is (B, T) with 1 = real token, 0 = padding, everywhere in this package.
It is converted once, in `Encoder.forward`: when the batch has padding, the padding is removed
(packing.py) and every layer works on the real tokens only, (N, C), with attention restricted to each
sequence's own tokens; otherwise (and whenever attention weights are asked for) it becomes a
boolean (B, 1, 1, T) "may attend" mask. Both paths give the same numbers (tests/test_packing.py).

Checkpoint names differ from HF's; the mapping lives in checkpoint.py, never here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from roberta import kernels
from roberta.checkpoint import PretrainedModel
from roberta.config import RobertaConfig
from roberta.packing import (
    Packing,
    Subset,
    eager,
    has_padding,
    pack,
    packed_attention,
    subset_attention,
    unpack,
)


def position_ids_from_input_ids(input_ids: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """(B, T) positions pad+1, pad+2, ... counted over real tokens only; padding gets `pad_token_id`.

    Why pad+1: fairseq reserves positions 0..pad for padding, so the first real token is at
    pad+1 and a padded sequence's real tokens get the same positions as when it stands alone.
    Padding may be on either side.
    """
    real = input_ids.ne(pad_token_id).int()
    return (torch.cumsum(real, dim=1) * real + pad_token_id).long()


def sinusoidal_table(num_positions: int, dim: int) -> torch.Tensor:
    """(num_positions, dim) fixed sin/cos encoding of Vaswani et al.: sin on even, cos on odd dims."""
    pos = torch.arange(num_positions, dtype=torch.float64)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    table = torch.zeros(num_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return table.float()


class WordEmbedding(nn.Embedding):
    """nn.Embedding whose backward may hand its gradient on as sparse rows (`sparse_grad`, set by
    heads.py where the matrix is also the output layer's): the rows of this batch's tokens are then
    added to the output layer's dense gradient, instead of first being written into a (V, C) matrix
    of zeros that is then added to it (`python benchmarks/speed.py`, D). The parameter's gradient
    is the same dense sum (and where a loss never reached the output layer, the rows alone are made
    dense after accumulation, for optimizers and clipping that take dense gradients only). Not
    nn.Embedding's `sparse`, which DistributedDataParallel reads as "this gradient will be sparse";
    under torch.compile the gradient is dense."""

    sparse_grad: bool = False
    _hooked: int | None = None  # id of the weight that has the densifying hook

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        sparse = self.sparse_grad and torch.is_grad_enabled() and not torch.compiler.is_compiling()
        if sparse and self._hooked != id(self.weight):
            self.weight.register_post_accumulate_grad_hook(dense_grad)
            self._hooked = id(self.weight)
        return F.embedding(
            ids, self.weight, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq, sparse
        )


def dense_grad(param: torch.Tensor) -> None:
    """A parameter's accumulated gradient, made dense if it is sparse."""
    if param.grad is not None and param.grad.is_sparse:
        param.grad = param.grad.to_dense()


class Dropout(nn.Dropout):
    """nn.Dropout (the same contract and state), in one pass on the CPU where roberta/kernels.py's
    kernels are built (`kernels.dropout`): torch's CPU dropout is three, its Bernoulli draw the
    slowest of a training step's elementwise work."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.dropout(x, self.p, self.training)


class Embeddings(nn.Module):
    """Token embedding + position embedding (+ token type), then LayerNorm and dropout.

    Positions follow the config's family: RoBERTa's count real tokens from pad_token_id + 1 (padding
    sits at pad_token_id, a row kept at zero); BERT's are 0, 1, 2, ... at every position.
    """

    def __init__(self, config: RobertaConfig):
        super().__init__()
        self.pad_token_id = config.pad_token_id
        self.positions_after_pad = config.family.positions_after_pad
        self.first_position = config.position_offset
        self.word = WordEmbedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        if config.position_embedding_type == "learned":
            pad_row = config.pad_token_id if self.positions_after_pad else None
            self.position = nn.Embedding(
                config.max_position_embeddings, config.hidden_size, padding_idx=pad_row
            )
        else:
            self.position = nn.Embedding.from_pretrained(
                sinusoidal_table(config.max_position_embeddings, config.hidden_size), freeze=True
            )
        self.token_type = (
            nn.Embedding(config.type_vocab_size, config.hidden_size) if config.type_vocab_size > 0 else None
        )
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        packing: Packing | None = None,
    ) -> torch.Tensor:
        """(B, T, C); with a `packing` (input_ids given), its rows alone, (N + spare, C): what
        packing.pack makes of the (B, T, C) result, for a third of the work on padded text."""
        if packing is not None:
            return self.packed(input_ids, token_type_ids, position_ids, packing)
        if inputs_embeds is None:
            inputs_embeds = self.word(input_ids)  # (B, T, C)
        B, T, _ = inputs_embeds.shape
        if position_ids is None:
            if input_ids is not None and self.positions_after_pad:
                position_ids = position_ids_from_input_ids(input_ids, self.pad_token_id)  # (B, T)
            else:  # BERT's rule, or no ids to find padding in: every embedding is a real token
                start = self.first_position
                position_ids = torch.arange(start, start + T, device=inputs_embeds.device).expand(B, T)
        x = inputs_embeds + self.position(position_ids)
        if self.token_type is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros(B, T, dtype=torch.long, device=x.device)
            x = x + self.token_type(token_type_ids)
        return self.dropout(self.norm(x))  # (B, T, C)

    def packed(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        packing: Packing,
    ) -> torch.Tensor:
        """The embeddings of the packed rows alone (N + spare, C): the same per row as `forward`."""
        B, T = input_ids.shape
        if position_ids is None:
            if self.positions_after_pad:
                position_ids = position_ids_from_input_ids(input_ids, self.pad_token_id)  # (B, T)
            else:
                position_ids = torch.arange(
                    self.first_position, self.first_position + T, device=input_ids.device
                )
        rows = packing.indices  # (N,) flat positions b * T + t

        def take(ids: torch.Tensor) -> torch.Tensor:  # (B, T) or (T,) -> (N,)
            return ids.expand(B, T).flatten().index_select(0, rows)

        x = self.word(take(input_ids)) + self.position(take(position_ids))  # (N, C)
        if self.token_type is not None:
            types = (
                self.token_type.weight[0].expand_as(x)
                if token_type_ids is None
                else self.token_type(take(token_type_ids))
            )
            x = x + types
        x = self.dropout(self.norm(x))
        return x if not packing.spare else torch.cat([x, x.new_zeros(packing.spare, x.shape[1])])


class SelfAttention(nn.Module):
    """Multi-head self-attention: softmax(Q Kᵀ / √d_k) V per head, heads concatenated, then Wᴼ.

    Q, K and V come from one fused projection `qkv` (C -> 3C); `out` is Wᴼ (C -> C).
    """

    def __init__(self, config: RobertaConfig):
        super().__init__()
        self.n_head = config.num_attention_heads
        self.head_dim = config.head_dim
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, C) -> q, k, v each (B, nh, T, hs)."""
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, nh, T, hs)
        return q, k, v

    def project(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Output features start:stop of the fused projection only (Q: 0:C; K and V: C:3C)."""
        if isinstance(self.qkv, nn.Linear):
            return F.linear(x, self.qkv.weight[start:stop], self.qkv.bias[start:stop])
        return self.qkv.rows(start, stop)(x)  # an int8 projection (roberta/quantize.py)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | Packing | None,
        output_attentions: bool = False,
        subset: Subset | None = None,
        residual: torch.Tensor | None = None,
        norm: nn.Module | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, T, C) with mask (B, 1, 1, T) bool, True = may attend (a real key), or None (all real).
        Or x: (N, C), a batch's real tokens packed, with mask the `Packing` saying whose they are;
        then `subset` may name the rows whose output is wanted: (M, C) comes back.
        Returns x's shape; with `residual` (that shape), residual + the attention, and with `norm`
        too, norm(residual + the attention) (`add_norm`)."""
        dropout_p = self.dropout_p if self.training else 0.0
        if subset is not None:  # queries at the subset rows only; keys and values at every row
            C = x.shape[-1]
            q = self.project(x.index_select(0, subset.indices), 0, C).view(-1, self.n_head, self.head_dim)
            kv = self.project(x, C, 3 * C).view(-1, 2, self.n_head, self.head_dim)  # (N, 2, nh, hs)
            y = subset_attention(q, kv, mask, subset, dropout_p)  # (M, C)
            return self.output(y, residual, norm), None
        if isinstance(mask, Packing):
            bias = None
            if fused_ops(self.qkv, x) is not None and kernels.attention_ops(x, dropout_p) is not None:
                qkv, bias = x @ self.qkv.weight.t(), self.qkv.bias  # the kernel adds the bias as it reads
            else:
                qkv = self.qkv(x)
            y = packed_attention(qkv.view(-1, 3, self.n_head, self.head_dim), mask, dropout_p, bias)  # (N, C)
            return self.output(y, residual, norm), None
        B, T, C = x.shape
        q, k, v = self.heads(x)
        if output_attentions:
            y, weights = attention_weights(q, k, v, mask, dropout_p)
        else:
            y = kernels.scaled_dot_product_attention(q, k, v, mask, dropout_p)
            weights = None
        y = y.transpose(1, 2).reshape(B, T, C)  # concatenate the heads: (B, T, nh * hs)
        return self.output(y, residual, norm), weights

    def output(
        self, y: torch.Tensor, residual: torch.Tensor | None, norm: nn.Module | None = None
    ) -> torch.Tensor:
        """Wᴼ over the concatenated heads y, plus `residual` where given, then `norm` where given."""
        return self.out(y) if residual is None else add_norm(residual, self.out, y, norm)


def attention_weights(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout_p: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The explicit formula, for study: returns (softmax(QKᵀ/√d_k)·V, the weights (B, nh, T, T)).

    Padding keys get weight exactly 0; each query's weights over the real keys sum to 1.
    """
    weights = attention_scores(q, k, mask).softmax(dim=-1)  # (B, nh, T, T)
    return kernels.dropout(weights, dropout_p) @ v, weights


def attention_scores(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """QKᵀ/√d_k before the softmax, (B, nh, T, T); padding keys (mask False) get -inf."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, nh, T, T)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores


class FeedForward(nn.Module):
    """Position-wise feed-forward: Linear(C -> 4C), GELU, Linear(4C -> C)."""

    def __init__(self, config: RobertaConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = nn.GELU()  # exact (erf); roberta/onednn.py may fuse it into fc1 at inference
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None, norm: nn.Module | None = None
    ) -> torch.Tensor:
        """FFN(x); with `residual` (x's shape), residual + FFN(x), and with `norm` too,
        norm(residual + FFN(x)) (`add_norm`)."""
        h = linear_gelu(self.fc1, self.act, x)  # (..., 4C)
        return self.fc2(h) if residual is None else add_norm(residual, self.fc2, h, norm)


def fused_ops(linear: nn.Module, *tensors: torch.Tensor):
    """roberta/kernels.py's ops where a plain nn.Linear with a bias may leave its bias, and what
    follows it, to them: fp32 CPU inference (`cpu_fp32_inference`) with the kernels built; else None."""
    if type(linear) is not nn.Linear or linear.bias is None:
        return None
    return kernels.ops() if cpu_fp32_inference(*tensors, linear.weight) else None


def linear_gelu(linear: nn.Module, act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """act(linear(x)), the FFN's first half. With the exact GELU at fp32 CPU inference (`fused_ops`):
    the matmul without its bias, then the bias and the GELU in one pass over its output, in place
    (`kernels.bias_gelu_`), instead of the bias copied into the output first and the GELU's pass."""
    ops = fused_ops(linear, x) if isinstance(act, nn.GELU) and act.approximate == "none" else None
    if ops is None:
        return act(linear(x))
    h = torch.mm(x.reshape(-1, linear.in_features), linear.weight.t())  # (M, 4C)
    return ops.bias_gelu_(h, linear.bias).view(*x.shape[:-1], linear.out_features)


def add_norm(
    residual: torch.Tensor, linear: nn.Module, h: torch.Tensor, norm: nn.Module | None
) -> torch.Tensor:
    """norm(residual + linear(h)): a post-LN block's end (without `norm`, the sum: `add_linear`).
    With a LayerNorm at fp32 CPU inference (`fused_ops`): the matmul without its bias, then the
    bias, the residual and the LayerNorm in one pass over its output, in place
    (`kernels.add_layer_norm_`), instead of the residual's sum written first and two passes after."""
    affine = type(norm) is nn.LayerNorm and norm.elementwise_affine and norm.bias is not None
    ops = fused_ops(linear, residual, h) if affine and len(norm.normalized_shape) == 1 else None
    if ops is None:
        s = add_linear(residual, linear, h)
        return s if norm is None else norm(s)
    y = torch.mm(h.reshape(-1, linear.in_features), linear.weight.t())  # (M, C)
    r = residual.reshape(-1, linear.out_features).contiguous()
    return ops.add_layer_norm_(y, linear.bias, r, norm.weight, norm.bias, norm.eps).view(residual.shape)


def add_linear(residual: torch.Tensor, linear: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """residual + linear(h), a residual connection's sum, with one pass over the output fewer at
    inference. The plain sum has the GEMM fill its output (the bias first), then reads it back
    beside the residual to write the sum; instead, in fp32 on the CPU the GEMM adds its product into
    residual + bias (BLAS's C = A·B + C), and a linear with a kernel of its own sums in it (`add_to`:
    roberta/onednn.py's in oneDNN's post-op, roberta/quantize.py's int8 one as it dequantizes). The
    same sum up to fp32 rounding (the additions in another order); where a gradient is wanted, in
    graphs and in other dtypes, the plain sum."""
    add_to = getattr(linear, "add_to", None)
    if add_to is not None:
        return add_to(residual, h)
    if type(linear) is not nn.Linear or not cpu_fp32_inference(residual, h, linear.weight):
        return residual + linear(h)
    out = torch.empty_like(residual, memory_format=torch.contiguous_format)  # residual's shape
    if linear.bias is not None:
        torch.add(residual, linear.bias, out=out)
    else:
        out.copy_(residual)
    return (
        out.view(-1, linear.out_features)
        .addmm_(h.reshape(-1, linear.in_features), linear.weight.t())
        .view_as(out)
    )


def cpu_fp32_inference(*tensors: torch.Tensor) -> bool:
    """Whether these tensors are fp32 on the CPU, in eager mode (no graph being compiled or traced),
    and no gradient is wanted through them: where the fused inference kernels apply."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


class EncoderLayer(nn.Module):
    """One post-LN Transformer block: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

    def __init__(self, config: RobertaConfig):
        super().__init__()
        self.attn = SelfAttention(config)
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn = FeedForward(config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | Packing | None,
        output_attentions: bool = False,
        subset: Subset | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, T, C), or (N, C) packed real tokens; mask and subset as in SelfAttention."""
        r = x if subset is None else x.index_select(0, subset.indices)  # (M, C): the rows wanted
        if self.training and self.dropout.p > 0:  # dropout on each branch before its sum
            a, weights = self.attn(x, mask, output_attentions, subset)
            x = self.norm1(r + self.dropout(a))
            return self.norm2(x + self.dropout(self.ffn(x))), weights
        # no dropout: the same sums, each added by its branch's last linear, which hands its
        # output to the LayerNorm (`add_norm`)
        x, weights = self.attn(x, mask, output_attentions, subset, residual=r, norm=self.norm1)
        return self.ffn(x, residual=x, norm=self.norm2), weights


@dataclass
class EncoderOutput:
    """last_hidden_state (B, T, C), or (M, C) at the positions of a `subset_mask`; pooler_output
    (B, C) or None; on request, hidden_states (embeddings + each layer, L+1 of (B, T, C)) and
    attentions (L of (B, nh, T, T))."""

    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


# Longest sequences of a batch without padding that the encoder packs anyway (a view), for the
# compiled attention's one call: at 32-128 tokens it ran 1.2-1.35x SDPA's one call on whole rows, at
# 256 and 512 0.95x (`python benchmarks/cpu_kernels.py`, results/cpu-kernels-amx.txt).
DENSE_UP_TO = 192


@dataclass(frozen=True)
class Plan:
    """How the encoder runs a batch (`Encoder.plan`): `packing` (None: padded, with the boolean key
    mask from `real`, (B, T) or None for no padding); `subset_last`: the last layer computes the
    subset_mask's positions only; `every_real`: they are the real tokens, the layers' rows as they are."""

    packing: Packing | None
    real: torch.Tensor | None
    subset_last: bool
    every_real: bool


class Encoder(nn.Module):
    # N -> the row count the layers' linears want at inference, or None: set by roberta/onednn.py,
    # whose kernels see rounded row counts; the packed batch then carries the extra rows (packing.py)
    round_rows: Callable[[int], int] | None = None

    def __init__(self, config: RobertaConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_hidden_layers))

    def plan(
        self,
        shape: tuple[int, int],
        like: torch.Tensor,
        attention_mask: torch.Tensor | None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        subset_mask: torch.Tensor | None = None,
    ) -> Plan:
        """How `forward` runs a (B, T) = `shape` batch: packed or padded, the last layer on a
        subset or not (see forward). like: the embeddings, or a tensor of their dtype and device
        whose gradient is wanted alike (RobertaModel plans before it embeds: the word embeddings)."""
        fast = not torch.compiler.is_exporting()  # a graph export takes the plain path: shapes from T
        if fast:
            real = (
                attention_mask.bool() if attention_mask is not None and has_padding(attention_mask) else None
            )
        else:
            real = attention_mask.bool() if attention_mask is not None else None
        subset_last = subset_mask is not None and fast and not (output_hidden_states or output_attentions)
        # every real token wanted and no padding position (an embedder's read): the layers' rows are
        # the answer as they stand, real tokens in row-major order, with no last-layer subset to take
        every_real = subset_last and (
            bool(subset_mask.bool().all()) if real is None else torch.equal(subset_mask.bool(), real)
        )
        dense = real is None and fast and not output_attentions and not self.training
        if dense and shape[1] <= DENSE_UP_TO and kernels.attention_ops(like) is not None:
            real = torch.ones(shape, dtype=torch.bool, device=like.device)  # no padding (`dense`)
        if real is None or output_attentions or not fast:
            packing = None
        else:  # rounded rows only where no gradient is needed: training takes torch's linears
            fp32_cpu = like.device.type == "cpu" and like.dtype == torch.float32
            rounding = self.round_rows if fp32_cpu and not torch.is_grad_enabled() else None
            # padding positions keep a state (a slot per padded row) unless no one reads one
            slots = not subset_last or bool((subset_mask.bool() & ~real).any())
            packing = Packing.from_mask(real, rounding, slots)
        return Plan(packing, real, subset_last, every_real)

    def forward(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        subset_mask: torch.Tensor | None = None,
        plan: Plan | None = None,
    ) -> EncoderOutput:
        """x: (B, T, C) embeddings, or with a `plan` (`Encoder.plan`) that packs, its packed rows
        (N + spare, C) already; attention_mask: (B, T), 1 = real token, or None (all real).

        A batch with padding is unpadded once, here, unless attention weights are asked for (they
        are (B, nh, T, T) by definition) or the model is being exported to a graph (export.py: the
        unpadded sizes depend on the mask's values). Padding positions hold what the padded path
        gives them (see packing.py). At inference where roberta/kernels.py's attention runs, a batch
        without padding is packed too (a view: `Packing.dense`) up to `DENSE_UP_TO` tokens, for
        that kernel's one call.

        subset_mask: (B, T) bool, the positions whose final state the caller reads (a classifier's
        <s>, the masked tokens of MLM). last_hidden_state is then (M, C), those positions in
        row-major order, and the last layer computes only them (its keys and values still see
        every token): the same numbers for about 1/L less work. Where they are exactly the real
        tokens (the attention mask), no layer computes a padding position's state.
        """
        if plan is None:
            plan = self.plan(
                x.shape[:2], x, attention_mask, output_hidden_states, output_attentions, subset_mask
            )
        packing, real, subset_last, every_real = plan.packing, plan.real, plan.subset_last, plan.every_real
        hidden, attentions = [x], []
        if packing is not None:  # (N, C): real tokens (+ a slot per padded row); packed already or not
            x, mask = (pack(x, packing) if x.dim() == 3 else x), packing
        else:
            mask = None if real is None else real[:, None, None, :]  # (B, 1, 1, T)
        for i, layer in enumerate(self.layers):
            if subset_last and not every_real and i == len(self.layers) - 1:
                if packing is None:  # no padding: the (B, T) rows, flattened, are the packing
                    B, T, C = x.shape
                    x, mask = x.reshape(B * T, C), Packing.from_mask(x.new_ones(B, T, dtype=torch.bool))
                x, _ = layer(x, mask, subset=mask.rows_of(subset_mask))  # (M, C)
                return EncoderOutput(last_hidden_state=x)
            x, weights = layer(x, mask, output_attentions)
            attentions.append(weights)
            if output_hidden_states:
                hidden.append(x if packing is None else unpack(x, packing))
        if every_real:  # (M, C)
            return EncoderOutput(
                last_hidden_state=x.flatten(0, 1) if packing is None else x[: packing.num_rows]
            )
        if not output_hidden_states:
            hidden.append(x if packing is None else unpack(x, packing))  # (B, T, C)
        last = hidden[-1] if subset_mask is None else hidden[-1][subset_mask.bool()]  # (M, C)
        return EncoderOutput(
            last_hidden_state=last,
            hidden_states=tuple(hidden) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )


class Pooler(nn.Module):
    """tanh(W h_<s>): the first token's final state through a dense layer (BERT's NSP pooler)."""

    def __init__(self, config: RobertaConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class RobertaModel(PretrainedModel):
    """The RoBERTa encoder: `model(input_ids, attention_mask)` -> EncoderOutput.

    Args:
        config: the hyper-parameters.
        add_pooler: keep the `<s>` pooler (HF's `RobertaModel` has one; the task models do not).
    """

    def __init__(self, config: RobertaConfig, add_pooler: bool = True):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        self.pooler = Pooler(config) if add_pooler else None
        self.apply(self._init_weights)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        subset_mask: torch.Tensor | None = None,
    ) -> EncoderOutput:
        """
        Args:
            input_ids: (B, T) token ids. Give either these or `inputs_embeds` (B, T, C).
            attention_mask: (B, T), 1 = real token, 0 = padding. Default: all real.
            token_type_ids: (B, T) segment ids, 0 = first text, 1 = second (BERT); RoBERTa
                checkpoints have a single type (0). Default: all 0.
            position_ids: (B, T) explicit positions. Default: the family's rule (see Embeddings).
            output_hidden_states: also return the embeddings and every layer's output.
            output_attentions: also return every layer's attention weights (B, nh, T, T).
            subset_mask: (B, T) bool, the only positions whose final state is wanted; then
                last_hidden_state is (M, C) in row-major order and there is no pooler output
                (what the task heads use to skip the last layer's other positions).
        """
        self.check_inputs(input_ids, attention_mask, inputs_embeds)
        plan = None
        hooked = self.embeddings.word._forward_hooks  # interpret.py puts (B, T, C) points in its place
        if input_ids is not None and not (
            output_hidden_states or self.training or hooked or torch.is_grad_enabled()
        ):
            # inference: plan first, and embed only the rows the layers run on
            like = self.embeddings.word.weight
            plan = self.encoder.plan(
                input_ids.shape, like, attention_mask, False, output_attentions, subset_mask
            )
        packing = plan.packing if plan is not None else None
        x = self.embeddings(
            input_ids, token_type_ids, position_ids, inputs_embeds, packing
        )  # (B, T, C) or packed
        out = self.encoder(x, attention_mask, output_hidden_states, output_attentions, subset_mask, plan)
        if self.pooler is not None and subset_mask is None:
            out.pooler_output = self.pooler(out.last_hidden_state)  # (B, C)
        return out

    @eager  # it reads values (token id range): outside torch.compile graphs
    def check_inputs(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
    ) -> None:
        """Clear errors for input the model cannot take, before torch fails somewhere deep."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        x = input_ids if input_ids is not None else inputs_embeds
        if x.dim() != (2 if input_ids is not None else 3):
            hint = "(batch, length)" if input_ids is not None else "(batch, length, hidden)"
            raise ValueError(f"expected shape {hint}, got {tuple(x.shape)}; add a batch dimension?")
        if input_ids is not None:
            if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
                raise TypeError(f"input_ids must be integer token ids, got dtype {input_ids.dtype}")
            if input_ids.device.type == "cpu" and input_ids.numel() and not torch.compiler.is_exporting():
                lo, hi = int(input_ids.min()), int(input_ids.max())
                if lo < 0 or hi >= self.config.vocab_size:
                    raise ValueError(
                        f"input_ids hold {lo if lo < 0 else hi}, outside the vocabulary 0..{self.config.vocab_size - 1};"
                        " was the text encoded by this model's tokenizer?"
                    )
        T = x.shape[1]
        if T > self.config.max_length:
            raise ValueError(
                f"input has {T} tokens but the model's position table holds {self.config.max_length}; "
                f"encode with truncation=True, max_length={self.config.max_length}"
            )
        if T == 0:
            raise ValueError("input has 0 tokens; an empty text still encodes to <s> </s>")
        if attention_mask is not None and tuple(attention_mask.shape) != tuple(x.shape[:2]):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, expected {tuple(x.shape[:2])} "
                "(batch, length) with 1 = real token"
            )
