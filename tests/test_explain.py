"""`roberta explain`: the numbers it prints are the attention module's own intermediate values."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from roberta import explain
from roberta.cli import main
from roberta.config import RobertaConfig
from roberta.model import RobertaModel, attention_scores, attention_weights, sinusoidal_table

TOL = dict(atol=1e-6, rtol=0)


def module_pieces(attn, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The steps, computed here by calling the module's pieces one by one. x: (T, C)."""
    T, C = x.shape
    with torch.no_grad():
        q, k, v = attn.heads(x[None])
        scores = attention_scores(q, k, None)
        heads, weights = attention_weights(q, k, v, None)
        concat = heads.transpose(1, 2).reshape(1, T, C)
        return dict(q=q[0], k=k[0], v=v[0], scores=scores[0], weights=weights[0], heads=heads[0],
                    concat=concat[0], output=attn.out(concat)[0])  # fmt: skip


def test_toy_steps_are_the_module_values():
    expl = explain.toy_example(seed=3)
    attn = explain.toy_attention(explain.toy_weights(explain.toy_words(explain.TOY_TEXT), seed=3))
    x = expl.steps["embedded"]
    expected = module_pieces(attn, x)
    for name, value in expected.items():
        torch.testing.assert_close(expl.steps[name], value, **TOL, msg=name)
    # pinned to the formula, and to the module's own forward (the SDPA path and the explicit one)
    q, k = expl.steps["q"], expl.steps["k"]
    torch.testing.assert_close(expl.steps["scores"], q @ k.transpose(-1, -2) / math.sqrt(3), **TOL)
    torch.testing.assert_close(expl.steps["weights"], expl.steps["scores"].softmax(-1), **TOL)
    with torch.no_grad():
        fast, _ = attn(x[None], None)
        slow, weights = attn(x[None], None, output_attentions=True)
    torch.testing.assert_close(expl.steps["output"], fast[0], **TOL)
    torch.testing.assert_close(expl.steps["output"], slow[0], **TOL)
    torch.testing.assert_close(expl.steps["weights"], weights[0], **TOL)
    torch.testing.assert_close(expl.steps["weights"].sum(-1), torch.ones(2, 9, dtype=torch.float64), **TOL)


def test_toy_example_shapes_and_inputs():
    expl = explain.toy_example(seed=0)
    s = expl.steps
    assert expl.tokens == "the quick brown fox jumps over the lazy dog".split()
    assert s["embedded"].shape == (9, 6) and s["q"].shape == (2, 9, 3) and s["weights"].shape == (2, 9, 9)
    assert s["heads"].shape == (2, 9, 3) and s["concat"].shape == (9, 6) and s["output"].shape == (9, 6)
    torch.testing.assert_close(s["positions"], sinusoidal_table(9, 6).double())
    torch.testing.assert_close(s["embedded"], s["embeddings"] + s["positions"])
    # "the" at 0 and 6: one embedding, told apart by the position only
    assert torch.equal(s["embeddings"][0], s["embeddings"][6]) and not torch.equal(
        s["embedded"][0], s["embedded"][6]
    )
    # the concatenation is head 0's dims, then head 1's
    torch.testing.assert_close(s["concat"], torch.cat([s["heads"][0], s["heads"][1]], dim=-1))
    assert not torch.equal(explain.toy_example(seed=1).steps["output"], s["output"])


def test_hand_made_weights_give_the_hand_computed_answer():
    """W_Q = 0: every score is 0, so attention is uniform; W_V = W_O = I: output = mean of x."""
    C = 4
    eye = torch.eye(C).tolist()
    weights = {
        "num_heads": 2,
        "embeddings": {"a": [1, 0, 0, 0], "b": [0, 2, 0, 0], "c": [0, 0, 3, 0]},
        "W_q": [[0.0] * C] * C, "W_k": eye, "W_v": eye, "W_o": eye, "b_o": [0.5, 0, 0, 0],
    }  # fmt: skip
    s = explain.toy_example("a b c", weights=weights).steps
    assert torch.equal(s["scores"], torch.zeros(2, 3, 3, dtype=torch.float64))
    torch.testing.assert_close(s["weights"], torch.full((2, 3, 3), 1 / 3, dtype=torch.float64))
    mean = s["embedded"].mean(0) + torch.tensor([0.5, 0, 0, 0], dtype=torch.float64)
    torch.testing.assert_close(s["output"], mean.expand(3, C))


