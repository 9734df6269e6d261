"""Multi-head self-attention, step by step, computed by the model's own `SelfAttention`.

    x       = token embedding + position encoding                  (T, C)
    Q, K, V = x W_Q, x W_K, x W_V, split into nh heads             (nh, T, d_k),  d_k = C / nh
    scores  = Q Kᵀ / √d_k                                           (nh, T, T)
    weights = softmax(scores) over the keys: each row sums to 1     (nh, T, T)
    head_h  = weights_h V_h                                         (nh, T, d_k)
    concat  = [head_1 | ... | head_nh]                              (T, C)
    output  = concat W_O + b_O                                      (T, C)

Every tensor after x comes from `SelfAttention.heads`, `attention_scores`, `attention_weights` and
`SelfAttention.out`, the code the encoder runs; nothing here re-implements them. A test pins the
output to `SelfAttention.forward` (the fast SDPA path).

The worked example is "The quick brown fox jumps over the lazy dog" with 2 heads of 3 dimensions.
Our SelfAttention, like the Transformer paper's, splits the model width across the heads
(d_k = C / nh), so 3-dimensional heads make 6-dimensional embeddings: C = 6 = 2 heads x 3.
Its tokens are the whitespace-separated words, lowercased (a toy vocabulary, not RoBERTa's BPE), so
"the" at positions 0 and 6 shares one embedding and only the position encoding tells them apart.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from roberta.atomic import write_text_atomic
from roberta.config import RobertaConfig
from roberta.model import (
    RobertaModel,
    SelfAttention,
    attention_scores,
    attention_weights,
    position_ids_from_input_ids,
    sinusoidal_table,
)

TOY_TEXT = "The quick brown fox jumps over the lazy dog"
TOY_HEADS = 2
TOY_HEAD_DIM = 3
MATRICES = ("W_q", "W_k", "W_v", "W_o")
BIASES = ("b_q", "b_k", "b_v", "b_o")

# (key, heading); per-head tensors are (nh, T, .), the others (T, .)
STEPS = [
    ("embeddings", "token embeddings"),
    ("positions", "position encodings"),
    ("embedded", "embedding + position"),
    ("x", "x = the input to the attention"),
    ("W_q", "W_Q  (Q = x W_Q; head h uses columns h*d_k .. (h+1)*d_k - 1)"),
    ("W_k", "W_K  (K = x W_K)"),
    ("W_v", "W_V  (V = x W_V)"),
    ("q", "Q = x W_Q"),
    ("k", "K = x W_K"),
    ("v", "V = x W_V"),
    ("scores", "scores = Q Kᵀ / √d_k   (rows: queries, columns: keys)"),
    ("weights", "weights = softmax(scores)   (each row sums to 1)"),
    ("heads", "head output = weights V"),
    ("concat", "concatenation of the heads"),
    ("W_o", "W_O  (the output projection)"),
    ("b_o", "b_O"),
    ("output", "output = concat W_O + b_O"),
]
PER_HEAD = {"q", "k", "v", "scores", "weights", "heads"}
PARAMS = {"W_q", "W_k", "W_v", "W_o", "b_o"}


@dataclass
class Explanation:
    """The steps of one attention computation over one sequence.

    tokens: the T token labels; steps: STEPS key -> tensor ((nh, T, .) per head, else (T, .));
    params: the module's weights as `attention_params` gives them; title and notes are printed
    above the steps.
    """

    tokens: list[str]
    steps: dict[str, torch.Tensor]
    params: dict[str, torch.Tensor]
    title: str
    notes: list[str] = field(default_factory=list)


def check_fp32(attn: SelfAttention) -> None:
    """ValueError unless the attention's projections are plain nn.Linear: the steps are read from
    their float weights, which an int8 model (roberta/quantize.py) no longer has."""
    if not (isinstance(attn.qkv, torch.nn.Linear) and isinstance(attn.out, torch.nn.Linear)):
        raise ValueError(
            "explaining the attention reads its float weights, and this model's are int8; "
            "load the model without dtype=torch.int8 (--dtype int8) to explain it"
        )


def attention_params(attn: SelfAttention) -> dict[str, torch.Tensor]:
    """The module's weights in the article's convention (y = x W + b): W_q, W_k, W_v, W_o (C, C), b_o (C,).

    Views of `attn.qkv` and `attn.out` (nn.Linear stores W transposed), detached.
    """
    check_fp32(attn)
    C = attn.out.in_features
    W_q, W_k, W_v = attn.qkv.weight.detach().split(C)  # 3 x (C_out, C_in)
    return dict(
        W_q=W_q.T, W_k=W_k.T, W_v=W_v.T, W_o=attn.out.weight.detach().T, b_o=attn.out.bias.detach()[None]
    )


@torch.no_grad()
def explain_steps(
    attn: SelfAttention, x: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Run `attn` on one sequence and keep every intermediate.

    Args:
        attn: the attention module (put it in eval mode: no dropout is applied here).
        x: (T, C) the sequence's input to `attn`.
        attention_mask: (T,), 1 = real token, or None (all real).
    Returns: q, k, v, heads (nh, T, d_k); scores, weights (nh, T, T); concat, output (T, C).
    """
    check_fp32(attn)
    T, C = x.shape
    mask = None if attention_mask is None else attention_mask.bool()[None, None, None, :]  # (1, 1, 1, T)
    q, k, v = attn.heads(x[None])  # 3 x (1, nh, T, d_k)
    scores = attention_scores(q, k, mask)  # (1, nh, T, T)
    heads, weights = attention_weights(q, k, v, mask)  # (1, nh, T, d_k), (1, nh, T, T)
    concat = heads.transpose(1, 2).reshape(1, T, C)  # (1, T, nh * d_k), as SelfAttention.forward does
    output = attn.out(concat)  # (1, T, C)
    steps = dict(q=q, k=k, v=v, scores=scores, weights=weights, heads=heads, concat=concat, output=output)
    return {name: t[0] for name, t in steps.items()}


