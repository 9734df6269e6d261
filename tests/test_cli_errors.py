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
    assert f"is not a {TASKS[name].model_class.__name__} checkpoint" in err
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


# ---- nothing a user saved is lost ------------------------------------------------------------------


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("text\tlabel\ngood film\tpos\nbad film\tneg\n", encoding="utf-8")
    return path


def finetune(model, out, data, *more):
    argv = ["finetune", "classify", "--train", data, "--dev", data, "--model", model, "--out", out]
    return [str(a) for a in argv + ["--max-steps", "1", "--batch-size", "2", "--no-progress", *more]]


def test_finetune_into_a_run_folder_needs_resume_or_overwrite(tiny_model_dir, tmp_path, table, capsys):
    out = tmp_path / "run"
    assert main(finetune(tiny_model_dir, out, table)) == 0
    first = (out / "metrics.jsonl").read_bytes()
    code, _, err = run(capsys, *finetune(tiny_model_dir, out, table))
    assert code == 2 and "--overwrite" in err and "--resume" in err
    assert (out / "metrics.jsonl").read_bytes() == first  # the first run is untouched
    assert main(finetune(tiny_model_dir, out, table, "--overwrite")) == 0


def test_a_run_never_writes_over_its_input(tiny_model_dir, tmp_path, table, capsys):
    out = tmp_path / "run"
    assert main(finetune(tiny_model_dir, out, table)) == 0
    capsys.readouterr()
    code, _, err = run(capsys, *finetune(out / "last", out, table, "--overwrite"))
    assert code == 2 and "holds the input" in err
    assert (out / "last" / "model.safetensors").exists()


def test_finetune_save_cadence_reaches_the_training_config(tiny_model_dir, tmp_path, table, monkeypatch):
    import types

    import roberta.tasks.classify

    seen = []

    def record(*args, **kwargs):
        seen.append(args[3])
        return types.SimpleNamespace()

    monkeypatch.setattr(roberta.tasks.classify, "finetune_classifier", record)
    assert main(finetune(tiny_model_dir, tmp_path / "o", table, "--save-every-minutes", "0.5")) == 0
    assert seen[0].save_every_minutes == 0.5 and seen[0].overwrite is False


def test_split_squad_never_writes_over_its_input_or_an_existing_file(tmp_path, capsys):
    squad = tmp_path / "s.json"
    article = {"title": "t", "paragraphs": [{"context": "Ann went home.", "qas": []}]}
    squad.write_text(json.dumps({"version": "1.1", "data": [article, article]}), encoding="utf-8")
    before = squad.read_bytes()
    code, _, err = run(
        capsys, "finetune", "split-squad", squad, "--train-out", squad, "--dev-out", tmp_path / "d"
    )
    assert code == 2 and "is the input file" in err and squad.read_bytes() == before
    (tmp_path / "d.json").write_text("keep me")
    argv = [
        "finetune",
        "split-squad",
        squad,
        "--fraction",
        "0.5",
        "--train-out",
        tmp_path / "t.json",
        "--dev-out",
        tmp_path / "d.json",
    ]
    code, _, err = run(capsys, *argv)
    assert code == 2 and "--overwrite" in err and (tmp_path / "d.json").read_text() == "keep me"
    assert run(capsys, *argv, "--overwrite")[0] == 0


def test_tokenizer_train_does_not_replace_a_models_tokenizer(tiny_model_dir, tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("some words here\n" * 20, encoding="utf-8")
    before = (tiny_model_dir / "vocab.json").read_bytes()
    code, _, err = run(
        capsys, "tokenizer", "train", "--corpus", corpus, "--vocab-size", "300", "--out", tiny_model_dir
    )
    assert code == 2 and "--overwrite" in err and "config.json" in err
    assert (tiny_model_dir / "vocab.json").read_bytes() == before


# `roberta --help`, `--version` and a mistyped command list the commands from their names alone:
# no task module and no torch is imported (#21: the start-up took seconds). A fresh interpreter,
# since this one has torch already.
@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["no-such-command"], []])
def test_the_command_list_and_its_errors_import_no_torch(argv):
    import subprocess
    import sys

    probe = (
        "import sys\nfrom roberta.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'roberta.tasks.')))\n"
        "print('imported:', heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert "imported: []" in done.stdout, done.stdout + done.stderr


def test_a_task_command_imports_only_its_own_task(capsys):
    import subprocess
    import sys

    probe = (
        "import sys\nfrom roberta.cli import main\n"
        "try:\n    main(['ner', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('tasks:', sorted(m for m in sys.modules if m.startswith('roberta.tasks.') and m != 'roberta.tasks.common'))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert "tasks: ['roberta.tasks.ner']" in done.stdout, done.stdout + done.stderr
    assert "--labels" in done.stdout or "usage: roberta ner" in done.stdout


def test_the_registry_lists_every_task_module_and_names_them_as_they_do():
    from roberta.tasks import REGISTRY

    assert list(TASKS) == list(REGISTRY)
    for name, task in TASKS.items():  # each entry's module holds that task and its predictor
        assert task.name == name and task.predictor.__name__ == REGISTRY[name].predictor
