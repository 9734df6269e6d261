"""Pictures of attention: a PNG heatmap (one head, or a grid of layers x heads) and an HTML page with
a head view and a model view; and pictures of token attributions (roberta/interpret.py).

`model(ids, mask, output_attentions=True).attentions` is a tuple of L tensors (B, nh, T, T): row i
of head h says how much token i (the query) attends to each token j (the keys); each row sums to 1
over the real tokens. The helpers here take that tuple and the T token labels:

    attentions, tokens = model_attentions(model, tokenizer, "The cat sat.")
    save_attention("cat.html", attentions, tokens)          # or cat.png
    save_attention("cat.png", attentions, tokens, layer=3, head=1)

Padding (attention_mask 0) is dropped before drawing; inputs longer than `max_tokens` are cut to
their first `max_tokens` tokens for display, and the figure's title says so. The HTML page is one
file with its data, script and styles inline: it opens offline, in any browser.

Attributions come as `interpret.explanation_json(expl)` data: `explanation_html` colours the
input's tokens by them, `explanation_figure` draws them as bars.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from roberta.atomic import atomic_file
from roberta.config import FAMILIES

MAX_DISPLAY_TOKENS = 64
SPECIAL_TOKENS = frozenset(t for f in FAMILIES.values() for t in f.special_tokens)  # drawn in grey


@dataclass
class AttentionMaps:
    """One sequence's attention, ready to draw: weights (L, nh, T, T), T token labels, and a note
    ("" or what was left out for display)."""

    weights: np.ndarray
    tokens: list[str]
    note: str = ""


def prepare(
    attentions: tuple[torch.Tensor, ...] | list[torch.Tensor],
    tokens: list[str],
    attention_mask: torch.Tensor | None = None,
    batch_index: int = 0,
    max_tokens: int = MAX_DISPLAY_TOKENS,
) -> AttentionMaps:
    """Pick one sequence of a batch, drop its padding, cut it to `max_tokens` for display.

    Args:
        attentions: L tensors (B, nh, T, T), as `output_attentions=True` returns them.
        tokens: the T labels of sequence `batch_index` (padding included if the batch has any).
        attention_mask: (B, T), 1 = real token; padding positions are removed. None: all real.
        batch_index: which sequence of the batch to show.
        max_tokens: the most tokens to draw; longer inputs keep their first `max_tokens`.
    """
    if attentions is None or len(attentions) == 0 or any(a is None for a in attentions):
        raise ValueError("no attention weights: run the model with output_attentions=True")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    weights = torch.stack([a[batch_index] for a in attentions]).detach().float().cpu()  # (L, nh, T, T)
    T = weights.shape[-1]
    if len(tokens) != T:
        raise ValueError(f"got {len(tokens)} token labels for attention over {T} tokens")
    tokens = [str(t) for t in tokens]
    if attention_mask is not None:
        keep = attention_mask[batch_index].bool().cpu()  # (T,)
        weights = weights[:, :, keep][:, :, :, keep]
        tokens = [t for t, k in zip(tokens, keep.tolist()) if k]
    n, note = len(tokens), ""
    if n > max_tokens:
        weights, tokens = weights[:, :, :max_tokens, :max_tokens], tokens[:max_tokens]
        note = f"showing the first {max_tokens} of {n} tokens"
    return AttentionMaps(weights.numpy(), tokens, note)


@torch.no_grad()
def model_attentions(
    model: Any, tokenizer: Any, text: str, text_pair: str | None = None
) -> tuple[tuple[torch.Tensor, ...], list[str]]:
    """Run `model` (a RobertaModel) on one text (or pair) and return (attentions, token labels).

    attentions: L tensors (1, nh, T, T). The text is truncated to what the model's positions hold.
    """
    model.eval()
    batch = tokenizer(
        text, text_pair, truncation=True, max_length=model.config.max_length, return_tensors="pt"
    )
    types = {"token_type_ids": batch["token_type_ids"]} if "token_type_ids" in batch else {}  # BERT's
    out = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_attentions=True, **types
    )
    return out.attentions, token_labels(tokenizer, batch["input_ids"][0].tolist())


def token_labels(tokenizer: Any, ids: list[int]) -> list[str]:
    """Readable labels: each id decoded on its own, spaces trimmed ("Ġfox" -> "fox"); "␣" for a space."""
    labels = []
    for i in ids:
        text = tokenizer.decode([i])
        labels.append(text.strip() or ("␣" if text else tokenizer.convert_ids_to_tokens(i)))
    return labels


def _index(value: int | None, n: int, what: str) -> list[int]:
    """[value] after a range check, or all of 0..n-1 when value is None."""
    if value is None:
        return list(range(n))
    if not 0 <= value < n:
        raise ValueError(f"{what} must be in 0..{n - 1} (the model has {n} {what}s), got {value}")
    return [value]


def save_attention(
    path: str | os.PathLike,
    attentions: tuple[torch.Tensor, ...] | list[torch.Tensor],
    tokens: list[str],
    layer: int | None = None,
    head: int | None = None,
    attention_mask: torch.Tensor | None = None,
    title: str = "Attention",
    max_tokens: int = MAX_DISPLAY_TOKENS,
) -> Path:
    """Write `path` as a PNG (see `save_attention_png`) or an HTML head view (`save_attention_html`),
    by its suffix. Arguments as in `prepare`; layer/head are 0-based."""
    suffix = Path(path).suffix.lower()
    maps = prepare(attentions, tokens, attention_mask, max_tokens=max_tokens)
    if suffix == ".png":
        return save_attention_png(path, maps, layer, head, title)
    if suffix in (".html", ".htm"):
        return save_attention_html(path, maps, layer or 0, head or 0, title)
    raise ValueError(f"cannot tell the format of {str(path)!r}: name the file .png or .html")


# ---- PNG ----------------------------------------------------------------------------------------


def save_attention_png(
    path: str | os.PathLike,
    maps: AttentionMaps,
    layer: int | None = None,
    head: int | None = None,
    title: str = "",
) -> Path:
    """Write `attention_figure(maps, layer, head, title)` as a PNG, atomically; returns the path."""
    fig = attention_figure(maps, layer, head, title)
    return _write_atomic(Path(path), lambda tmp: fig.savefig(tmp, dpi=100, format="png"))


def attention_figure(
    maps: AttentionMaps, layer: int | None = None, head: int | None = None, title: str = ""
) -> Any:
    """Heatmaps of `maps` (see `prepare`) as a matplotlib Figure: one head when both layer and head
    are given, else a grid of the chosen layers (rows) x heads (columns); None means all. The
    figure grows with the number of tokens; the title carries the truncation note, if any."""
    try:
        from matplotlib.figure import Figure  # no pyplot: leaves the user's backend alone
    except ImportError:
        raise ImportError(
            "PNG output needs matplotlib (pip install matplotlib); HTML output does not"
        ) from None

    L, nh, T, _ = maps.weights.shape
    layers, heads = _index(layer, L, "layer"), _index(head, nh, "head")
    title += f"\n({maps.note})" if maps.note else ""
    if len(layers) == len(heads) == 1:
        side = float(np.clip(0.28 * T + 2.0, 4.0, 24.0))  # inches
        fig = Figure(figsize=(side + 1.5, side + 1.0), layout="constrained")
        ax = fig.subplots()
        _heatmap(ax, maps.weights[layers[0], heads[0]], maps.tokens, True, True, fontsize=9 if T <= 32 else 6)
        ax.set(
            title=f"layer {layers[0]} head {heads[0]}", xlabel="attends to (keys)", ylabel="token (queries)"
        )
        fig.colorbar(ax.images[0], ax=ax, shrink=0.8, label="attention weight")
        fig.suptitle(title, fontsize=12)
        return fig
    # a grid: no layout engine (slow for 144 panels); fixed margins in inches instead
    cell, labels = float(np.clip(0.06 * T + 1.0, 1.2, 3.5)), T <= 20
    margin, top, gap = (0.8 if labels else 0.2), 0.65 + 0.2 * title.count("\n"), (0.1, 0.35)  # inches
    W = cell * len(heads) + gap[0] * (len(heads) - 1) + margin + 0.2
    H = cell * len(layers) + gap[1] * (len(layers) - 1) + margin + top
    fig = Figure(figsize=(W, H))
    fig.subplots_adjust(margin / W, margin / H, 1 - 0.2 / W, 1 - top / H, gap[0] / cell, gap[1] / cell)
    axes = fig.subplots(len(layers), len(heads), squeeze=False)
    for r, li in enumerate(layers):
        for c, h in enumerate(heads):
            left, bottom = labels and c == 0, labels and r == len(layers) - 1
            _heatmap(axes[r][c], maps.weights[li, h], maps.tokens, left, bottom, fontsize=5)
            axes[r][c].set_title(f"layer {li} head {h}", fontsize=7)
    fig.suptitle(title, fontsize=10, y=1 - 0.1 / H, va="top")
    return fig


def _heatmap(ax: Any, w: np.ndarray, tokens: list[str], left: bool, bottom: bool, fontsize: float) -> None:
    """One head's (T, T) weights: queries down the side (labelled if `left`), keys along the bottom
    (labelled if `bottom`); colours from 0 to the head's largest weight."""
    T = len(tokens)
    ax.imshow(w, cmap="viridis", vmin=0.0, vmax=max(float(w.max()), 1e-9), interpolation="nearest")
    ax.set_xticks(range(T) if bottom else [], tokens if bottom else [], rotation=90, fontsize=fontsize)
    ax.set_yticks(range(T) if left else [], tokens if left else [], fontsize=fontsize)
    ax.tick_params(length=0)


