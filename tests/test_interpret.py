"""Token attributions (roberta/interpret.py): integrated gradients pinned to Captum's
LayerIntegratedGradients, completeness, gradient x input and saliency pinned to Captum's layer
gradients, attention rollout pinned to a float64 formula, a sanity check on a classifier trained here
to follow one word, every task's target, and the `roberta explain-prediction` command."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from roberta import interpret
from roberta.cli import main
from roberta.collate import pad_batch
from roberta.config import RobertaConfig
from roberta.heads import (
    RobertaForMaskedLM,
    RobertaForMultipleChoice,
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
)
from roberta.model import position_ids_from_input_ids
from roberta.tasks import TASKS, Classifier, FillMask, MultipleChoice, QuestionAnswerer, Tagger
from roberta.tokenizer import Tokenizer

captum_attr = pytest.importorskip("captum.attr", reason="captum is a test dependency (pip install captum)")

# initializer_range 0.3: a random model whose logits move with its input, so attributions are not ~0
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=66, initializer_range=0.3)  # fmt: skip
FILLER = (
    "cat dog house tree river green small walks the a red blue old city car book sun moon bird road".split()
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and leave the machine's other core alone)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok(data_dir) -> Tokenizer:
    return Tokenizer.from_pretrained(data_dir / "roberta-base-tokenizer")


def tiny(cls, seed: int = 0, **config):
    torch.manual_seed(seed)
    return cls(RobertaConfig(**{**TINY, **config})).eval()


@pytest.fixture(scope="module")
def predictors(tok) -> dict:
    """task -> (a predictor on a tiny random model, one input, a target)."""
    return {
        "classify": (Classifier(tiny(RobertaForSequenceClassification, id2label={0: "neg", 1: "pos"}), tok),
                     "a gripping film about the sea", "pos"),
        "ner": (Tagger(tiny(RobertaForTokenClassification, id2label={0: "O", 1: "B-PER", 2: "I-PER"}), tok),
                "Angela Merkel visited Paris.", "B-PER"),
        "qa": (QuestionAnswerer(tiny(RobertaForQuestionAnswering), tok),
               ("Who visited Paris?", "Angela Merkel visited Paris in May."), "span"),
        "fill-mask": (FillMask(tiny(RobertaForMaskedLM), tok), "Paris is the <mask> of France.", "capital"),
        "multiple-choice": (MultipleChoice(tiny(RobertaForMultipleChoice), tok),
                            ("The sky is", ["blue.", "green."]), "1"),
    }  # fmt: skip


def captum_forward(task: str, model, expl: interpret.Explanation, tok: Tokenizer):
    """(forward(input_ids (S, T)) -> (S, N), target column) for Captum: the same f as `expl`'s, with
    the positions of the real input passed explicitly, so that the baseline's <pad> ids do not move
    them (Captum runs the forward on the baseline ids for its delta)."""
    ids = torch.tensor([expl.input_ids])
    pos = position_ids_from_input_ids(ids, tok.pad_token_id)
    run = lambda i: model(i, position_ids=pos.expand(i.shape[0], -1))  # noqa: E731
    labels = model.config.id2label or {}
    if task == "classify":
        return (lambda i: run(i).logits), {v: k for k, v in labels.items()}[expl.target]
    if task == "ner":
        return (lambda i: run(i).logits[:, expl.rows[0]]), {v: k for k, v in labels.items()}[
            expl.target.split()[0]
        ]
    if task == "qa":
        first, last = expl.rows

        def span(i: torch.Tensor) -> torch.Tensor:  # one forward: Captum's layer hooks see one output
            out = run(i)
            return (out.start_logits[:, first] + out.end_logits[:, last])[:, None]

        return span, 0
    if task == "fill-mask":
        return (lambda i: run(i).logits[:, expl.rows[0]]), tok.convert_tokens_to_ids("Ġ" + expl.target)
    run_pair = lambda i: model(i[:, None], position_ids=pos.expand(i.shape[0], -1))  # noqa: E731
    return (lambda i: run_pair(i).logits), 0


def captum_ig(task, predictor, expl, rule: str, steps: int = 64, baseline_id: int | None = None):
    """Captum's LayerIntegratedGradients on the word-embedding layer, summed over the hidden dim."""
    model, tok = predictor.model, predictor.tokenizer
    forward, column = captum_forward(task, model, expl, tok)
    ids = torch.tensor([expl.input_ids])
    fill = tok.pad_token_id if baseline_id is None else baseline_id
    base = torch.where(torch.tensor([expl.special]), ids, torch.full_like(ids, fill))
    lig = captum_attr.LayerIntegratedGradients(forward, interpret.word_embeddings(model))
    a, delta = lig.attribute(
        ids, base, target=column, n_steps=steps, method=rule, return_convergence_delta=True
    )
    return a.sum(-1)[0].double(), delta.item()