def test_weights_file_round_trip(tmp_path):
    path = explain.save_weights(tmp_path / "w.json", explain.toy_weights(["a", "b"], seed=5))
    from_file = explain.toy_example("a b a", weights=explain.load_weights(path))
    seeded = explain.toy_example("a b a", seed=5)
    for name in seeded.steps:
        assert torch.equal(from_file.steps[name], seeded.steps[name]), name


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda w: w.pop("W_v"), "lacks \\['W_v'\\]"),
        (lambda w: w.update(W_q=[[1.0, 2.0]]), "shape"),
        (lambda w: w.update(num_heads=4), "num_heads"),
        (lambda w: w["embeddings"].pop("dog"), "no embedding for \\['dog'\\]"),
        (lambda w: w.update(W_k="x"), "array of numbers"),
    ],
)
def test_bad_weights_say_what_is_wrong(tmp_path, change, message):
    weights = explain.toy_weights(explain.toy_words(explain.TOY_TEXT))
    change(weights)
    path = explain.save_weights(tmp_path / "w.json", weights)
    with pytest.raises(ValueError, match=message):
        explain.toy_example(weights=explain.load_weights(path))


def printed_numbers(text: str) -> list[float]:
    return [float(v) for line in text.splitlines() for v in re.findall(r"(?<![\w.])[+-]?\d+\.\d{4}\b", line)]