def _write_atomic(path: Path, write: Callable[[str], None]) -> Path:
    """Call write(temp_path) for a temp file beside `path`, then rename it over `path`."""
    with atomic_file(path) as tmp:
        write(str(tmp))
    return path


# ---- HTML ---------------------------------------------------------------------------------------


def save_attention_html(
    path: str | os.PathLike, maps: AttentionMaps, layer: int = 0, head: int = 0, title: str = "Attention"
) -> Path:
    """Write the head view of `maps` (see `attention_html`) atomically; returns the path."""
    page = attention_html(maps, layer, head, title)
    return _write_atomic(Path(path), lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))


def attention_html(maps: AttentionMaps, layer: int = 0, head: int = 0, title: str = "Attention") -> str:
    """A self-contained page: tokens in two columns, a line from each token (left) to each token it
    attends to (right) with opacity = weight; <select>s for layer and head (starting at `layer`,
    `head`); hovering a token shows only its lines. Below it, the model view (bertviz's): every
    layer x head as a small picture of its lines; clicking one opens it in the head view. The
    weights are embedded as JSON."""
    L, nh, _, _ = maps.weights.shape
    _index(layer, L, "layer")
    _index(head, nh, "head")
    data = {
        "tokens": maps.tokens,
        "special": [t in SPECIAL_TOKENS for t in maps.tokens],
        "attention": np.round(maps.weights.astype(np.float64), 4).tolist(),  # (L, nh, T, T)
        "layer": layer,
        "head": head,
    }
    # "<" escaped so that no token can close the <script> element
    payload = json.dumps(data, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e")
    note = f"<p class='note'>{html.escape(maps.note)}</p>" if maps.note else ""
    return (
        _PAGE.replace("__TITLE__", html.escape(title)).replace("__NOTE__", note).replace("__DATA__", payload)
    )


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>__TITLE__</title>
<style>
  body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
  h1 { font-size: 1.2em; font-weight: 600; }
  .note { color: #a05a00; }
  .controls { margin: 0.8em 0; }
  .controls label { margin-right: 1.5em; }
  .hint { color: #777; font-size: 0.9em; }
  svg text.token { font: 14px ui-monospace, monospace; cursor: default; dominant-baseline: middle; }
  svg text.special { fill: #888; font-style: italic; }
  svg text.focused { font-weight: bold; }
  svg line.attn { stroke-width: 2; }
  svg rect.mark { fill: currentColor; }
  h2 { font-size: 1.05em; font-weight: 600; margin: 1.6em 0 0.3em; }
  #model-view { display: grid; gap: 6px; margin-top: 0.6em; justify-content: start; }
  #model-view .cell { border: 2px solid transparent; border-radius: 4px; padding: 2px; cursor: pointer;
                      text-align: center; font-size: 11px; color: #555; }
  #model-view .cell:hover { border-color: #bbb; }
  #model-view .cell.selected { border-color: #333; color: #000; font-weight: 600; }
  #model-view .row-label { align-self: center; font-size: 11px; color: #555; text-align: right; padding-right: 4px; }
  #model-view canvas { display: block; background: #fafafa; }
</style>
</head>
<body>
<h1>__TITLE__</h1>
__NOTE__
<div class="controls">
  <label>Layer <select id="layer"></select></label>
  <label>Head <select id="head"></select></label>
  <span class="hint">Lines go from each token (left) to the tokens it attends to (right). Hover a token to see only its lines.</span>
</div>
<svg id="view" xmlns="http://www.w3.org/2000/svg"></svg>
<h2>Model view: every layer and head</h2>
<div class="hint">One small picture per head, layers down, heads across: lines from each token (left) to
the tokens it attends to (right). Click one to open it in the head view above.</div>
<div id="model-view"></div>
<script type="application/json" id="attention-data">__DATA__</script>
<script>
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("attention-data").textContent);
  const NS = "http://www.w3.org/2000/svg", ROW = 22, TOP = 16, GAP = 180;
  const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                  "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  const T = data.tokens.length, L = data.attention.length, H = data.attention[0].length;
  const svg = document.getElementById("view");
  const layerSel = document.getElementById("layer"), headSel = document.getElementById("head");

  function fill(select, n, name, value) {
    for (let i = 0; i < n; i++) {
      const o = document.createElement("option");
      o.value = String(i);
      o.textContent = name + " " + i;
      select.appendChild(o);
    }
    select.value = String(value);
  }
  function el(name, attrs, parent) {
    const e = document.createElementNS(NS, name);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    parent.appendChild(e);
    return e;
  }
  fill(layerSel, L, "layer", data.layer);
  fill(headSel, H, "head", data.head);

  const lineGroup = el("g", {}, svg), markGroup = el("g", {}, svg);
  const left = [], right = [], marks = [];
  for (let i = 0; i < T; i++) {
    const cls = "token" + (data.special[i] ? " special" : "");
    for (const [side, list] of [["left", left], ["right", right]]) {
      const t = el("text", {"class": cls + " " + side, "data-index": i, "y": TOP + i * ROW}, svg);
      t.textContent = data.tokens[i];
      list.push(t);
    }
  }
  let width = 40;
  for (const t of left) width = Math.max(width, t.getComputedTextLength() + 12);
  const x1 = width, x2 = width + GAP;
  for (let i = 0; i < T; i++) {
    left[i].setAttribute("x", x1 - 6);
    left[i].setAttribute("text-anchor", "end");
    right[i].setAttribute("x", x2 + 6);
    marks.push(el("rect", {"class": "mark", "x": x2 + 2, "y": TOP + i * ROW - ROW / 2 + 1,
                            "width": width, "height": ROW - 2, "opacity": 0}, markGroup));
  }
  svg.setAttribute("width", 2 * width + GAP + 20);
  svg.setAttribute("height", TOP + T * ROW);
  const lines = [];
  for (let i = 0; i < T; i++) {
    for (let j = 0; j < T; j++) {
      lines.push(el("line", {"class": "attn", "data-from": i, "data-to": j,
                             "x1": x1, "y1": TOP + i * ROW, "x2": x2, "y2": TOP + j * ROW}, lineGroup));
    }
  }

  function current() { return data.attention[Number(layerSel.value)][Number(headSel.value)]; }
  function draw(focus) {
    const a = current(), color = COLORS[Number(headSel.value) % COLORS.length];
    svg.style.color = color;
    for (const line of lines) {
      const i = Number(line.dataset.from), j = Number(line.dataset.to);
      const shown = !focus || (focus.side === "left" ? i === focus.index : j === focus.index);
      line.setAttribute("stroke", color);
      line.setAttribute("stroke-opacity", shown ? a[i][j] : 0);
    }
    for (let j = 0; j < T; j++) {
      const row = focus && focus.side === "left" ? a[focus.index] : null;
      marks[j].setAttribute("opacity", row ? 0.6 * row[j] / Math.max(...row, 1e-9) : 0);
    }
    for (const t of left.concat(right)) t.classList.remove("focused");
    if (focus) (focus.side === "left" ? left : right)[focus.index].classList.add("focused");
  }
  for (const [side, list] of [["left", left], ["right", right]]) {
    list.forEach(function (t, index) {
      t.addEventListener("mouseenter", function () { draw({side: side, index: index}); });
      t.addEventListener("mouseleave", function () { draw(null); });
    });
  }
  // the model view: one canvas per (layer, head)
  const grid = document.getElementById("model-view"), THUMB = 84, cells = [];
  grid.style.gridTemplateColumns = "4.5em repeat(" + H + ", " + (THUMB + 8) + "px)";
  function thumbnail(canvas, a, color) {
    const ctx = canvas.getContext("2d"), pad = 6, step = T > 1 ? (THUMB - 2 * pad) / (T - 1) : 0;
    ctx.strokeStyle = color;
    ctx.lineWidth = 1;
    for (let i = 0; i < T; i++) {
      for (let j = 0; j < T; j++) {
        if (a[i][j] < 0.01) continue;
        ctx.globalAlpha = a[i][j];
        ctx.beginPath();
        ctx.moveTo(pad, pad + i * step);
        ctx.lineTo(THUMB - pad, pad + j * step);
        ctx.stroke();
      }
    }
  }
  for (let l = 0; l < L; l++) {
    const label = document.createElement("div");
    label.className = "row-label";
    label.textContent = "layer " + l;
    grid.appendChild(label);
    for (let h = 0; h < H; h++) {
      const cell = document.createElement("div"), canvas = document.createElement("canvas");
      cell.className = "cell";
      cell.dataset.layer = l;
      cell.dataset.head = h;
      cell.title = "layer " + l + " head " + h + ": open in the head view";
      canvas.width = canvas.height = THUMB;
      thumbnail(canvas, data.attention[l][h], COLORS[h % COLORS.length]);
      cell.appendChild(canvas);
      cell.append("L" + l + " H" + h);
      cell.addEventListener("click", function () {
        layerSel.value = String(l);
        headSel.value = String(h);
        show();
        svg.scrollIntoView({block: "nearest"});
      });
      grid.appendChild(cell);
      cells.push(cell);
    }
  }
  function show() {
    for (const c of cells) {
      c.classList.toggle("selected", c.dataset.layer === layerSel.value && c.dataset.head === headSel.value);
    }
    draw(null);
  }
  layerSel.addEventListener("change", show);
  headSel.addEventListener("change", show);
  show();
})();
</script>
</body>
</html>
"""


# ---- token attributions (roberta/interpret.py): PNG bars, HTML page ----------------------------------


def explanation_figure(data: dict[str, Any], title: str | None = None) -> Any:
    """The explained view of `data` (interpret.explanation_json) as a matplotlib Figure: one bar
    per token, red where it raises the target's score f, blue where it lowers it; inputs longer
    than MAX_DISPLAY_TOKENS are cut for display, and the title says so."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            "PNG output needs matplotlib (pip install matplotlib); HTML output does not"
        ) from None
    tokens, values = data["tokens"], np.asarray(data["attributions"], dtype=np.float64)
    n, note = len(tokens), ""
    if n > MAX_DISPLAY_TOKENS:
        tokens, values = tokens[:MAX_DISPLAY_TOKENS], values[:MAX_DISPLAY_TOKENS]
        note = f"\n(showing the first {MAX_DISPLAY_TOKENS} of {n} tokens)"
    T = len(tokens)
    fig = Figure(figsize=(7.5, float(np.clip(0.28 * T + 1.8, 3.0, 22.0))), layout="constrained")
    ax = fig.subplots()
    colors = ["#b2182b" if v > 0 else "#2166ac" for v in values]
    ax.barh(range(T), values, color=colors, height=0.7)
    rows = set(data["rows"])
    labels = [f"{t}  ▸" if i in rows else t for i, t in enumerate(tokens)]
    ax.set_yticks(range(T), labels, fontsize=9 if T <= 32 else 7)
    for i, label in enumerate(ax.get_yticklabels()):
        if data["special"][i]:
            label.set_color("#888888")
    ax.invert_yaxis()
    ax.axvline(0, color="#444444", linewidth=0.8)
    delta = "" if data["delta"] is None else f";  convergence delta {data['delta']:.2g}"
    ax.set_xlabel(f"{data['method_names'][data['method']]} for “{data['target']}”{delta}")
    heading = title or f"{data['task']}: “{short_label(data['prediction'])}” ({data['score']:.3f})"
    ax.set_title(heading + f"\n{data['note']}  (▸: the token(s) f reads)" + note, fontsize=10)
    return fig