# ---- integrated gradients ---------------------------------------------------------------------------


def test_quadrature_rules_integrate_and_match_captums_points():
    from captum.attr._utils.approximation_methods import approximation_parameters

    for rule in interpret.RULES:
        alphas, weights = interpret.quadrature(64, rule)
        assert weights.sum().item() == pytest.approx(1.0, abs=1e-12)
        assert (alphas >= 0).all() and (alphas <= 1).all()
        error = 1e-2 if rule in ("riemann_left", "riemann_right") else 1e-4  # first order, or better
        assert (weights * alphas**3).sum().item() == pytest.approx(0.25, abs=error)  # ∫ α³ = 1/4
        steps, points = approximation_parameters(rule)
        np.testing.assert_allclose(alphas, points(64), atol=1e-7)
        # Captum weights trapezoid points 1/n, not 1/(n-1): its sums add up to (n-1)/n
        scale = 63 / 64 if rule == "riemann_trapezoid" else 1.0
        np.testing.assert_allclose(weights * scale, steps(64), atol=1e-12)
    with pytest.raises(ValueError, match="choose one of gausslegendre"):
        interpret.quadrature(8, "simpson")
    with pytest.raises(ValueError, match="steps must be an int of at least 2"):
        interpret.quadrature(1, "riemann_left")


@pytest.mark.parametrize("task", ["classify", "ner", "qa", "fill-mask", "multiple-choice"])
def test_ig_equals_captum_layer_integrated_gradients(task, predictors):
    predictor, inputs, target = predictors[task]
    kw = dict(token_index=3) if task == "ner" else {}
    expl = interpret.explain(task, predictor, inputs, target, "ig", 64, views=False, **kw)
    ours = torch.tensor(expl.attributions)
    theirs, delta = captum_ig(task, predictor, expl, "gausslegendre")
    assert ours.abs().max() > 1e-2  # not a comparison of zeros
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    assert expl.delta == pytest.approx(delta, abs=1e-4)
    special = np.array(expl.special)
    assert np.all(ours.numpy()[special] == 0)  # special tokens are the baseline's too


@pytest.mark.parametrize("rule", interpret.RULES)
def test_ig_equals_captum_for_every_rule_on_random_and_trained_models(rule, predictors, lion):
    for predictor, text in (
        (predictors["classify"][0], "a gripping film about the sea"),
        (lion, "a lion walks"),
    ):
        target = predictor.model.config.id2label[1]
        expl = interpret.explain("classify", predictor, text, target, "ig", 64, rule=rule, views=False)
        theirs, _ = captum_ig("classify", predictor, expl, rule)
        scale = 63 / 64 if rule == "riemann_trapezoid" else 1.0  # Captum's trapezoid (see quadrature)
        np.testing.assert_allclose(np.array(expl.attributions) * scale, theirs, atol=1e-4)


def test_ig_with_the_mask_baseline_equals_captum(predictors):
    predictor, text, target = predictors["classify"]
    expl = interpret.explain("classify", predictor, text, target, "ig", 32, baseline="mask", views=False)
    theirs, delta = captum_ig(
        "classify", predictor, expl, "gausslegendre", 32, predictor.tokenizer.mask_token_id
    )
    np.testing.assert_allclose(expl.attributions, theirs, atol=1e-4)
    assert expl.baseline == "mask" and expl.delta == pytest.approx(delta, abs=1e-4)


def test_completeness_at_64_steps(predictors, lion):
    cases = [(predictors["classify"][0], "a gripping film about the sea"), (lion, "a red lion walks")]
    cases += [(lion, " ".join(random.Random(k).choices(FILLER, k=8))) for k in range(3)]
    for predictor, text in cases:
        for label in predictor.model.config.id2label.values():
            view = interpret.explain("classify", predictor, text, label, "ig", 64, views=False).views[0]
            gap = view.f_input - view.f_baseline
            assert sum(view.scores) - gap == pytest.approx(view.delta, abs=1e-6)
            assert abs(view.delta) < 1e-2 * abs(gap), (text, label, view.delta, gap)


