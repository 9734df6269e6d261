"""Why did the model say that: a number per input token for one prediction of any task.

    expl = explain("classify", Classifier.from_pretrained(path), "a gripping film")   # Explanation
    save_explanation("why.html", expl)       # or .png, .json; explanation_json(expl) for a route

    roberta explain-prediction "a gripping film" --model runs/sst2/best --out why.html

The methods (x_t: token t's word embedding, (C,); f: the target's score, a scalar function of them):

    ig          integrated gradients (Sundararajan et al. 2017): (x_t - x'_t) · ∫₀¹ ∂f/∂x_t(x' + α(x - x')) dα,
                summed over the hidden dimension. The baseline x' is the <pad> (or <mask>) embedding at
                every non-special position and the input's own embedding at <s>, </s>, <mask> (so those
                get 0); positions are the input's (only word embeddings are interpolated). The integral is
                a quadrature: Gauss-Legendre (default) or a Riemann sum. The attributions add up to
                f(x) - f(x') minus the convergence `delta` (completeness), which is returned and shown.
    grad-input  gradient x input: x_t · ∂f/∂x_t, summed over the hidden dimension (signed).
    saliency    ||∂f/∂x_t||₂, the L2 norm over the hidden dimension (≥ 0: how sensitive, not which way).
    rollout     attention rollout (Abnar & Zuidema 2020): per layer the mean over heads of A, plus I,
                rows normalised; multiplied through the layers (R = Â_L ··· Â_1); the row of the
                position(s) the target reads. The same for every label: attention knows no class.

The target f is a logit (before any softmax), per task:

    classify         a label's logit (default: the predicted label); regression: the output itself
    ner              a tag's logit at one token (default: the first entity's first token, its tag)
    qa               "span": start logit of the answer's first token + end logit of its last
                     (default); "start" or "end": one of them. The context must fit in one window.
    fill-mask        a token's logit at the first <mask> (default: the predicted token)
    multiple-choice  the chosen choice's logit, explaining the pair <s> context </s></s> choice </s>

embed and translate have no single score to explain and are refused.

The model is hooked at its word-embedding layer: its output is replaced by the points on the path,
so the model runs unchanged (Captum's LayerIntegratedGradients works the same way, and a test pins
this to it within 1e-4).

This module reads the task modules (their decoding) and sits beside the entry points that call it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from roberta.atomic import write_text_atomic
from roberta.quantize import Int8Linear
from roberta.tasks import get_task
from roberta.tasks.common import label_names, short
from roberta.tasks.ner import words_of
from roberta.tasks.qa import window_candidates
from roberta.visualize import explanation_figure, explanation_html, token_labels

METHODS = ("ig", "grad-input", "saliency", "rollout")
METHOD_NAMES = {
    "ig": "integrated gradients",
    "grad-input": "gradient × input",
    "saliency": "saliency (|gradient|)",
    "rollout": "attention rollout",
}
RULES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
BASELINES = ("pad", "mask")
MAX_TARGETS = 6  # targets computed besides the one asked for, for the HTML page to switch between

# (S, T, C) points -> (S, K): the K targets' scores at each point
ScoreFn = Callable[[torch.Tensor], torch.Tensor]


# ---- the methods: pure functions of a score function and the input's embeddings ------------------


def quadrature(steps: int, rule: str = "gausslegendre") -> tuple[torch.Tensor, torch.Tensor]:
    """(alphas, weights), each (steps,) float64: ∫₀¹ g(α) dα ≈ Σ weights_i g(alphas_i).

    Gauss-Legendre nodes, or Riemann sums on `steps` points: left (i/n), right ((i+1)/n), middle
    ((i+½)/n) with weight 1/n; trapezoid on linspace(0, 1, n), weights 1/(n-1), halved at the ends.
    (Captum's riemann_trapezoid weights those points 1/n instead, summing to (n-1)/n.)"""
    if rule not in RULES:
        raise ValueError(f"unknown integration rule {rule!r}; choose one of {', '.join(RULES)}")
    if not isinstance(steps, int) or steps < (1 if rule == "gausslegendre" else 2):
        raise ValueError(f"steps must be an int of at least 2, got {steps!r}")
    n = steps
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return torch.from_numpy(0.5 * (1 + nodes)), torch.from_numpy(0.5 * weights)
    i = torch.arange(n, dtype=torch.float64)
    weights = torch.full((n,), 1.0 / n, dtype=torch.float64)
    if rule == "riemann_trapezoid":
        weights = torch.full((n,), 1.0 / (n - 1), dtype=torch.float64)
        weights[[0, -1]] /= 2
        return i / (n - 1), weights
    offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[rule]
    return (i + offset) / n, weights


@dataclass
class IntegratedGradients:
    """attributions (K, T) float64, one row per target; f_input, f_baseline, delta: (K,) float64,
    delta = attributions.sum(-1) - (f_input - f_baseline)."""

    attributions: torch.Tensor
    f_input: torch.Tensor
    f_baseline: torch.Tensor
    delta: torch.Tensor


def integrated_gradients(
    f: ScoreFn,
    x: torch.Tensor,
    baseline: torch.Tensor,
    steps: int = 64,
    rule: str = "gausslegendre",
    batch_size: int = 16,
) -> IntegratedGradients:
    """Integrated gradients of each of f's K outputs with respect to x, along the straight path
    from `baseline` to `x`, summed over the hidden dimension.

    Args:
        f: points (S, T, C) -> scores (S, K), differentiable.
        x, baseline: (T, C), the input's embeddings and the baseline's.
        steps, rule: the quadrature (see `quadrature`).
        batch_size: path points per forward pass.
    """
    alphas, weights = quadrature(steps, rule)
    diff = (x - baseline).detach()  # (T, C)
    total = None  # (K, T, C): Σ weight_i ∂f_k/∂x at point i
    for a, w in zip(alphas.split(batch_size), weights.split(batch_size)):
        a = a.to(x.device, x.dtype)[:, None, None]
        points = (baseline.detach() + a * diff).requires_grad_(True)  # (s, T, C)
        grads = per_target_grads(f(points), points)  # (K, s, T, C)
        part = (grads.double() * w.to(x.device)[None, :, None, None]).sum(1)
        total = part if total is None else total + part
    attributions = (diff.double()[None] * total).sum(-1)  # (K, T)
    with torch.no_grad():
        ends = f(torch.stack([x, baseline]).detach()).double()  # (2, K)
    f_input, f_baseline = ends[0], ends[1]
    delta = attributions.sum(-1) - (f_input - f_baseline)
    return IntegratedGradients(attributions.cpu(), f_input.cpu(), f_baseline.cpu(), delta.cpu())


def per_target_grads(scores: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """scores (S, K) of points (S, T, C) -> (K, S, T, C): ∂scores[:, k]/∂points, one backward each
    (rows of a batch are independent, so the sum's gradient is each row's)."""
    K = scores.shape[1]
    grads = [torch.autograd.grad(scores[:, k].sum(), points, retain_graph=k < K - 1)[0] for k in range(K)]
    return torch.stack(grads)


def gradient_x_input(f: ScoreFn, x: torch.Tensor) -> torch.Tensor:
    """(K, T) float64: x_t · ∂f_k/∂x_t, summed over the hidden dimension. x: (T, C)."""
    point = x.detach()[None].clone().requires_grad_(True)  # (1, T, C)
    grads = per_target_grads(f(point), point)[:, 0]  # (K, T, C)
    return (grads.double() * x.detach().double()).sum(-1).cpu()


def saliency(f: ScoreFn, x: torch.Tensor) -> torch.Tensor:
    """(K, T) float64: ||∂f_k/∂x_t||₂ over the hidden dimension. x: (T, C)."""
    point = x.detach()[None].clone().requires_grad_(True)
    grads = per_target_grads(f(point), point)[:, 0]  # (K, T, C)
    return grads.double().norm(dim=-1).cpu()


def attention_rollout(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    """(T, T) float64: R = Â_L ··· Â_1 with Â_l = rownorm(mean over heads of A_l + I).

    attentions: L tensors (nh, T, T) or (1, nh, T, T), rows summing to 1 (one sequence, no
    padding). Row i of R: how much of token i's final state flows from each input token."""
    if not attentions or any(a is None for a in attentions):
        raise ValueError("no attention weights: run the model with output_attentions=True")
    rollout = None
    for a in attentions:
        a = a.detach().double().cpu()
        a = a[0] if a.dim() == 4 else a  # (nh, T, T)
        mixed = a.mean(0) + torch.eye(a.shape[-1], dtype=torch.float64)  # (T, T): the residual
        mixed = mixed / mixed.sum(-1, keepdim=True)
        rollout = mixed if rollout is None else mixed @ rollout
    return rollout


# ---- the model, hooked at its word embeddings ------------------------------------------------------


def word_embeddings(model: nn.Module) -> nn.Embedding:
    """The word-embedding layer of a task model (model.roberta) or of a bare encoder."""
    return getattr(model, "roberta", model).embeddings.word


def score_function(
    model: nn.Module, input_ids: torch.Tensor, scores: Callable[[nn.Module, torch.Tensor], torch.Tensor]
) -> ScoreFn:
    """points (S, T, C) -> scores(model, input_ids repeated S times) (S, K), with the word-embedding
    layer's output replaced by the points: positions and token types stay the input's."""
    layer = word_embeddings(model)

    def f(points: torch.Tensor) -> torch.Tensor:
        handle = layer.register_forward_hook(lambda module, args, out: points.to(out.dtype))
        try:
            return scores(model, input_ids.expand(points.shape[0], -1))
        finally:
            handle.remove()

    return f


# ---- what is explained, per task -------------------------------------------------------------------


@dataclass
class Case:
    """One input of a task, encoded, with its prediction and the targets that can be explained.

    targets[0] is the one asked for; rows[k]: the positions target k reads (rollout averages their
    rows); notes[k]: what f is, for a person. scores(model, input_ids (S, T)) -> (S, K), column k =
    targets[k]; run(model, input_ids, **kw) -> the model's output (rollout asks for attentions)."""

    inputs: list[str]
    encoding: Any  # the tokenizer's output for this one input (offsets, special tokens mask)
    prediction: str
    score: float
    targets: list[str]
    rows: list[list[int]]
    notes: list[str]
    scores: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    run: Callable[..., Any] = lambda model, ids, **kw: model(ids, **kw)


def _pick(targets: list[str], wanted: str | None, default: int, what: str, k_max: int = MAX_TARGETS):
    """The indices to compute: the wanted target's (or `default`) first, then the others, at most
    k_max + 1. ValueError listing the targets for an unknown name."""
    if wanted is None:
        first = default
    elif wanted in targets:
        first = targets.index(wanted)
    else:
        raise ValueError(f"unknown target {wanted!r}; {what}: {', '.join(targets)}")
    return [first] + [i for i in range(len(targets)) if i != first][:k_max]


def _no_token_index(task: str, token_index: int | None) -> None:
    if token_index is not None:
        raise ValueError(f"token_index (--token-index) picks a token for ner; {task} has none to pick")


def _text(inputs: Any, task: str) -> str:
    if not isinstance(inputs, str):
        raise TypeError(f"{task} explains one text (a str), got {type(inputs).__name__}")
    return inputs


def _token_name(case_tokens: list[str], t: int) -> str:
    return f"“{case_tokens[t]}” (token {t})"


def classify_case(predictor: Any, inputs: Any, target: str | None, token_index: int | None) -> Case:
    _no_token_index("classify", token_index)
    text = _text(inputs, "classify")
    enc = predictor.encode([text])
    result = predictor.classify(text)
    names, kind = label_names(predictor.model.config), predictor.problem_type
    if kind == "regression":  # one output {"label", "score"}, or several {"scores": {name: value}}
        values = result.get("scores", {result.get("label"): result.get("score")})
        prediction = ", ".join(f"{k} = {v:.4g}" for k, v in values.items())
        score, order = next(iter(values.values())), list(range(len(names)))
    else:
        probs = result["scores"]
        order = sorted(range(len(names)), key=lambda i: -probs[names[i]])
        prediction = result["label"] if "label" in result else ", ".join(result["labels"]) or "(none)"
        score = result["score"] if "score" in result else max(probs.values())
    ranked = [names[i] for i in order]
    keep = [order[i] for i in _pick(ranked, target, 0, "the model's labels are")]
    columns = torch.tensor(keep)
    return Case(
        [text], enc, prediction, score, [names[i] for i in keep], [[0] for _ in keep],
        [f"f = the {'output' if kind == 'regression' else 'logit'} of “{names[i]}”" for i in keep],
        lambda model, ids: model(ids).logits[:, columns.to(ids.device)].float(),
    )  # fmt: skip


def ner_case(predictor: Any, inputs: Any, target: str | None, token_index: int | None) -> Case:
    text = _text(inputs, "ner")
    enc = predictor.encode([text])
    ids, special = enc["input_ids"][0], enc["special_tokens_mask"][0]
    names, tokens = label_names(predictor.model.config), token_labels(predictor.tokenizer, ids)
    with torch.no_grad():
        probs = predictor.model(torch.tensor([ids], device=predictor.device)).logits[0].float().softmax(-1)
    tags = probs.argmax(-1).tolist()  # (T,)
    firsts = [w[0] for w in words_of(text, enc["offset_mapping"][0], special)]  # a word's first token
    entities = [t for t in firsts if names[tags[t]] != "O"]
    if token_index is None:
        token_index = entities[0] if entities else (firsts[0] if firsts else 0)
    elif not 0 <= token_index < len(ids) or special[token_index]:
        real = [t for t in range(len(ids)) if not special[t]]
        raise ValueError(
            f"token_index must be a text token, {real[0]}..{real[-1]} (0 is <s>), got {token_index}"
        )
    tag = target if target is not None else names[tags[token_index]]
    if tag not in names:
        raise ValueError(f"unknown target {tag!r}; the model's tags are {', '.join(names)}")
    pairs = [(token_index, names.index(tag))]
    pairs += [(t, tags[t]) for t in entities if t != token_index][:MAX_TARGETS]
    at = torch.tensor([t for t, _ in pairs]), torch.tensor([c for _, c in pairs])
    t0 = token_index
    return Case(
        [text], enc, f"{names[tags[t0]]} at {_token_name(tokens, t0)}", probs[t0, tags[t0]].item(),
        [f"{names[c]} at {_token_name(tokens, t)}" for t, c in pairs], [[t] for t, _ in pairs],
        [f"f = the logit of {names[c]} at {_token_name(tokens, t)}" for t, c in pairs],
        lambda model, ids: model(ids).logits[:, at[0].to(ids.device), at[1].to(ids.device)].float(),
    )  # fmt: skip


def qa_case(predictor: Any, inputs: Any, target: str | None, token_index: int | None) -> Case:
    _no_token_index("qa", token_index)
    if not (
        isinstance(inputs, (tuple, list)) and len(inputs) == 2 and all(isinstance(s, str) for s in inputs)
    ):
        raise TypeError("qa explains one (question, context) pair of strings")
    question, context = inputs
    window = predictor.max_length
    enc = predictor.tokenizer(
        [question], [context], truncation="only_second", max_length=window,
        return_offsets_mapping=True, return_special_tokens_mask=True,
    )  # fmt: skip
    if enc.encodings[0].overflowing:
        raise ValueError(
            f"the question and context take more than one window of {window} tokens; explain a "
            "shorter context (cut it to the passage that holds the answer)"
        )
    ids = enc["input_ids"][0]
    types = _token_types(enc, predictor.device)  # BERT's: 1 on the context
    with torch.no_grad():
        out = predictor.model(torch.tensor([ids], device=predictor.device), **types)
    start, end = out.start_logits[0].float().cpu(), out.end_logits[0].float().cpu()
    in_context = torch.tensor([s == 1 for s in enc.encodings[0].sequence_ids])
    found = window_candidates(start, end, in_context, 1, 30)
    if not found:
        raise ValueError("the model finds no answer span in this context")
    p, first, last = found[0]
    offsets = enc["offset_mapping"][0]
    answer = context[offsets[first][0] : offsets[last][1]]
    tokens = token_labels(predictor.tokenizer, ids)
    names = ["span", "start", "end"]
    order = _pick(names, target, 0, "qa explains")
    notes = {
        "span": f"f = start logit at {_token_name(tokens, first)} + end logit at {_token_name(tokens, last)}",
        "start": f"f = start logit at {_token_name(tokens, first)}",
        "end": f"f = end logit at {_token_name(tokens, last)}",
    }
    rows = {"span": [first, last], "start": [first], "end": [last]}

    def scores(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        o = model(ids, **types)
        s, e = o.start_logits[:, first].float(), o.end_logits[:, last].float()
        every = {"span": s + e, "start": s, "end": e}
        return torch.stack([every[names[i]] for i in order], dim=1)  # (S, K)

    chosen = [names[i] for i in order]
    return Case(
        [question, context],
        enc,
        answer,
        p,
        chosen,
        [rows[n] for n in chosen],
        [notes[n] for n in chosen],
        scores,
        lambda model, ids, **kw: model(ids, **types, **kw),
    )


def _token_types(enc: Any, device: torch.device) -> dict[str, torch.Tensor]:
    """{"token_type_ids": (1, T)} of a one-row encoding whose family has them (BERT), else {}: the
    model adds the one row of types to every row of ids it is given."""
    if "token_type_ids" not in enc:
        return {}
    return {"token_type_ids": torch.tensor(enc["token_type_ids"][:1], device=device)}


def fill_mask_case(predictor: Any, inputs: Any, target: str | None, token_index: int | None) -> Case:
    _no_token_index("fill-mask", token_index)
    text = _text(inputs, "fill-mask")
    predictions = predictor.fill_mask(text, top_k=MAX_TARGETS)  # checks the text has a <mask>
    first_mask = predictions[0] if isinstance(predictions[0], list) else predictions
    enc = predictor.encode([text])
    m = enc["input_ids"][0].index(predictor.tokenizer.mask_token_id)
    names = [p["token_str"].strip() or p["token_str"] for p in first_mask]
    ids = [p["token"] for p in first_mask]
    if target is not None and target not in names:
        vocab = predictor.tokenizer.get_vocab()
        tid = vocab.get("Ġ" + target, vocab.get(target))
        if tid is None:
            raise ValueError(
                f"target {target!r} is not one token of the vocabulary; name a single token, e.g. one of "
                f"the model's top predictions: {', '.join(names)}"
            )
        names, ids = [target, *names], [tid, *ids]
    order = _pick(names, target, 0, "the top predictions are")
    chosen = torch.tensor([ids[i] for i in order])
    at = f"<mask> (token {m})"
    return Case(
        [text], enc, first_mask[0]["token_str"].strip(), first_mask[0]["score"], [names[i] for i in order],
        [[m] for _ in order],
        [f"f = the logit of “{names[i]}” at the {at}" for i in order],
        lambda model, ids: model.lm_head(model.roberta(ids).last_hidden_state[:, m])[:, chosen.to(ids.device)].float(),
    )  # fmt: skip


def multiple_choice_case(predictor: Any, inputs: Any, target: str | None, token_index: int | None) -> Case:
    _no_token_index("multiple-choice", token_index)
    ok = isinstance(inputs, (tuple, list)) and len(inputs) == 2 and isinstance(inputs[0], str)
    if not ok or not isinstance(inputs[1], (list, tuple)) or len(inputs[1]) < 2:
        raise TypeError("multiple-choice explains one (context, [two or more choices]) pair")
    context, choices = inputs[0], list(inputs[1])
    result = predictor.choose(context, choices)
    names = [f"choice {k}: {short(c, 40)}" for k, c in enumerate(choices)]
    if target is None:
        k = result["label"]
    elif target.isdigit() and int(target) < len(choices):
        k = int(target)
    elif target in choices:
        k = choices.index(target)
    else:
        raise ValueError(
            f"unknown target {target!r}; name a choice by its index 0..{len(choices) - 1} or its text"
        )
    enc = predictor.tokenizer(
        [context], [choices[k]], truncation=True, max_length=predictor.max_length,
        return_offsets_mapping=True, return_special_tokens_mask=True,
    )  # fmt: skip
    types = {k: v[:, None] for k, v in _token_types(enc, predictor.device).items()}  # (1, 1, T)
    return Case(
        [context, choices[k]], enc, choices[result["label"]], result["score"], [names[k]], [[0]],
        [f"f = the logit of {names[k]} (the pair <s> context </s></s> choice {k} </s>)"],
        lambda model, ids: model(ids[:, None], **types).logits[:, :1].float(),
        lambda model, ids, **kw: model(ids[:, None], **types, **kw),
    )  # fmt: skip


CASES: dict[str, Callable[..., Case]] = {
    "classify": classify_case,
    "ner": ner_case,
    "qa": qa_case,
    "fill-mask": fill_mask_case,
    "multiple-choice": multiple_choice_case,
}
REFUSED = {
    "embed": "embed makes a vector, not a prediction with a score to explain",
    "translate": "translate writes a sequence, not one prediction with a score to explain",
}


def check_task(task_name: str) -> Callable[..., Case]:
    """The case builder of a task; ValueError for an unknown task or one with nothing to explain."""
    get_task(task_name)  # a ValueError listing the tasks for an unknown name
    if task_name not in CASES:
        why = REFUSED.get(task_name, f"{task_name} has no target defined here")
        raise ValueError(f"{why}; explain-prediction explains {', '.join(CASES)}")
    return CASES[task_name]


# ---- the explanation -------------------------------------------------------------------------------


@dataclass
class Attribution:
    """One method's number per token for one target. delta, f_baseline: integrated gradients only;
    f_input: the target's score at the input (not rollout)."""

    method: str
    target: str
    scores: list[float]
    delta: float | None = None
    f_input: float | None = None
    f_baseline: float | None = None


@dataclass
class Explanation:
    """Why a model predicted what it did, for one input.

    input_ids, tokens: the T token ids and their labels; offsets: each token's (start, end) characters in inputs[segments[t]]
    (segments[t] None for special tokens); attributions: T numbers of `method` for `target`
    (positive: pushes f up); delta: the convergence delta (ig) or None; rows: the tokens whose output
    f reads; views: every (method, target) computed, the explained one first (what the HTML page
    switches between)."""

    task: str
    inputs: list[str]
    input_ids: list[int]
    tokens: list[str]
    offsets: list[tuple[int, int]]
    segments: list[int | None]
    special: list[bool]
    prediction: str
    score: float
    target: str
    method: str
    attributions: list[float]
    delta: float | None
    rows: list[int]
    note: str
    steps: int
    rule: str
    baseline: str
    views: list[Attribution] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
    target_rows: dict[str, list[int]] = field(default_factory=dict)


def explain(
    task_name: str,
    predictor: Any,
    inputs: Any,
    target: str | None = None,
    method: str = "ig",
    steps: int = 64,
    *,
    rule: str = "gausslegendre",
    baseline: str = "pad",
    token_index: int | None = None,
    views: bool = True,
    batch_size: int = 16,
) -> Explanation:
    """Explain the prediction of `predictor` (the task's Predictor) on one input.

    Args:
        task_name: a registered task (classify, ner, qa, fill-mask, multiple-choice).
        inputs: what the task's command reads for one item: a text; qa (question, context);
            multiple-choice (context, [choices]).
        target: what to explain (see the module docstring); None: the prediction.
        method: ig, grad-input, saliency or rollout.
        steps, rule, baseline: integrated gradients' path points, quadrature and baseline token.
        token_index: ner only, the token whose tag is explained (0 is <s>).
        views: also compute every other method and up to MAX_TARGETS other targets, for the page.
    """
    case_of = check_task(task_name)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; choose pad or mask")
    quadrature(steps, rule)  # check them before any work
    if any(isinstance(m, Int8Linear) for m in predictor.model.modules()):
        raise ValueError("explanations need gradients, which int8 layers have not: load the model in fp32")
    case = case_of(predictor, inputs, target, token_index)
    if not views:
        case = _first_target_only(case)
    methods = METHODS if views else (method,)
    computed = _attribute(predictor, case, methods, steps, rule, baseline, batch_size)
    computed.sort(key=lambda a: (a.method != method, a.target != case.targets[0]))
    first = computed[0]
    enc = case.encoding
    ids = enc["input_ids"][0]
    segments = enc.encodings[0].sequence_ids
    return Explanation(
        task_name, case.inputs, list(ids), token_labels(predictor.tokenizer, ids),
        [tuple(o) for o in enc["offset_mapping"][0]], segments, special_tokens(case, predictor.tokenizer),
        case.prediction, float(case.score), first.target, method, first.scores, first.delta,
        case.rows[0], case.notes[0], steps, rule, baseline, computed,
        dict(zip(case.targets, case.notes)), dict(zip(case.targets, case.rows)),
    )  # fmt: skip


def special_tokens(case: Case, tokenizer: Any) -> list[bool]:
    """Per token: whether it is special (<s>, </s>, <mask>, ...), kept as it is in the baseline."""
    masks = zip(case.encoding["special_tokens_mask"][0], case.encoding["input_ids"][0])
    return [bool(s) or i == tokenizer.mask_token_id for s, i in masks]


def _first_target_only(case: Case) -> Case:
    scores = case.scores
    return dataclasses.replace(
        case, targets=case.targets[:1], rows=case.rows[:1], notes=case.notes[:1],
        scores=lambda model, ids: scores(model, ids)[:, :1],
    )  # fmt: skip


def _attribute(
    predictor: Any, case: Case, methods: Sequence[str], steps: int, rule: str, baseline: str, batch_size: int
) -> list[Attribution]:
    """Every method of `methods` for every target of the case."""
    model, tok = predictor.model, predictor.tokenizer
    was_training = model.training
    model.eval()
    ids = torch.tensor([case.encoding["input_ids"][0]], device=predictor.device)  # (1, T)
    special = torch.tensor(special_tokens(case, tok), device=ids.device)
    base_id = tok.pad_token_id if baseline == "pad" else tok.mask_token_id
    base_ids = torch.where(special, ids[0], torch.full_like(ids[0], base_id))  # (T,)
    out: list[Attribution] = []
    try:
        with torch.inference_mode(False), torch.enable_grad():
            layer = word_embeddings(model)
            x, x0 = layer(ids[0]).detach(), layer(base_ids).detach()  # (T, C) each
            f = score_function(model, ids, case.scores)
            with torch.no_grad():
                f_x = f(x[None])[0].double().cpu()  # (K,)
            for method in methods:
                out += _one_method(method, model, ids, case, f, x, x0, f_x, steps, rule, batch_size)
    finally:
        model.train(was_training)
    return out


def _one_method(method, model, ids, case, f, x, x0, f_x, steps, rule, batch_size) -> list[Attribution]:
    """One method's Attribution for each target of the case."""
    if method == "rollout":
        with torch.no_grad():
            attentions = case.run(model, ids, output_attentions=True).attentions
        r = attention_rollout(attentions)  # (T, T)
        return [Attribution(method, t, r[rows].mean(0).tolist()) for t, rows in zip(case.targets, case.rows)]
    if method == "ig":
        ig = integrated_gradients(f, x, x0, steps, rule, batch_size)
        return [
            Attribution(method, t, ig.attributions[k].tolist(), ig.delta[k].item(), ig.f_input[k].item(),
                        ig.f_baseline[k].item())
            for k, t in enumerate(case.targets)
        ]  # fmt: skip
    values = gradient_x_input(f, x) if method == "grad-input" else saliency(f, x)  # (K, T)
    return [
        Attribution(method, t, values[k].tolist(), None, f_x[k].item()) for k, t in enumerate(case.targets)
    ]


# ---- output: JSON, HTML, PNG -----------------------------------------------------------------------


def explanation_json(expl: Explanation) -> dict[str, Any]:
    """The explanation as JSON-able data (what --json prints, the page embeds and a route returns)."""
    data = dataclasses.asdict(expl)
    data["offsets"] = [list(o) for o in expl.offsets]
    data["method_names"] = {m: METHOD_NAMES[m] for m in METHODS}
    return json.loads(json.dumps(data, allow_nan=False, default=float))


def save_explanation(path: str | os.PathLike, expl: Explanation, title: str | None = None) -> Path:
    """Write `expl` as .html (the page: every view, switchable), .png (the explained view as bars)
    or .json, by the suffix; atomically. Returns the path."""
    path = Path(path)
    suffix = path.suffix.lower()
    data = explanation_json(expl)
    if suffix == ".json":
        write_text_atomic(path, json.dumps(data, ensure_ascii=False, indent=1) + "\n")
        return path
    if suffix in (".html", ".htm"):
        write_text_atomic(path, explanation_html(data, title))
        return path
    if suffix == ".png":
        fig = explanation_figure(data, title)
        from roberta.atomic import atomic_file

        with atomic_file(path) as tmp:
            fig.savefig(str(tmp), dpi=100, format="png")
        return path
    raise ValueError(f"cannot tell the format of {str(path)!r}: name the file .html, .png or .json")