def short_label(text: str, width: int = 50) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def explanation_html(data: dict[str, Any], title: str | None = None) -> str:
    """A self-contained page of `data` (interpret.explanation_json): the input's tokens coloured by
    attribution on a diverging scale with a legend, the prediction and its score, what f is, the
    method and its convergence delta; selectors for the target and the method redraw from the
    embedded attributions of every view, without a server."""
    heading = title or f"Why did the model predict “{short_label(data['prediction'], 60)}”?"
    payload = json.dumps(data, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e")
    return _EXPLANATION_PAGE.replace("__TITLE__", html.escape(heading)).replace("__DATA__", payload)


_EXPLANATION_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>__TITLE__</title>
<style>
  body { font: 15px system-ui, sans-serif; margin: 1.5em 2em; color: #222; max-width: 60em; }
  h1 { font-size: 1.3em; font-weight: 600; margin-bottom: 0.3em; }
  h2 { font-size: 1em; font-weight: 600; margin: 1.4em 0 0.4em; }
  .summary { margin: 0 0 1em; }
  .summary b { font-size: 1.05em; }
  .controls { margin: 0.8em 0 0.4em; }
  .controls label { margin-right: 1.5em; }
  select { font: inherit; padding: 0.1em 0.2em; }
  .what { color: #444; margin: 0.3em 0 1em; font-style: italic; }
  .legend { display: flex; align-items: center; gap: 0.6em; font-size: 0.85em; color: #444; margin: 0.6em 0; }
  .bar { width: 16em; height: 0.9em; border: 1px solid #bbb;
         background: linear-gradient(to right, rgb(33,102,172), #fff 50%, rgb(178,24,43)); }
  .ticks { display: flex; justify-content: space-between; width: 16em; font-variant-numeric: tabular-nums; }
  #text { font: 17px/2.3 Georgia, serif; border: 1px solid #ddd; border-radius: 6px; padding: 0.6em 0.9em;
          white-space: pre-wrap; }
  #text .tok { padding: 0.15em 0.05em; border-radius: 3px; }
  #text .special { font: 11px ui-monospace, monospace; color: #777; background: #f2f2f2; padding: 0.1em 0.3em;
                  margin: 0 0.15em; }
  #text .read { outline: 2px dashed #333; outline-offset: 1px; }
  .method { color: #333; margin: 1em 0; }
  .method.warn { color: #a05a00; }
  #top { list-style: none; padding: 0; margin: 0; font-variant-numeric: tabular-nums; }
  #top li { display: flex; align-items: center; gap: 0.6em; margin: 0.15em 0; }
  #top .name { width: 10em; text-align: right; font-family: Georgia, serif; overflow: hidden; }
  #top .value { width: 5em; text-align: right; font-size: 0.9em; }
  #top .fill { height: 0.8em; border-radius: 2px; }
  .hint { color: #777; font-size: 0.85em; }
</style>
</head>
<body>
<h1>__TITLE__</h1>
<p class="summary" id="summary"></p>
<div class="controls">
  <label>Explain <select id="target"></select></label>
  <label>Method <select id="method"></select></label>
</div>
<p class="what" id="what"></p>
<div class="legend">
  <span>lowers f</span>
  <div><div class="bar"></div><div class="ticks"><span id="lo"></span><span>0</span><span id="hi"></span></div></div>
  <span>raises f</span>
  <span class="hint">&nbsp;&nbsp;dashed box: the token(s) f is read at; hover a token for its value</span>
</div>
<div id="text"></div>
<p class="method" id="method-note"></p>
<h2>The tokens that count most</h2>
<ol id="top"></ol>
<script type="application/json" id="explanation-data">__DATA__</script>
<script>
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("explanation-data").textContent);
  const T = data.tokens.length;
  const targetSel = document.getElementById("target"), methodSel = document.getElementById("method");
  const RULES = {gausslegendre: "Gauss-Legendre", riemann_left: "left Riemann", riemann_right: "right Riemann",
                 riemann_middle: "midpoint Riemann", riemann_trapezoid: "trapezoid"};
  function option(select, value, text) {
    const o = document.createElement("option");
    o.value = value;
    o.textContent = text;
    select.appendChild(o);
  }
  const targets = [], methods = [];
  for (const v of data.views) {
    if (!targets.includes(v.target)) targets.push(v.target);
    if (!methods.includes(v.method)) methods.push(v.method);
  }
  targets.forEach(function (t) { option(targetSel, t, t); });
  methods.forEach(function (m) { option(methodSel, m, data.method_names[m]); });
  targetSel.value = data.target;
  methodSel.value = data.method;
  const summary = document.getElementById("summary");
  summary.append("The " + data.task + " model predicted ");
  const b = document.createElement("b");
  b.textContent = "\\u201c" + data.prediction + "\\u201d";
  summary.append(b, " with score " + data.score.toFixed(3) + ".");

  // the input, token by token, with the text's own spacing between tokens
  const box = document.getElementById("text"), spans = [];
  let previous = null;
  for (let t = 0; t < T; t++) {
    const seg = data.segments[t], [start, end] = data.offsets[t];
    if (seg !== null && previous && previous.seg === seg && start > previous.end) {
      box.append(data.inputs[seg].slice(previous.end, start).replace(/\\s+/g, " "));
    } else if (t > 0 && (data.special[t] || data.special[t - 1])) {
      box.append(" ");
    }
    const s = document.createElement("span");
    s.className = "tok" + (data.special[t] ? " special" : "");
    s.textContent = seg === null ? data.tokens[t] : data.inputs[seg].slice(start, end);
    if (!s.textContent) s.textContent = data.tokens[t];
    s.dataset.index = t;
    box.appendChild(s);
    spans.push(s);
    if (seg !== null) previous = {seg: seg, end: end};
  }

  function color(v, max) {  // white at 0, blue below, red above
    const x = Math.max(-1, Math.min(1, v / max)), a = Math.abs(x);
    const to = x >= 0 ? [178, 24, 43] : [33, 102, 172];
    const c = to.map(function (k) { return Math.round(255 + (k - 255) * a); });
    return ["rgb(" + c.join(",") + ")", a > 0.6 ? "#fff" : "#222"];
  }
  function fmt(x) { return (x >= 0 ? "+" : "\\u2212") + Math.abs(x).toPrecision(3); }
  function current() {
    return data.views.find(function (v) { return v.target === targetSel.value && v.method === methodSel.value; });
  }
  function methodNote(v) {
    if (v.method === "ig") {
      const diff = v.f_input - v.f_baseline, pct = 100 * Math.abs(v.delta) / Math.max(Math.abs(diff), 1e-12);
      return "Integrated gradients: " + data.steps + " " + (RULES[data.rule] || data.rule) + " steps on the path from the " +
        "<" + data.baseline + "> baseline (every text token replaced, special tokens kept) to the input. " +
        "The attributions add up to f(input) \\u2212 f(baseline) = " + v.f_input.toPrecision(4) + " \\u2212 " +
        (v.f_baseline < 0 ? "(" + v.f_baseline.toPrecision(4) + ")" : v.f_baseline.toPrecision(4)) + " = " + diff.toPrecision(4) + ", up to the convergence delta " +
        v.delta.toExponential(1) + " (" + pct.toPrecision(2) + "% of it).";
    }
    if (v.method === "grad-input") {
      return "Gradient \\u00d7 input: each token's embedding times the gradient of f there, summed over the hidden " +
        "dimension (a first-order estimate of its effect). f(input) = " + v.f_input.toPrecision(4) + ".";
    }
    if (v.method === "saliency") {
      return "Saliency: the length (L2 norm) of the gradient of f at each token's embedding \\u2014 how sensitive f " +
        "is to that token, not in which direction (never negative). f(input) = " + v.f_input.toPrecision(4) + ".";
    }
    return "Attention rollout: each layer's attention averaged over its heads, plus the residual connection, " +
      "multiplied through the layers; shown is how much the token(s) f is read at draw from each input token " +
      "(never negative; the same for every label). Attention alone is not an explanation of a prediction.";
  }
  function draw() {
    const v = current();
    if (!v) return;
    let max = 1e-12;
    for (let t = 0; t < T; t++) if (!data.special[t]) max = Math.max(max, Math.abs(v.scores[t]));
    const rows = data.target_rows[v.target] || [];
    for (let t = 0; t < T; t++) {
      const [bg, fg] = color(v.scores[t], max), s = spans[t];
      s.style.background = bg;
      s.style.color = data.special[t] ? (fg === "#fff" ? "#fff" : "#777") : fg;
      s.dataset.value = v.scores[t];
      s.title = data.tokens[t] + ": " + fmt(v.scores[t]) + " (token " + t + ")";
      s.classList.toggle("read", rows.includes(t));
    }
    document.getElementById("lo").textContent = fmt(-max);
    document.getElementById("hi").textContent = fmt(max);
    document.getElementById("what").textContent = data.notes[v.target] || "";
    const note = document.getElementById("method-note"), gap = Math.abs(v.f_input - v.f_baseline);
    const off = v.method === "ig" && Math.abs(v.delta) > 0.01 * gap;
    note.textContent = methodNote(v) + (off ? " That is over 1%: rerun with more --steps for a faithful integral." : "");
    note.classList.toggle("warn", off);
    const top = document.getElementById("top");
    top.innerHTML = "";
    const order = [...Array(T).keys()].filter(function (t) { return !data.special[t]; })
      .sort(function (i, j) { return Math.abs(v.scores[j]) - Math.abs(v.scores[i]); }).slice(0, 8);
    for (const t of order) {
      const li = document.createElement("li"), name = document.createElement("span");
      name.className = "name";
      name.textContent = data.tokens[t];
      const value = document.createElement("span");
      value.className = "value";
      value.textContent = fmt(v.scores[t]);
      const fill = document.createElement("span");
      fill.className = "fill";
      fill.style.width = (12 * Math.abs(v.scores[t]) / max) + "em";
      fill.style.background = color(v.scores[t] >= 0 ? max : -max, max)[0];
      li.append(name, value, fill);
      top.appendChild(li);
    }
  }
  targetSel.addEventListener("change", draw);
  methodSel.addEventListener("change", draw);
  draw();
})();
</script>
</body>
</html>
"""
