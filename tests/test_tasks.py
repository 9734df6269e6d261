"""The task registry (roberta/tasks/): every task reaches every entry point with every option,
and multiple choice — the task added on the registry alone — works end to end.

Tiny random checkpoints of each task's model with the real roberta-base tokenizer.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest
import torch

from roberta.cli import main
from roberta.config import RobertaConfig
from roberta.heads import RobertaForMaskedLM
from roberta.quantize import Int8Linear
from roberta.seq2seq import EncoderDecoder
from roberta.tasks import TASKS, MultipleChoice, task_of
from roberta.tokenizer import Tokenizer

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
# The model config of each task's checkpoint (tasks not named: the plain config).
OVERRIDES = {
    "classify": dict(num_labels=2, id2label={0: "neg", 1: "pos"}),
    "ner": dict(num_labels=3, id2label={0: "O", 1: "B-PER", 2: "I-PER"}),
}
# What each task command reads: one input, given the way its command takes it.
INPUTS = {
    "fill-mask": ["Paris is the <mask> of France."],
    "classify": ["a gripping film"],
    "ner": ["Angela Merkel visited Paris."],
    "qa": ["--question", "Who visited Paris?", "--context", "Angela Merkel visited Paris."],
    "multiple-choice": ["--context", "The sky is", "--choice", "blue.", "--choice", "green."],
    "embed": ["a text"],
    "translate": ["A dog runs."],
}


@pytest.fixture(scope="module")
def tokenizer(data_dir) -> Tokenizer:
    return Tokenizer.from_pretrained(data_dir / "roberta-base-tokenizer")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tokenizer) -> dict[str, Path]:
    """task name -> a folder with a tiny random checkpoint of that task's model and the tokenizer."""
    root = tmp_path_factory.mktemp("tasks")
    torch.manual_seed(0)
    RobertaForMaskedLM(RobertaConfig(**TINY, max_position_embeddings=34)).save_pretrained(root / "mlm")
    folders = {}
    for name, task in TASKS.items():
        torch.manual_seed(0)
        if task.model_class is EncoderDecoder:
            model = EncoderDecoder.from_encoder_pretrained(root / "mlm")
        else:
            model = task.model_class(RobertaConfig(**TINY, **OVERRIDES.get(name, {})))
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        folders[name] = root / name
    return folders


def test_every_task_has_an_input_here_and_a_checkpoint_that_maps_back_to_it(checkpoints):
    assert set(INPUTS) == set(TASKS), "a new task needs an example input in INPUTS"
    for name, folder in checkpoints.items():
        if TASKS[name].architectures:
            assert task_of(folder) == name


@pytest.mark.parametrize("name", list(TASKS))
def test_every_predictor_option_reaches_every_task_command(name, checkpoints, monkeypatch, capsys):
    """--device, --max-tokens, --dtype reach the predictor, --batch-size the task method: for every
    registered task (this is what caught `roberta qa --dtype int8` being ignored)."""
    task = TASKS[name]
    seen: dict = {}
    load, predict = task.predictor.from_pretrained.__func__, task.predict

    def spy_load(cls, *args, **kwargs):
        seen["load"] = kwargs
        seen["predictor"] = load(cls, *args, **kwargs)
        return seen["predictor"]

    def spy_predict(predictor, items, options, batch_size):
        seen["batch_size"], seen["items"] = batch_size, items
        seen["results"] = predict(predictor, items, options, batch_size)
        return seen["results"]

    monkeypatch.setattr(task.predictor, "from_pretrained", classmethod(spy_load))
    monkeypatch.setattr(task, "predict", spy_predict)
    options = ["--device", "cpu", "--max-tokens", "64", "--batch-size", "3", "--dtype", "int8", "--json"]
    assert main([name, *INPUTS[name], "--model", str(checkpoints[name]), *options]) == 0, (
        capsys.readouterr().err
    )
    assert seen["load"] == {"device": "cpu", "max_tokens": 64, "dtype": torch.int8}
    assert seen["batch_size"] == 3
    predictor = seen["predictor"]
    assert predictor.max_tokens == 64 and predictor.device.type == "cpu"
    assert any(isinstance(m, Int8Linear) for m in predictor.model.modules())  # it ran in int8
    (line,) = capsys.readouterr().out.splitlines()  # one input, one JSON line: what the task printed
    assert json.loads(line) == json.loads(json.dumps(task.json_line(seen["items"][0], seen["results"][0])))


# ---- multiple choice, end to end -----------------------------------------------------------------

FRUITS = ["apple", "pear", "plum", "cherry", "peach", "grape", "lemon", "melon"]
THINGS = ["stone", "iron", "glass", "chair", "brick", "spoon", "cable", "paper"]
CONTEXTS = ["Which one can you eat?", "Pick the fruit.", "What grows on a tree?", "Which is sweet?"]