# ---- the toy example --------------------------------------------------------------------------


def toy_words(text: str) -> list[str]:
    """The toy tokenizer: whitespace-separated words, lowercased."""
    words = text.lower().split()
    if not words:
        raise ValueError("the text has no words to explain")
    return words


def toy_weights(
    words: list[str], seed: int = 0, num_heads: int = TOY_HEADS, head_dim: int = TOY_HEAD_DIM
) -> dict[str, Any]:
    """Seeded weights for the toy example, as the JSON `--weights` reads (see `load_weights`).

    Values are drawn uniformly from [-1, 1] and rounded to 2 decimals, so the printed matrices are
    exactly the ones used. Biases are zero, as in the article's example.
    """
    C = num_heads * head_dim
    g = torch.Generator().manual_seed(seed)

    def draw(*shape: int) -> list:
        u = torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1
        return (u.round(decimals=2) + 0.0).tolist()  # + 0.0 turns -0.0 into 0.0

    vocab = sorted(set(words), key=words.index)
    weights: dict[str, Any] = {"num_heads": num_heads, "embeddings": {w: draw(C) for w in vocab}}
    weights.update({name: draw(C, C) for name in MATRICES})
    weights.update({name: [0.0] * C for name in BIASES})
    return weights


def load_weights(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a toy weights file.

    The JSON object holds "num_heads" (int), "embeddings" ({word: [C numbers]}), "W_q", "W_k",
    "W_v", "W_o" (C x C, applied as x @ W: column block h belongs to head h) and optionally
    "b_q", "b_k", "b_v", "b_o" ([C], default zeros). C must be divisible by num_heads.
    """
    path = Path(path)
    try:
        weights = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no weights file at {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(weights, dict):
        raise ValueError(f"{path} must hold a JSON object with num_heads, embeddings, W_q, W_k, W_v, W_o")
    missing = [k for k in ("num_heads", "embeddings", *MATRICES) if k not in weights]
    if missing:
        raise ValueError(f"{path} lacks {missing}; write one with `roberta explain --save-weights FILE`")
    return weights


def _tensor(weights: dict[str, Any], name: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """weights[name] as a float64 tensor of `shape` (any shape if None), else a clear error."""
    try:
        t = torch.tensor(weights[name], dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"weights {name!r} must be an array of numbers") from None
    if shape is not None and tuple(t.shape) != shape:
        raise ValueError(f"weights {name!r} has shape {tuple(t.shape)}, expected {shape}")
    return t


def toy_attention(weights: dict[str, Any]) -> SelfAttention:
    """A float64 SelfAttention holding `weights` (the format of `load_weights`), in eval mode."""
    W_q, heads = _tensor(weights, "W_q"), weights["num_heads"]
    if W_q.dim() != 2 or W_q.shape[0] != W_q.shape[1] or W_q.numel() == 0:
        raise ValueError(f"weights 'W_q' has shape {tuple(W_q.shape)}, expected a square (C, C) matrix")
    C = W_q.shape[0]
    if not isinstance(heads, int) or heads < 1 or C % heads:
        raise ValueError(f"need num_heads >= 1 dividing the width of W_q ({C}), got num_heads={heads!r}")
    attn = SelfAttention(
        RobertaConfig(hidden_size=C, num_attention_heads=heads, attention_probs_dropout_prob=0.0)
    )
    attn = attn.double().eval()
    W = {name: _tensor(weights, name, (C, C)) for name in MATRICES}
    b = {name: _tensor(weights, name, (C,)) if name in weights else torch.zeros(C) for name in BIASES}
    with torch.no_grad():  # nn.Linear stores W transposed: y = x Wᵀ + b
        attn.qkv.weight.copy_(torch.cat([W["W_q"].T, W["W_k"].T, W["W_v"].T]))  # (3C, C)
        attn.qkv.bias.copy_(torch.cat([b["b_q"], b["b_k"], b["b_v"]]))
        attn.out.weight.copy_(W["W_o"].T)
        attn.out.bias.copy_(b["b_o"])
    return attn


def toy_example(text: str = TOY_TEXT, seed: int = 0, weights: dict[str, Any] | None = None) -> Explanation:
    """The worked example: toy word embeddings + sinusoidal positions through one SelfAttention.

    `weights` (see `load_weights`) overrides the seeded ones.
    """
    words = toy_words(text)
    source = f"weights from seed {seed}" if weights is None else "weights as given"
    weights = toy_weights(words, seed) if weights is None else weights
    attn = toy_attention(weights)
    C = attn.qkv.in_features
    table = weights["embeddings"]
    unknown = [w for w in dict.fromkeys(words) if w not in table]
    if unknown:
        raise ValueError(f"the weights have no embedding for {unknown}; add them under 'embeddings'")
    embeddings = torch.stack([_tensor(table, w, (C,)) for w in words])  # (T, C)
    positions = sinusoidal_table(len(words), C).double()  # (T, C), positions 0..T-1
    x = embeddings + positions  # (T, C): the input to the attention
    notes = [
        f"d_model = {C} = {attn.n_head} heads x d_k {attn.head_dim}; {source}.",
        "Tokens: whitespace words, lowercased (a toy vocabulary). Positions: the sinusoidal encoding",
        "of Vaswani et al. from position 0 (RoBERTa learns its own, from pad+1, and adds a LayerNorm).",
        "Their sum is x, the input to the attention.",
    ]
    steps = {"embeddings": embeddings, "positions": positions, "embedded": x, **explain_steps(attn, x)}
    return Explanation(words, steps, attention_params(attn), f"Multi-head self-attention on {text!r}", notes)


# ---- a real layer -----------------------------------------------------------------------------


@torch.no_grad()
def layer_example(model: RobertaModel, tokenizer: Any, text: str, layer: int) -> Explanation:
    """The same steps for layer `layer` (0-based) of a real model, on `text`.

    The input to layer 0's attention is LayerNorm(token + position embedding); to layer L > 0 it
    is layer L-1's output.
    """
    n = len(model.encoder.layers)
    if not 0 <= layer < n:
        raise ValueError(f"layer must be in 0..{n - 1} (the model has {n} layers), got {layer}")
    model.eval()
    batch = tokenizer(text, truncation=True, max_length=model.config.max_length, return_tensors="pt")
    ids = batch["input_ids"]  # (1, T)
    out = model(input_ids=ids, attention_mask=batch["attention_mask"], output_hidden_states=True)
    emb = model.embeddings
    embeddings = emb.word(ids)[0]  # (T, C)
    positions = emb.position(position_ids_from_input_ids(ids, emb.pad_token_id))[0]  # (T, C)
    x = out.hidden_states[layer][0]  # (T, C)
    attn = model.encoder.layers[layer].attn
    steps = {
        "embeddings": embeddings,
        "positions": positions,
        "embedded": embeddings + positions,
        "x": x,
        **explain_steps(attn, x, batch["attention_mask"][0]),
    }
    kind = model.config.position_embedding_type
    notes = [
        f"d_model = {attn.qkv.in_features} = {attn.n_head} heads x d_k {attn.head_dim}; {kind} positions from pad+1.",
        "Input to the attention: "
        + ("LayerNorm(embedding + position + token type)." if layer == 0 else f"layer {layer - 1}'s output."),
    ]
    tokens = tokenizer.convert_ids_to_tokens(ids[0].tolist())
    return Explanation(
        tokens, steps, attention_params(attn), f"Layer {layer} self-attention on {text!r}", notes
    )


# ---- printing ---------------------------------------------------------------------------------


def format_explanation(expl: Explanation, max_tokens: int = 12, max_dims: int = 8, max_heads: int = 2) -> str:
    """The steps as text; large tensors are cut to the first tokens, dims and heads (a note says so)."""
    lines = [expl.title, "=" * len(expl.title), *expl.notes]
    tables = {**expl.params, **expl.steps}
    for name, heading in STEPS:
        if name in tables:
            limits = (max_tokens, max_dims, max_heads)
            lines += _section(name, heading, tables[name], expl.tokens, *limits)
    return "\n".join(lines) + "\n"


def _section(
    name: str,
    heading: str,
    value: torch.Tensor,
    tokens: list[str],
    max_tokens: int,
    max_dims: int,
    max_heads: int,
) -> list[str]:
    """One step as a table per head (or one table): a title, column labels, labelled rows."""
    per_head, square, by_token = name in PER_HEAD, name in ("scores", "weights"), name not in PARAMS
    lines = []
    for h, m in enumerate(value[:max_heads] if per_head else value[None]):
        R, K = m.shape
        r, k = min(R, max_tokens if by_token else max_dims), min(K, max_tokens if square else max_dims)
        rows = [_label(t) for t in tokens[:r]] if by_token else [f"d{i}" if R > 1 else "" for i in range(r)]
        cols = [_label(t)[:8] for t in tokens[:k]] if square else [f"d{j}" for j in range(k)]
        cut = [f"{r} of {R} {'tokens' if by_token else 'rows'}"] if r < R else []
        cut += [f"{k} of {K} {'tokens' if square else 'dims'}"] if k < K else []
        cut += [f"{max_heads} of {len(value)} heads"] if per_head and len(value) > max_heads else []
        title = heading + (f"  [head {h}]" if per_head else "") + f"  {tuple(m.shape)}"
        title += f"  (showing {', '.join(cut)})" if cut else ""
        sums = m[:r].sum(-1) if name == "weights" else None  # over the whole row, shown or not
        lines += ["", title, *_matrix(m[:r, :k], rows, cols, sums)]
    return lines


def _label(token: str) -> str:
    return repr(token)[1:-1]  # control characters and odd spaces made visible


def _matrix(m: torch.Tensor, rows: list[str], cols: list[str], sums: torch.Tensor | None) -> list[str]:
    """(r, k) numbers, each row led by its label; a Σ column of `sums` (r,) when given."""
    width = max(len(s) for s in rows) + 2
    lines = [" " * width + "".join(f"{c:>9}" for c in cols) + (f"{'Σ':>9}" if sums is not None else "")]
    for i, (label, row) in enumerate(zip(rows, m.tolist())):
        total = f"{float(sums[i]):>9.4f}" if sums is not None else ""
        lines.append(f"{label:<{width}}" + "".join(f"{v:>+9.4f}" for v in row) + total)
    return lines


def explanation_json(expl: Explanation) -> dict[str, Any]:
    """Every step at full precision: {"tokens": [...], "steps": {name: nested lists}}.

    The weight matrices (`params`) are left out: a real layer's would be tens of megabytes.
    """
    return {"tokens": expl.tokens, "steps": {k: v.tolist() for k, v in expl.steps.items()}}


def save_weights(path: str | os.PathLike, weights: dict[str, Any]) -> Path:
    """Write toy weights (the format `load_weights` reads) as JSON, atomically."""
    write_text_atomic(Path(path), json.dumps(weights, indent=1) + "\n")
    return Path(path)
