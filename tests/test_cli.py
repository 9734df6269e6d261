"""The `roberta` command line, run in-process: it parses, calls the library, and prints."""

from __future__ import annotations

import json

import torch

from roberta import RobertaModel
from roberta.cli import main
from roberta.tokenizer import Tokenizer

TEXT = "The quick brown fox jumps over the lazy dog"


def test_encode_prints_tokens_ids_shape_and_values(tiny_model_dir, capsys):
    assert main(["encode", TEXT, "--model", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    assert "Ġquick" in out and "last_hidden_state: 1x11x32" in out


def test_encode_json_equals_the_python_api(tiny_model_dir, capsys):
    assert main(["encode", TEXT, "--model", str(tiny_model_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    tok, model = Tokenizer.from_pretrained(tiny_model_dir), RobertaModel.from_pretrained(tiny_model_dir)
    batch = tok(TEXT, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    assert result["input_ids"] == batch["input_ids"][0].tolist()
    assert result["last_hidden_state_shape"] == list(hidden.shape)
    assert torch.allclose(torch.tensor(result["first_values"]), hidden[0, 0, :8], atol=1e-5)


def test_bad_model_path_is_one_clear_line(tmp_path, capsys):
    assert main(["encode", TEXT, "--model", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("roberta encode: error:") and "Traceback" not in err


def test_compile_flag_reaches_the_training_config(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """--compile on pretrain and finetune sets TrainConfig.compile (what it does: tests/test_train.py)."""
    import types

    import roberta.pretrain
    import roberta.tasks.classify

    seen = []

    def record(*args, **kwargs):
        seen.append(next(a for a in args if hasattr(a, "compile")).compile)
        return types.SimpleNamespace()

    monkeypatch.setattr(roberta.pretrain, "pretrain", record)
    monkeypatch.setattr(roberta.tasks.classify, "finetune_classifier", record)
    common = ["--out", str(tmp_path), "--max-steps", "1"]
    pretrain = ["pretrain", "--corpus", "c.txt", "--tokenizer", str(tiny_model_dir), *common]
    finetune = [
        "finetune",
        "classify",
        "--train",
        "t.tsv",
        "--dev",
        "d.tsv",
        "--model",
        str(tiny_model_dir),
        *common,
    ]
    for argv in (pretrain, pretrain + ["--compile"], finetune, finetune + ["--compile"]):
        assert main(argv) == 0
    assert seen == [False, True, False, True]


def test_evaluate_mlm_scores_the_int8_model_too(tiny_model_dir, tmp_path, capsys):
    corpus = tmp_path / "held.txt"
    corpus.write_text("\n".join(f"{TEXT}, and then it ran off into the woods number {i}." for i in range(40)))
    scores = {}
    for dtype in ("fp32", "int8"):
        args = ["evaluate", "mlm", "--model", str(tiny_model_dir), "--corpus", str(corpus), "--json"]
        assert main([*args, "--max-length", "32", "--dtype", dtype]) == 0
        scores[dtype] = json.loads(capsys.readouterr().out)
    fp32, int8 = scores["fp32"], scores["int8"]
    assert fp32["masked_tokens"] == int8["masked_tokens"] > 0  # the same fixed masks
    assert abs(int8["loss"] - fp32["loss"]) < 0.05 * fp32["loss"] and int8["loss"] != fp32["loss"]