def test_the_baseline_keeps_the_inputs_positions(predictors):
    """f(baseline) is the model on <pad> ids at the real input's positions, not at padding's."""
    predictor, text, target = predictors["classify"]
    view = interpret.explain("classify", predictor, text, target, "ig", 8, views=False).views[0]
    ids = torch.tensor([predictor.encode([text])["input_ids"][0]])
    special = torch.tensor([predictor.encode([text])["special_tokens_mask"][0]]).bool()
    base = torch.where(special, ids, torch.full_like(ids, 1))
    with torch.no_grad():
        at_input_positions = predictor.model(base, position_ids=position_ids_from_input_ids(ids, 1)).logits
        at_pad_positions = predictor.model(base).logits
    assert view.f_baseline == pytest.approx(at_input_positions[0, 1].item(), abs=1e-5)
    assert abs(view.f_baseline - at_pad_positions[0, 1].item()) > 1e-3


# ---- gradient x input, saliency, rollout --------------------------------------------------------------


@pytest.mark.parametrize("method", ["grad-input", "saliency"])
def test_gradient_methods_equal_captums_layer_gradients(method, predictors):
    for task in ("classify", "qa"):
        predictor, inputs, target = predictors[task]
        expl = interpret.explain(task, predictor, inputs, target, method, views=False)
        forward, column = captum_forward(task, predictor.model, expl, predictor.tokenizer)
        layer = captum_attr.LayerGradientXActivation(
            forward, interpret.word_embeddings(predictor.model), multiply_by_inputs=method == "grad-input"
        )
        g = layer.attribute(torch.tensor([expl.input_ids]), target=column)[0].detach().double()  # (T, C)
        expected = g.sum(-1) if method == "grad-input" else g.norm(dim=-1)
        assert expected.abs().max() > 1e-3
        np.testing.assert_allclose(expl.attributions, expected, atol=1e-5)
        assert method != "saliency" or min(expl.attributions) >= 0


def rollout_float64(attentions) -> np.ndarray:
    """Abnar & Zuidema's formula, written out: Â = (mean_h A + I) / row sums; R = Â_L ··· Â_1."""
    T = attentions[0].shape[-1]
    R = np.eye(T)
    for a in attentions:
        a = a[0].double().numpy()  # (nh, T, T)
        mixed = np.zeros((T, T))
        for i in range(T):
            for j in range(T):
                mixed[i, j] = sum(a[h, i, j] for h in range(a.shape[0])) / a.shape[0] + (i == j)
            mixed[i] /= mixed[i].sum()
        R = mixed @ R
    return R


def test_rollout_equals_the_formula_in_float64(predictors):
    for task in ("classify", "ner", "multiple-choice"):
        predictor, inputs, target = predictors[task]
        expl = interpret.explain(task, predictor, inputs, target, "rollout", views=False)
        ids = torch.tensor([expl.input_ids])
        with torch.no_grad():
            model_in = ids[:, None] if task == "multiple-choice" else ids
            attentions = predictor.model(model_in, output_attentions=True).attentions
        R = rollout_float64(attentions)
        np.testing.assert_allclose(interpret.attention_rollout(attentions).numpy(), R, atol=1e-12)
        np.testing.assert_allclose(expl.attributions, R[expl.rows].mean(0), atol=1e-12)
        assert np.all(R >= 0) and np.allclose(R.sum(-1), 1)


def test_rollout_of_one_uniform_layer_is_identity_plus_attention_over_two():
    for T in (4, 8, 7):
        uniform = torch.full((1, 3, T, T), 1.0 / T, dtype=torch.float64)
        expected = (torch.eye(T, dtype=torch.float64) + uniform[0, 0].double()) / 2
        got = interpret.attention_rollout([uniform])
        if T in (4, 8):  # 1/T is exact in binary: so is every step
            assert torch.equal(got, expected)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="output_attentions=True"):
        interpret.attention_rollout([None])


# ---- the sanity check: a classifier that follows one word ---------------------------------------------


def lion_text(rng: random.Random, lion: bool) -> str:
    words = [rng.choice(FILLER) for _ in range(rng.randint(4, 9))]
    if lion:
        words.insert(rng.randint(0, len(words)), "lion")
    return " ".join(words)