def test_printed_numbers_are_the_steps(capsys):
    """Every number the text shows, in order, is a step's value (to the 4 printed decimals)."""
    assert main(["explain", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    expl = explain.toy_example(seed=2)
    tables = {**expl.params, **expl.steps}
    expected = []
    for name, _ in explain.STEPS:
        if name not in tables:
            continue
        for m in tables[name] if name in explain.PER_HEAD else [tables[name]]:
            rows = [r + [sum(r)] if name == "weights" else r for r in m.tolist()]
            expected += [v for r in rows for v in r]
    got = printed_numbers(out.split("Their sum is x")[1])
    assert len(got) == len(expected) == 9 * 6 * 3 + 6 * 6 * 4 + 6 + 2 * 9 * (3 * 4 + 9 * 2 + 1) + 9 * 6 * 2
    assert max(abs(g - e) for g, e in zip(got, expected)) <= 5.1e-5
    for heading in (
        "token embeddings",
        "position encodings",
        "Q = x W_Q  [head 1]",
        "softmax",
        "W_O",
        "concat",
    ):
        assert heading in out


def test_json_output_equals_the_module_pieces(capsys):
    assert main(["explain", "the cat sat on the mat", "--seed", "7", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    weights = explain.toy_weights(explain.toy_words("the cat sat on the mat"), seed=7)
    x = torch.tensor(data["steps"]["embedded"], dtype=torch.float64)
    for name, value in module_pieces(explain.toy_attention(weights), x).items():
        torch.testing.assert_close(torch.tensor(data["steps"][name], dtype=torch.float64), value, **TOL)
    assert data["tokens"] == ["the", "cat", "sat", "on", "the", "mat"]


def test_cli_argument_errors(capsys, tmp_path):
    assert main(["explain", "--layer", "1"]) == 2
    assert "--layer needs --model" in capsys.readouterr().err
    assert main(["explain", "--model", str(tmp_path), "--weights", "w.json"]) == 2
    assert "toy example" in capsys.readouterr().err
    assert main(["explain", "--weights", str(tmp_path / "missing.json")]) == 2
    assert "no weights file" in capsys.readouterr().err


# ---- a real layer -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, data_dir):
    """A random 2-layer model (hidden 16, 4 heads) with the real roberta-base tokenizer, saved."""
    from roberta.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(data_dir / "roberta-base-tokenizer")
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=32, max_position_embeddings=66, initializer_range=0.3)  # fmt: skip
    folder = tmp_path_factory.mktemp("tiny")
    RobertaModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("layer", [0, 1])
def test_layer_example_is_the_model_layer(tiny_model_dir, layer):
    from roberta.tokenizer import Tokenizer

    model, tok = (
        RobertaModel.from_pretrained(tiny_model_dir).eval(),
        Tokenizer.from_pretrained(tiny_model_dir),
    )
    expl = explain.layer_example(model, tok, explain.TOY_TEXT, layer)
    ids = torch.tensor([tok(explain.TOY_TEXT)["input_ids"]])
    with torch.no_grad():
        out = model(ids, torch.ones_like(ids), output_hidden_states=True, output_attentions=True)
        block = model.encoder.layers[layer]
        x = out.hidden_states[layer]
        y, _ = block.attn(x, None)
        after = block.norm2(block.norm1(x + y) + block.ffn(block.norm1(x + y)))  # the rest of the block
    assert expl.tokens == tok.convert_ids_to_tokens(ids[0].tolist())
    torch.testing.assert_close(expl.steps["x"], x[0], **TOL)
    torch.testing.assert_close(expl.steps["weights"], out.attentions[layer][0], **TOL)
    torch.testing.assert_close(expl.steps["output"], y[0], **TOL)
    torch.testing.assert_close(after, out.hidden_states[layer + 1], **TOL)
    for name, value in module_pieces(block.attn, expl.steps["x"]).items():
        torch.testing.assert_close(expl.steps[name], value, **TOL, msg=name)
    torch.testing.assert_close(expl.steps["weights"].sum(-1), torch.ones(4, ids.shape[1]), **TOL)


def test_layer_example_printout_is_shortened(tiny_model_dir, capsys):
    assert main(["explain", "--model", str(tiny_model_dir), "--layer", "1"]) == 0
    out = capsys.readouterr().out
    assert "Layer 1 self-attention" in out and "Input to the attention: layer 0's output." in out
    assert "token embeddings  (11, 16)  (showing 8 of 16 dims)" in out
    assert "Q = x W_Q  [head 1]  (11, 4)  (showing 2 of 4 heads)" in out
    assert "[head 2]" not in out
    from roberta.tokenizer import Tokenizer

    expl = explain.layer_example(
        RobertaModel.from_pretrained(tiny_model_dir),
        Tokenizer.from_pretrained(tiny_model_dir),
        "a b c d e f",
        0,
    )
    short = explain.format_explanation(expl, max_tokens=3)
    assert "(showing 3 of 8 tokens" in short and "Ġf" not in short
    assert main(["explain", "--model", str(tiny_model_dir), "--layer", "2"]) == 2
    assert "layer must be in 0..1" in capsys.readouterr().err


def test_layer_example_matches_transformers(tmp_path, data_dir):
    """The reference: HF transformers' own attention weights and layer inputs, random weights."""
    transformers = pytest.importorskip("transformers")
    from roberta.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(data_dir / "roberta-base-tokenizer")
    hf_config = transformers.RobertaConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                                           intermediate_size=32, max_position_embeddings=66, initializer_range=0.3)  # fmt: skip
    torch.manual_seed(0)
    transformers.RobertaModel(hf_config).save_pretrained(tmp_path)
    hf = transformers.RobertaModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids = torch.tensor([tok(explain.TOY_TEXT)["input_ids"]])
    with torch.no_grad():
        ref = hf(ids, output_attentions=True, output_hidden_states=True)
    expl = explain.layer_example(RobertaModel.from_pretrained(tmp_path), tok, explain.TOY_TEXT, 1)
    torch.testing.assert_close(expl.steps["x"], ref.hidden_states[1][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(expl.steps["weights"], ref.attentions[1][0], atol=1e-5, rtol=1e-5)


def test_an_int8_model_is_not_explained_from_its_int8_weights(tiny_model_dir):
    from roberta.quantize import quantize_int8
    from roberta.tokenizer import Tokenizer

    model = quantize_int8(RobertaModel.from_pretrained(tiny_model_dir))
    with pytest.raises(ValueError, match="without dtype=torch.int8"):
        explain.layer_example(model, Tokenizer.from_pretrained(tiny_model_dir), explain.TOY_TEXT, 0)
