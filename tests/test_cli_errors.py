"""What a careless or new user hits on the command line: one clear line each, no traceback, no
random answers, nothing started that will fail later (issue: "nothing run, nothing lost").

The model is the tiny random masked LM of conftest.py with the real roberta-base tokenizer.
"""

from __future__ import annotations

import json

import pytest
import torch

from roberta.cli import main
from roberta.tasks import TASKS


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name", ["classify", "ner", "qa", "multiple-choice"])
def test_a_task_without_its_head_refuses_instead_of_answering_at_random(name, capsys):
    inputs = {
        "qa": ["--question", "Who?", "--context", "Ann went home."],
        "multiple-choice": ["--context", "The sky is", "--choice", "blue", "--choice", "green"],
    }.get(name, ["a gripping film"])
    code, out, err = run(capsys, name, *inputs)  # no --model: the built-in masked LM
    assert code == 2 and out == ""
    assert f"has no {TASKS[name].model_class.__name__} head" in err
    assert f"roberta finetune {name}" in err and "Traceback" not in err


def test_devices_this_machine_lacks_are_one_line(tiny_model_dir, capsys):
    code, _, err = run(capsys, "embed", "a text", "--model", tiny_model_dir, "--device", "gpu")
    assert code == 2 and "device 'gpu' is not one torch knows: use cpu, cuda" in err
    if not torch.cuda.is_available():
        code, _, err = run(capsys, "embed", "a text", "--model", tiny_model_dir, "--device", "cuda")
        assert code == 2 and "device 'cuda' is not available here" in err and "--device cpu" in err


def test_a_batch_size_of_zero_is_refused_by_name(tiny_model_dir, capsys):
    for argv in (
        ["embed", "a text", "--batch-size", "0"],
        ["evaluate", "classify", "--model", tiny_model_dir, "--data", "x.tsv", "--batch-size", "0"],
        ["evaluate", "mlm", "--corpus", "x.txt", "--batch-size", "-3"],
    ):
        with pytest.raises(SystemExit) as exit_:
            main([str(a) for a in argv])
        assert exit_.value.code == 2
        assert "--batch-size: must be at least 1" in capsys.readouterr().err


def test_a_file_that_is_not_utf8_names_the_file_and_line(tiny_model_dir, tmp_path, capsys):
    path = tmp_path / "latin1.txt"
    path.write_bytes("fine\ncaf\xe9 au lait\n".encode("latin-1"))
    code, _, err = run(capsys, "embed", "--file", path, "--model", tiny_model_dir)
    assert code == 2 and "latin1.txt line 2 is not UTF-8" in err


def test_our_bugs_are_one_line_and_a_traceback_with_debug(tiny_model_dir, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(TASKS["embed"], "predict", broken)
    code, _, err = run(capsys, "embed", "a text", "--model", tiny_model_dir)
    assert code == 1 and "internal error: RuntimeError: boom" in err and "--debug" in err
    assert "Traceback" not in err
    with pytest.raises(RuntimeError, match="boom"):
        main(["--debug", "embed", "a text", "--model", str(tiny_model_dir)])


def test_a_missing_optional_package_is_named_before_training_starts(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "sacrebleu" else real(name, *a)
    )
    for name in ("a.en", "a.de"):
        (tmp_path / name).write_text("A line.\n", encoding="utf-8")
    files = [tmp_path / "a.en", tmp_path / "a.de"]
    out = tmp_path / "run"
    code, _, err = run(
        capsys,
        "finetune",
        "translate",
        "--train",
        *files,
        "--dev",
        *files,
        "--model",
        tiny_model_dir,
        "--out",
        out,
    )
    assert code == 2 and "needs the sacrebleu package" in err and 'pip install -e ".[translate]"' in err
    assert not out.exists()  # refused before anything was written


def test_encode_says_when_it_truncates(tiny_model_dir, capsys):
    code, out, err = run(capsys, "encode", "word " * 600, "--model", tiny_model_dir, "--json")
    assert code == 0 and "only the first 512 were encoded" in err
    assert len(json.loads(out)["input_ids"]) == 512
    code, _, err = run(capsys, "encode", "a short text", "--model", tiny_model_dir)
    assert code == 0 and err == ""


def test_attention_page_title_stays_short_for_a_long_text(tiny_model_dir, tmp_path, capsys):
    text = " ".join(f"word{i}" for i in range(5000))
    code, _, _ = run(capsys, "attention", text, "--model", tiny_model_dir, "--out", tmp_path / "a.html")
    assert code == 0
    page = (tmp_path / "a.html").read_text(encoding="utf-8")
    assert "word4999" not in page and len(page) < 200_000  # the title holds the text's start only


def test_embed_jsonl_json_keeps_the_rows_other_fields(tiny_model_dir, tmp_path, capsys):
    rows = [{"id": "a1", "text": "first", "lang": "en"}, {"id": 7, "text": "second"}]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    code, out, _ = run(capsys, "embed", "--jsonl", path, "--model", tiny_model_dir, "--json")
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(line["id"], line["text"]) for line in lines] == [("a1", "first"), (7, "second")]
    assert lines[0]["lang"] == "en" and len(lines[0]["embedding"]) == 32