@pytest.fixture(scope="module")
def lion(tmp_path_factory) -> Classifier:
    """A tiny classifier trained here (100 steps, a few seconds): label "lion" iff the word "lion"
    is among random filler words. A BPE trained on these words makes each one token."""
    corpus = tmp_path_factory.mktemp("lion") / "words.txt"
    corpus.write_text("\n".join([" ".join([*FILLER, "lion"])] * 5), encoding="utf-8")
    tok = Tokenizer.train([corpus], vocab_size=400, add_prefix_space=True)
    rng = random.Random(0)
    model = tiny(RobertaForSequenceClassification, vocab_size=len(tok), id2label={0: "other", 1: "lion"})
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(100):
        labels = [rng.random() < 0.5 for _ in range(32)]
        enc = tok([lion_text(rng, y) for y in labels])
        batch = pad_batch([{"input_ids": ids} for ids in enc["input_ids"]], {"input_ids": tok.pad_token_id})
        loss = model(batch["input_ids"], batch["attention_mask"], labels=torch.tensor(labels).long()).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return Classifier(model.eval(), tok)


def test_the_deciding_word_gets_the_largest_attribution(lion):
    rng = random.Random(1)
    texts = [lion_text(rng, True) for _ in range(40)]
    assert [r["label"] for r in lion.classify(texts)] == ["lion"] * 40  # it learned the task
    assert [r["label"] for r in lion.classify([lion_text(rng, False) for _ in range(20)])] == ["other"] * 20
    hits = 0
    for text in texts:
        expl = interpret.explain("classify", lion, text, "lion", "ig", 32, views=False)
        text_tokens = [t for t in range(len(expl.tokens)) if not expl.special[t]]
        hits += expl.tokens[max(text_tokens, key=lambda t: expl.attributions[t])] == "lion"
    assert hits / len(texts) >= 0.9


# ---- targets and errors ---------------------------------------------------------------------------------


def test_every_task_has_a_target_or_a_reason(predictors, tok):
    for task in TASKS:
        assert task in interpret.CASES or task in interpret.REFUSED
    for task, (predictor, inputs, _) in predictors.items():
        expl = interpret.explain(task, predictor, inputs, steps=8)
        assert expl.method == "ig" and len(expl.attributions) == len(expl.tokens) == len(expl.input_ids)
        assert {v.method for v in expl.views} == set(interpret.METHODS)
        assert (expl.views[0].method, expl.views[0].target) == ("ig", expl.target)
        assert expl.target in expl.notes and expl.rows == expl.target_rows[expl.target]


def test_targets_per_task(predictors):
    predictor, text, _ = predictors["classify"]
    expl = interpret.explain("classify", predictor, text, steps=8)
    assert expl.target == expl.prediction and {v.target for v in expl.views} == {"neg", "pos"}
    assert expl.rows == [0] and expl.notes["pos"] == "f = the logit of “pos”"

    tagger, text, _ = predictors["ner"]
    expl = interpret.explain("ner", tagger, text, "I-PER", token_index=5, steps=8)
    assert expl.tokens[5] == "Paris" and expl.rows == [5] and expl.target == "I-PER at “Paris” (token 5)"

    qa, pair, _ = predictors["qa"]
    span = interpret.explain("qa", qa, pair, steps=8)
    first, last = span.rows
    assert span.target == "span" and first <= last and span.segments[first] == span.segments[last] == 1
    start, end = span.offsets[first][0], span.offsets[last][1]
    assert pair[1][start:end] == span.prediction
    assert interpret.explain("qa", qa, pair, "end", steps=8).rows == [last]

    fill, text, _ = predictors["fill-mask"]
    expl = interpret.explain("fill-mask", fill, text, "capital", steps=8)
    assert expl.target == "capital" and expl.tokens[expl.rows[0]] == "<mask>"
    assert expl.prediction == fill.fill_mask(text, top_k=1)[0]["token_str"].strip()

    choose, item, _ = predictors["multiple-choice"]
    expl = interpret.explain("multiple-choice", choose, item, "green.", steps=8)
    assert expl.inputs == ["The sky is", "green."] and expl.target == "choice 1: green."


