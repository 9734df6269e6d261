"""The HTTP server (roberta.serve): dynamic batching, and answers equal to the Python API's.

The batcher is tested with a stand-in `run` (what it batches, and that a bad request fails alone);
the app with tiny random models of each task, called concurrently through httpx's ASGI transport;
`roberta serve` itself once, as a subprocess on a free port.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from roberta.cli import main  # noqa: E402
from roberta.config import RobertaConfig  # noqa: E402
from roberta.heads import (  # noqa: E402
    RobertaForMaskedLM,
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
)
from roberta.seq2seq import EncoderDecoder  # noqa: E402
from roberta.serve import Batcher, build_app  # noqa: E402
from roberta.tasks import TASKS, Classifier, FillMask, QuestionAnswerer, task_of  # noqa: E402
from roberta.tokenizer import Tokenizer  # noqa: E402

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
TEXTS = [
    "A short one.",
    "Angela Merkel met Emmanuel Macron in Berlin on Tuesday to discuss the budget.",
    "Hi",
    "The quick brown fox jumps over the lazy dog, again and again, until it is tired.",
    "",
    "Ünïcödé wörds and emoji 🙂 too.",
]
MASKED = [t.replace("the", "the <mask>", 1) + " <mask>" for t in TEXTS]
CONTEXT = "Angela Merkel met Emmanuel Macron in Berlin on Tuesday to discuss the European Union budget."
QUESTIONS = ["Who met Macron?", "Where did they meet?", "When?", "What was discussed?"]


# ---- the batcher, with a stand-in model ---------------------------------------------------------


def recording_run(calls: list):
    """run(items, params) that records each call and answers (item, params) per item; "bad" fails."""

    def run(items: list, params: dict) -> list:
        calls.append(list(items))
        if "bad" in items:
            raise ValueError("bad is not a text this model reads")
        return [(item, params) for item in items]

    return run


def test_requests_that_arrive_together_share_one_call_and_get_their_own_results():
    calls: list = []
    batcher = Batcher(recording_run(calls), max_batch_size=64, max_wait_ms=500)
    futures = [batcher.submit([f"r{i}a", f"r{i}b"], {"top_k": 3}) for i in range(10)]
    results = [f.result(timeout=10) for f in futures]
    batcher.close()
    assert len(calls) == 1 and len(calls[0]) == 20  # one call for all ten requests
    assert results == [[(f"r{i}a", {"top_k": 3}), (f"r{i}b", {"top_k": 3})] for i in range(10)]
    assert batcher.stats == {"requests": 10, "batches": 1, "texts": 20}


def test_batches_keep_to_the_size_limit_and_to_one_set_of_parameters():
    calls: list = []
    batcher = Batcher(recording_run(calls), max_batch_size=4, max_wait_ms=300)
    sizes_params = [(1, 1), (1, 2), (2, 1), (3, 1), (6, 1), (1, 2)]  # 6 > 4: a batch of its own
    futures = [batcher.submit([f"t{i}"] * n, {"k": k}) for i, (n, k) in enumerate(sizes_params)]
    for f, (n, k) in zip(futures, sizes_params):
        assert [p for _, p in f.result(timeout=10)] == [{"k": k}] * n
    batcher.close()
    # gathered in arrival order while they fit in 4: [t0 t1 t2], then [t3], [t4], [t5]; each
    # gathering runs once per set of parameters
    assert calls == [["t0", "t2", "t2"], ["t1"], ["t3"] * 3, ["t4"] * 6, ["t5"]]
    assert batcher.stats == {"requests": 6, "batches": 5, "texts": 14}


def test_a_bad_request_fails_alone_and_its_batchmates_are_answered():
    calls: list = []
    batcher = Batcher(recording_run(calls), max_batch_size=64, max_wait_ms=300)
    good1, bad, good2 = (batcher.submit(items, {}) for items in (["a"], ["x", "bad"], ["b"]))
    assert good1.result(timeout=10) == [("a", {})] and good2.result(timeout=10) == [("b", {})]
    with pytest.raises(ValueError, match="bad is not a text"):
        bad.result(timeout=10)
    batcher.close()
    assert calls[0] == ["a", "x", "bad", "b"]  # together first, then each alone
    assert calls[1:] == [["a"], ["x", "bad"], ["b"]]


def test_close_answers_what_was_queued_first():
    calls: list = []
    batcher = Batcher(recording_run(calls), max_batch_size=1, max_wait_ms=0)
    futures = [batcher.submit([i], {}) for i in range(5)]
    batcher.close()
    assert [f.result(timeout=0) for f in futures] == [[(i, {})] for i in range(5)]


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="max_batch_size must be at least 1"):
        Batcher(lambda items, params: items, max_batch_size=0)
    with pytest.raises(ValueError, match="max_wait_ms must be 0 or more"):
        Batcher(lambda items, params: items, max_wait_ms=-1)


# ---- the app, with tiny models of each task ----------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, data_dir):
    """task -> folder of a tiny random checkpoint of that task, with roberta-base's tokenizer."""
    root = tmp_path_factory.mktemp("serve")
    tokenizer = Tokenizer.from_pretrained(data_dir / "roberta-base-tokenizer", model_max_length=512)
    models = {
        "fill-mask": (RobertaForMaskedLM, {}),
        "classify": (
            RobertaForSequenceClassification,
            dict(num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"}),
        ),
        "ner": (RobertaForTokenClassification, dict(num_labels=3, id2label={0: "O", 1: "B-PER", 2: "I-PER"})),
        "qa": (RobertaForQuestionAnswering, {}),
    }
    folders = {}
    for task, (cls, overrides) in models.items():
        torch.manual_seed(0)
        cls(RobertaConfig(**TINY, **overrides)).save_pretrained(root / task)
        tokenizer.save_pretrained(root / task)
        folders[task] = root / task
    # a translation model, both stacks from the masked LM (max_position_embeddings 34: short outputs)
    torch.manual_seed(0)
    RobertaForMaskedLM(RobertaConfig(**TINY, max_position_embeddings=34)).save_pretrained(root / "mlm-short")
    EncoderDecoder.from_encoder_pretrained(root / "mlm-short").save_pretrained(root / "translate")
    tokenizer.save_pretrained(root / "translate")
    folders["translate"] = root / "translate"
    return folders


def requests_for(task: str) -> list[dict]:
    """Bodies to send: single inputs and lists, with the task's options."""
    if task == "qa":
        return [{"question": q, "context": CONTEXT, "top_k": 1 + i % 2} for i, q in enumerate(QUESTIONS)] + [
            {"question": QUESTIONS[:2], "context": [CONTEXT, CONTEXT[:40]]}
        ]
    inputs = MASKED if task == "fill-mask" else TEXTS
    bodies = [{"inputs": t} for t in inputs] + [{"inputs": inputs[:3]}, {"inputs": inputs[2:]}]
    if task == "fill-mask":
        bodies[1]["top_k"] = 2
    if task == "embed":
        bodies[2]["pooling"] = "cls"
        bodies[3]["normalize"] = False
    if task == "translate":
        bodies[1]["num_beams"] = 2
    return bodies


def python_api(predictor, task: str, body: dict):
    """What the Python API gives for one request body, alone."""
    options = {k: v for k, v in body.items() if k not in ("inputs", "question", "context")}
    if task == "fill-mask":
        return predictor.fill_mask(body["inputs"], **options)
    if task == "classify":
        return predictor.classify(body["inputs"])
    if task == "ner":
        return predictor.tag(body["inputs"])
    if task == "qa":
        return predictor.answer(body["question"], body["context"], **options)
    if task == "translate":
        return predictor.translate(body["inputs"], **options)
    return predictor.embed(body["inputs"], **options).tolist()


def close_to(a, b) -> bool:
    """Equal structure, equal strings and ints, floats within 1e-5 (batchmates change float sums)."""
    if isinstance(a, float) or isinstance(b, float):
        return abs(a - b) <= 1e-5
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(close_to(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(close_to, a, b))
    return a == b


async def post_all(app, path: str, bodies: list[dict]) -> list:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        replies = await asyncio.gather(*(client.post(path, json=b) for b in bodies))
        info = (await client.get("/info")).json()
    return replies, info


@pytest.mark.parametrize("task", ["fill-mask", "classify", "ner", "qa", "embed", "translate"])
def test_concurrent_requests_are_batched_and_answered_as_the_python_api(checkpoints, task):
    folder = checkpoints["fill-mask" if task == "embed" else task]
    predictor = TASKS[task].predictor.from_pretrained(folder, device="cpu")
    app = build_app(predictor, task, str(folder), batch_size=32, max_wait_ms=200)
    bodies = requests_for(task)
    replies, info = asyncio.run(post_all(app, f"/{task}", bodies))
    for body, reply in zip(bodies, replies):
        assert reply.status_code == 200, reply.text
        assert close_to(reply.json()["outputs"], json.loads(json.dumps(python_api(predictor, task, body))))
    stats = info["stats"]
    assert stats["requests"] == len(bodies) and stats["batches"] < len(bodies)  # they shared batches
    assert info["task"] == task and info["device"] == "cpu"


def test_bad_requests_get_clear_errors(checkpoints):
    app = build_app(FillMask.from_pretrained(checkpoints["fill-mask"], device="cpu"), "fill-mask")
    bodies = [
        {"inputs": "no mask here"},
        {"text": "a <mask>"},
        {"inputs": []},
        {"inputs": "a <mask>", "top_k": 0},
    ]
    replies, _ = asyncio.run(post_all(app, "/fill-mask", bodies + [{"inputs": "fine <mask>"}]))
    assert [r.status_code for r in replies] == [400, 422, 422, 422, 200]
    assert "has no <mask>" in replies[0].json()["detail"]
    assert "extra" in replies[1].text.lower() and "inputs" in replies[1].text  # misspelt field named
    assert "empty list" in replies[2].text


def test_a_lone_surrogate_is_a_clear_error_naming_the_field(checkpoints):
    app = build_app(FillMask.from_pretrained(checkpoints["fill-mask"], device="cpu"), "fill-mask")
    bodies = [
        b'{"inputs": "\\ud800"}',  # JSON allows it; no text holds it
        b'{"inputs": ["fine <mask>", "a \\udc00 <mask>"]}',
        b'{"inputs": "fine <mask>", "top_k": "\\ud800"}',  # a field pydantic rejects, echoing it
    ]

    async def post_raw() -> list:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            headers = {"content-type": "application/json"}
            return [await client.post("/fill-mask", content=b, headers=headers) for b in bodies]

    replies = asyncio.run(post_raw())
    assert [r.status_code for r in replies] == [422] * 3
    details = [r.json()["detail"] for r in replies]
    for detail, field in zip(details, ["inputs", "inputs[1]", "top_k"]):
        assert detail.startswith(f"{field} is not valid Unicode text") and "lone surrogate" in detail
    assert "(\\ud800)" in details[0] and "character 2" in details[1]


def test_info_says_the_dtype_the_model_runs_in(checkpoints):
    async def info(app) -> dict:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return (await client.get("/info")).json()

    dtypes = {}
    for dtype in (None, torch.bfloat16, torch.int8):
        predictor = FillMask.from_pretrained(checkpoints["fill-mask"], device="cpu", dtype=dtype)
        dtypes[dtype] = asyncio.run(info(build_app(predictor, "fill-mask")))["dtype"]
    assert dtypes == {None: "float32", torch.bfloat16: "bfloat16", torch.int8: "int8"}


async def get_all(app, paths: list[str]) -> list:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return [await client.get(path) for path in paths]


def test_docs_load_their_scripts_from_this_server(checkpoints):
    app = build_app(FillMask.from_pretrained(checkpoints["fill-mask"], device="cpu"), "fill-mask")
    docs, redoc = asyncio.run(get_all(app, ["/docs", "/redoc"]))
    assert docs.status_code == 200 and redoc.status_code == 200
    scripts = re.findall(r'<script src="([^"]+)"', docs.text + redoc.text)
    styles = re.findall(r'<link type="text/css" rel="stylesheet" href="([^"]+)"', docs.text)
    assert len(scripts) == 2 and len(styles) == 1
    assert all(url.startswith("/docs-assets/") for url in scripts + styles), (scripts, styles)
    assert "http" not in "".join(re.findall(r'(?:src|href)="([^"]+)"', docs.text + redoc.text))
    replies = asyncio.run(get_all(app, scripts + styles))
    assert [r.status_code for r in replies] == [200] * 3
    kinds = [r.headers["content-type"].split(";")[0] for r in replies]
    assert kinds == ["text/javascript", "text/javascript", "text/css"]
    assert "SwaggerUIBundle" in replies[0].text and ".swagger-ui" in replies[2].text


def test_without_fastapi_offline_the_docs_are_fastapis_and_a_log_line_says_so(
    checkpoints, monkeypatch, caplog
):
    monkeypatch.setitem(sys.modules, "fastapi_offline", None)  # import fails
    with caplog.at_level(logging.WARNING, logger="roberta.serve"):
        app = build_app(FillMask.from_pretrained(checkpoints["fill-mask"], device="cpu"), "fill-mask")
    assert "fastapi-offline is not installed" in caplog.text
    (docs,) = asyncio.run(get_all(app, ["/docs"]))
    assert (
        docs.status_code == 200 and "swagger-ui-bundle.js" in docs.text and "/docs-assets/" not in docs.text
    )


def test_qa_needs_one_context_per_question(checkpoints):
    app = build_app(QuestionAnswerer.from_pretrained(checkpoints["qa"], device="cpu"), "qa")
    body = {"question": ["Who?", "Where?"], "context": [CONTEXT]}
    (reply,), _ = asyncio.run(post_all(app, "/qa", [body]))
    assert reply.status_code == 422 and "one context per question" in reply.text


def test_only_the_loaded_task_is_served(checkpoints):
    app = build_app(Classifier.from_pretrained(checkpoints["classify"], device="cpu"), "classify")
    (reply,), _ = asyncio.run(post_all(app, "/fill-mask", [{"inputs": "a <mask>"}]))
    assert reply.status_code == 404
    with pytest.raises(TypeError, match="task 'ner' needs a Tagger"):
        build_app(Classifier.from_pretrained(checkpoints["classify"], device="cpu"), "ner")


def test_the_task_comes_from_the_checkpoint(checkpoints, tmp_path):
    assert {task: task_of(str(folder)) for task, folder in checkpoints.items()} == {t: t for t in checkpoints}
    assert task_of("roberta-small-books") == "fill-mask"  # the built-in model
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertForPreTraining"]}))
    with pytest.raises(ValueError, match="BertForPreTraining, which has no task here; pass --task"):
        task_of(str(tmp_path))


# ---- the command -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_roberta_serve_answers_over_http(checkpoints):
    port = free_port()
    cmd = [sys.executable, "-m", "roberta.cli", "serve", "--model", str(checkpoints["classify"])]
    server = subprocess.Popen(
        [*cmd, "--port", str(port), "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # up to 60 s to import torch and load
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                assert server.poll() is None, server.stdout.read().decode()
                time.sleep(0.1)
        request = urllib.request.Request(
            f"{url}/classify",
            data=json.dumps({"inputs": ["a gripping film", "dull"]}).encode(),
            headers={"content-type": "application/json"},
        )
        outputs = json.loads(urllib.request.urlopen(request, timeout=30).read())["outputs"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    expected = Classifier.from_pretrained(checkpoints["classify"], device="cpu").classify(
        ["a gripping film", "dull"]
    )
    assert close_to(outputs, expected)


def test_serve_with_an_unknown_task_is_one_clear_line(checkpoints, capsys):
    assert main(["serve", "--model", str(checkpoints["classify"]), "--task", "summarize"]) == 2
    assert (
        "unknown task 'summarize'; choose one of fill-mask, classify, ner, qa, multiple-choice, embed, translate"
        in capsys.readouterr().err
    )