def choice_rows(n: int, seed: int) -> list[dict]:
    """Questions with three choices: one fruit (the right one) and two things, in random order."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        choices = [rng.choice(FRUITS), *rng.sample(THINGS, 2)]
        rng.shuffle(choices)
        label = next(i for i, c in enumerate(choices) if c in FRUITS)
        rows.append({"question": rng.choice(CONTEXTS), "options": choices, "answer": label})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_multiple_choice_learns_and_answers_from_cli_python_http_and_onnx(tmp_path, tiny_model_dir, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", choice_rows(96, seed=0))
    dev = write_jsonl(tmp_path / "dev.jsonl", choice_rows(30, seed=1))
    fields = ["--context-field", "question", "--choices-field", "options", "--label-field", "answer"]
    out = tmp_path / "run"
    argv = (
        f"finetune multiple-choice --train {train} --dev {dev} --model {tiny_model_dir} --out {out}".split()
    )
    argv += ["--epochs", "4", "--lr", "3e-3", "--batch-size", "16", "--no-progress", *fields]
    assert main(argv) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["best_metric"] >= 0.8  # chance is 1/3

    assert (
        main(
            [
                "evaluate",
                "multiple-choice",
                "--model",
                str(out / "best"),
                "--data",
                str(dev),
                *fields,
                "--json",
            ]
        )
        == 0
    )
    scores = json.loads(capsys.readouterr().out)
    assert scores["accuracy"] == pytest.approx(summary["best_metric"])

    # Python: one question, and a batch whose questions have different numbers of choices
    chooser = MultipleChoice.from_pretrained(out / "best", device="cpu")
    one = chooser.choose("Which one can you eat?", ["brick", "cherry", "spoon"])
    assert one["choice"] == "cherry" and one["label"] == 1 and sum(one["scores"]) == pytest.approx(1.0)
    many = chooser.choose(
        ["Pick the fruit.", "Which is sweet?"], [["iron", "plum"], ["glass", "paper", "peach", "chair"]]
    )
    assert [m["choice"] for m in many] == ["plum", "peach"]
    alone = chooser.choose("Which is sweet?", ["glass", "paper", "peach", "chair"])
    assert alone["scores"] == pytest.approx(many[1]["scores"], abs=1e-5)  # batching changes nothing

    # the command
    cmd = [
        "multiple-choice",
        "--context",
        "Which one can you eat?",
        "--choice",
        "brick",
        "--choice",
        "cherry",
    ]
    assert main([*cmd, "--choice", "spoon", "--model", str(out / "best"), "--device", "cpu", "--json"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["choice"] == "cherry" and line["scores"] == pytest.approx(one["scores"], abs=1e-5)

    # HTTP
    httpx = pytest.importorskip("httpx")
    from roberta.serve import build_app

    app = build_app(chooser, "multiple-choice", str(out / "best"), max_wait_ms=100)
    bodies = [
        {"context": "Which one can you eat?", "choices": ["brick", "cherry", "spoon"]},
        {
            "context": ["Pick the fruit.", "Which is sweet?"],
            "choices": [["iron", "plum"], ["glass", "paper", "peach", "chair"]],
        },
        {"context": "Pick the fruit.", "choices": [["iron", "plum"]]},  # a single context takes a flat list
    ]

    async def post_all():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await asyncio.gather(*(client.post("/multiple-choice", json=b) for b in bodies))

    replies = asyncio.run(post_all())
    assert replies[0].status_code == 200 and replies[0].json()["outputs"]["choice"] == "cherry"
    got = replies[1].json()["outputs"]
    assert [g["choice"] for g in got] == ["plum", "peach"]
    assert got[1]["scores"] == pytest.approx(many[1]["scores"], abs=1e-5)
    assert replies[2].status_code == 422 and "a list of choices" in replies[2].text

    # ONNX
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    assert main(["export-onnx", "--model", str(out / "best"), "--out", str(tmp_path / "onnx")]) == 0
    printed = capsys.readouterr().out
    assert "RobertaForMultipleChoice: inputs input_ids, attention_mask (batch, choice, length" in printed
    assert float(printed.split("max |diff| ")[1].split()[0]) < 1e-4


def test_multiple_choice_data_errors_name_the_line(tmp_path, tiny_model_dir, capsys):
    bad = [
        ('{"context": "q", "choices": ["a"], "label": 0}', "must be a list of two or more non-empty strings"),
        (
            '{"context": "q", "choices": ["a", "b"], "label": 2}',
            "must be the index of the right choice, 0..1",
        ),
        ('{"context": "q", "choices": ["a", "b"]}', "has no field 'label'"),
    ]
    for text, message in bad:
        path = tmp_path / "bad.jsonl"
        path.write_text(
            '{"context": "q", "choices": ["a", "b"], "label": 1}\n' + text + "\n", encoding="utf-8"
        )
        argv = ["finetune", "multiple-choice", "--train", str(path), "--dev", str(path)]
        assert main([*argv, "--model", str(tiny_model_dir), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert "bad.jsonl line 2" in err and message in err
    path.write_text(
        '{"context": "q", "choices": ["a", "b"], "label": 1}\n{"context": "q", "choices": ["a", "b", "c"], "label": 1}\n'
    )
    assert main([*argv, "--model", str(tiny_model_dir), "--out", str(tmp_path / "o")]) == 2
    assert "has 3 choices but line 1 has 2" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written before the data was read