def test_user_errors_say_what_to_do(predictors):
    classifier, text, _ = predictors["classify"]
    with pytest.raises(ValueError, match="unknown target 'happy'; the model's labels are pos, neg|neg, pos"):
        interpret.explain("classify", classifier, text, "happy")
    with pytest.raises(ValueError, match="unknown method 'lime'; choose one of ig, grad-input"):
        interpret.explain("classify", classifier, text, method="lime")
    with pytest.raises(ValueError, match="--token-index\\) picks a token for ner"):
        interpret.explain("classify", classifier, text, token_index=2)
    with pytest.raises(ValueError, match="unknown task 'sentiment'"):
        interpret.explain("sentiment", classifier, text)
    with pytest.raises(ValueError, match="embed makes a vector"):
        interpret.explain("embed", classifier, text)
    with pytest.raises(ValueError, match="translate writes a sequence"):
        interpret.explain("translate", classifier, text)
    tagger, text, _ = predictors["ner"]
    with pytest.raises(ValueError, match="token_index must be a text token, 1..6 \\(0 is <s>\\), got 0"):
        interpret.explain("ner", tagger, text, token_index=0)
    with pytest.raises(ValueError, match="the model's tags are O, B-PER, I-PER"):
        interpret.explain("ner", tagger, text, "PER")
    fill, text, _ = predictors["fill-mask"]
    with pytest.raises(ValueError, match="not one token of the vocabulary"):
        interpret.explain("fill-mask", fill, text, "zebra")
    with pytest.raises(ValueError, match="has no <mask>"):
        interpret.explain("fill-mask", fill, "no mask here")
    qa, (question, _), _ = predictors["qa"]
    with pytest.raises(ValueError, match="more than one window of 64 tokens"):
        interpret.explain("qa", qa, (question, "word " * 100))


# ---- files and the command --------------------------------------------------------------------------------


def test_saved_files_by_suffix(predictors, tmp_path):
    predictor, text, target = predictors["classify"]
    expl = interpret.explain("classify", predictor, text, target, steps=8)
    data = json.loads(interpret.save_explanation(tmp_path / "x.json", expl).read_text(encoding="utf-8"))
    assert data == interpret.explanation_json(expl) and data["attributions"] == expl.attributions
    page = interpret.save_explanation(tmp_path / "x.html", expl).read_text(encoding="utf-8")
    assert "</html>" in page and '"views"' in page
    assert interpret.save_explanation(tmp_path / "x.png", expl).read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="name the file .html, .png or .json"):
        interpret.save_explanation(tmp_path / "x.svg", expl)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.html", "x.json", "x.png"]  # no temp files


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tok, predictors) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("explain")
    for task, (predictor, _, _) in predictors.items():
        predictor.model.save_pretrained(root / task)
        tok.save_pretrained(root / task)
    tiny(RobertaForMaskedLM).roberta.save_pretrained(root / "embed")  # a base checkpoint
    tok.save_pretrained(root / "embed")
    return {t: root / t for t in [*predictors, "embed"]}


ARGV = {
    "classify": ["a gripping film"],
    "ner": ["Angela Merkel visited Paris.", "--token-index", "1"],
    "qa": ["--question", "Who visited Paris?", "--context", "Angela Merkel visited Paris."],
    "fill-mask": ["Paris is the <mask> of France."],
    "multiple-choice": ["--context", "The sky is", "--choice", "blue.", "--choice", "green."],
}


@pytest.mark.parametrize("task", list(ARGV))
def test_cli_explains_every_task(task, checkpoints, tmp_path, capsys):
    argv = ["explain-prediction", *ARGV[task], "--model", str(checkpoints[task]), "--steps", "8"]
    assert main([*argv, "--json", "--method", "grad-input"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["task"] == task and data["method"] == "grad-input" and data["steps"] == 8
    assert main([*argv, "--out", str(tmp_path / "x.html")]) == 0
    out = capsys.readouterr().out
    assert f"{task}: “" in out and "integrated gradients" in out and "x.html" in out
    assert (tmp_path / "x.html").is_file()


def test_cli_prints_a_table_and_refuses_in_one_line(checkpoints, capsys):
    model = str(checkpoints["classify"])
    assert (
        main(["explain-prediction", "a gripping film", "--model", model, "--target", "pos", "--steps", "8"])
        == 0
    )
    out = capsys.readouterr().out
    assert "gripping" in out and "convergence delta" in out
    assert main(["explain-prediction", "a film", "--model", model, "--target", "happy"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown target 'happy'" in err and "neg" in err
    assert main(["explain-prediction", "a", "b", "--model", model]) == 2
    assert "explain one input at a time" in capsys.readouterr().err
    assert (
        main(["explain-prediction", "a text", "--model", str(checkpoints["embed"]), "--task", "embed"]) == 2
    )
    assert "embed makes a vector" in capsys.readouterr().err
    assert main(["explain-prediction", "--question", "Who?", "--model", model]) == 2
    assert "--question is for qa" in capsys.readouterr().err
