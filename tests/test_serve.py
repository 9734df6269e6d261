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
import urllib.error
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
from roberta.serve import Batcher, Served, ServeError, Settings, build_app, cut_left, json_response  # noqa: E402
from roberta.tasks import TASKS, Classifier, Embedder, FillMask, QuestionAnswerer, Tagger, task_of  # noqa: E402
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


def recording_run(calls: list, delay: float = 0.0):
    """run(op, items, params) that records each call and answers (item, params) per item; "bad" fails."""

    def run(op: str, items: list, params: dict) -> list:
        calls.append(list(items))
        time.sleep(delay)
        if "bad" in items:
            raise ValueError("bad is not a text this model reads")
        return [(item, params) for item in items]

    return run


def test_requests_that_arrive_together_share_one_call_and_get_their_own_results():
    calls: list = []
    batcher = Batcher(recording_run(calls), max_batch_tokens=1000, max_wait_ms=500)
    jobs = [batcher.submit([f"r{i}a", f"r{i}b"], {"top_k": 3}, tokens=10) for i in range(10)]
    results = [j.future.result(timeout=10) for j in jobs]
    batcher.close()
    assert len(calls) == 1 and len(calls[0]) == 20  # one call for all ten requests
    assert results == [[(f"r{i}a", {"top_k": 3}), (f"r{i}b", {"top_k": 3})] for i in range(10)]
    assert batcher.stats == {"requests": 10, "batches": 1, "texts": 20, "tokens": 100, "cancelled": 0}
    assert all(j.queued <= j.started <= j.finished for j in jobs)


def test_batches_keep_to_the_token_budget_the_request_count_and_one_set_of_parameters():
    calls: list = []
    batcher = Batcher(recording_run(calls), max_batch_tokens=40, max_wait_ms=300)
    tokens_params = [(10, 1), (10, 2), (20, 1), (30, 1), (60, 1), (5, 2)]  # 60 > 40: a batch of its own
    jobs = [batcher.submit([f"t{i}"], {"k": k}, tokens=n) for i, (n, k) in enumerate(tokens_params)]
    for job, (_, k) in zip(jobs, tokens_params):
        assert job.future.result(timeout=10) == [(job.items[0], {"k": k})]
    batcher.close()
    # gathered in arrival order while they fit in 40 tokens: [t0 t1 t2], then [t3], [t4], [t5]
    # (30 + 60 and 60 + 5 do not fit); each gathering runs once per set of parameters
    assert calls == [["t0", "t2"], ["t1"], ["t3"], ["t4"], ["t5"]]
    assert batcher.stats["batches"] == 5 and batcher.stats["tokens"] == 135

    calls.clear()
    batcher = Batcher(recording_run(calls), max_batch_tokens=1000, max_batch_requests=2, max_wait_ms=300)
    jobs = [batcher.submit([i], {}) for i in range(5)]
    [j.future.result(timeout=10) for j in jobs]
    batcher.close()
    assert calls == [[0, 1], [2, 3], [4]]


def test_a_bad_request_fails_alone_and_its_batchmates_are_answered():
    calls: list = []
    batcher = Batcher(recording_run(calls), max_wait_ms=300)
    good1, bad, good2 = (batcher.submit(items, {}).future for items in (["a"], ["x", "bad"], ["b"]))
    assert good1.result(timeout=10) == [("a", {})] and good2.result(timeout=10) == [("b", {})]
    with pytest.raises(ValueError, match="bad is not a text"):
        bad.result(timeout=10)
    batcher.close()
    assert calls[0] == ["a", "x", "bad", "b"]  # together first, then each alone
    assert calls[1:] == [["a"], ["x", "bad"], ["b"]]


def test_close_answers_what_was_queued_first():
    calls: list = []
    batcher = Batcher(recording_run(calls), max_batch_requests=1, max_wait_ms=0)
    jobs = [batcher.submit([i], {}) for i in range(5)]
    batcher.close()
    assert [j.future.result(timeout=0) for j in jobs] == [[(i, {})] for i in range(5)]


def test_a_cancelled_request_is_not_computed_and_a_full_queue_refuses_at_once():
    calls: list = []
    batcher = Batcher(recording_run(calls, delay=0.3), max_batch_requests=1, max_wait_ms=0, max_queue=2)
    running = batcher.submit(["first"], {})
    time.sleep(0.1)  # the worker is busy with it
    gone, kept = batcher.submit(["gone"], {}), batcher.submit(["kept"], {})
    with pytest.raises(ServeError, match="queue is full") as refused:
        batcher.submit(["third"], {})  # two wait already
    assert refused.value.status == 429
    assert gone.future.cancel()  # its client went away before its batch ran
    assert kept.future.result(timeout=10) == [("kept", {})] and running.future.result(timeout=10)
    batcher.close()
    assert calls == [["first"], ["kept"]]
    assert batcher.stats["cancelled"] == 1 and batcher.stats["requests"] == 2


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="max_batch_tokens must be at least 1"):
        Batcher(lambda op, items, params: items, max_batch_tokens=0)
    with pytest.raises(ValueError, match="max_wait_ms must be 0 or more"):
        Batcher(lambda op, items, params: items, max_wait_ms=-1)
    with pytest.raises(ValueError, match="max_concurrent_requests must be at least 1"):
        Settings(max_concurrent_requests=0)
    with pytest.raises(ValueError, match="max_batch_requests must be at least 1"):
        Settings(max_batch_requests=0)


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
    tokenizer.save_pretrained(root / "mlm-short")
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
    assert [r.status_code for r in replies] == [400, 422, 400, 422, 200]
    errors = [r.json() for r in replies[:4]]
    assert [e["error_type"] for e in errors] == ["input", "validation", "empty", "validation"]
    assert "has no <mask>" in errors[0]["error"]
    assert "text: Extra inputs are not permitted" in errors[1]["error"]  # misspelt field named
    assert "inputs: Field required" in errors[1]["error"]
    assert errors[2]["error"] == "inputs is an empty list; send at least one"
    assert errors[3]["error"].startswith("top_k: ")


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
    details = [r.json()["error"] for r in replies]
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
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["ElectraForPreTraining"]}))
    with pytest.raises(ValueError, match="ElectraForPreTraining, which has no task here; pass --task"):
        task_of(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertForPreTraining"]}))
    assert task_of(str(tmp_path)) == "fill-mask"  # BERT's pretraining checkpoint holds its masked LM


# ---- limits, back-pressure, truncation ----------------------------------------------------------


LONG = " ".join(f"word{i % 97} and" for i in range(400))  # ~1,000 tokens: more than the 512 read


@pytest.fixture(scope="module")
def embedder(checkpoints):
    return Embedder.from_pretrained(checkpoints["fill-mask"], device="cpu")


async def send(app, requests: list[tuple[str, str, dict]], headers: dict | None = None) -> list:
    """(method, path, json or None) each, all at once."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=headers) as client:
        return await asyncio.gather(*(client.request(m, path, json=body) for m, path, body in requests))


def test_every_limit_has_its_status_and_a_json_error(embedder):
    app = build_app(embedder, "embed", "emb", max_client_batch_size=4, max_batch_tokens=64)
    too_big = {"inputs": "x" * 2_000_001}  # over the 2,000,000-byte body limit
    replies = asyncio.run(
        send(
            app,
            [
                ("POST", "/embed", {"inputs": ["a"] * 5}),  # more inputs than a request may send
                ("POST", "/embed", too_big),
                ("POST", "/embed", {"inputs": LONG}),  # longer than the model reads, truncate not asked
                ("POST", "/embed", {"inputs": LONG, "truncate": True}),  # over the batch budget: alone
                ("POST", "/embed", {"inputs": "a", "model": "nope"}),
                ("POST", "/embed", {"inputs": "a", "truncation_direction": "up"}),
                ("POST", "/embed", {"inputs": []}),
            ],
        )
    )
    assert [r.status_code for r in replies] == [413, 413, 413, 200, 404, 422, 400]
    kinds = [r.json().get("error_type") for r in replies]
    assert kinds == ["payload", "payload", "payload", None, "model", "validation", "empty"]
    assert "5 inputs, more than the 4" in replies[0].json()["error"]
    assert "over 2,000,000 bytes" in replies[1].json()["error"]
    assert "more than the 512 the model reads" in replies[2].json()["error"] and "truncate" in replies[2].text
    assert "no model 'nope' serves /embed; it is served by: emb (embed)" in replies[4].json()["error"]
    with pytest.warns(UserWarning, match="truncated"):
        expected = embedder.embed(LONG).tolist()
    assert close_to(replies[3].json()["outputs"], expected)  # cut at the end


def test_past_max_concurrent_requests_a_request_gets_429_at_once(embedder):
    app = build_app(embedder, "embed", max_concurrent_requests=2, max_wait_ms=400)
    start = time.perf_counter()
    replies = asyncio.run(send(app, [("POST", "/embed", {"inputs": f"text {i}"}) for i in range(6)]))
    codes = [r.status_code for r in replies]
    assert sorted(codes) == [200, 200, 429, 429, 429, 429]
    refused = [r for r in replies if r.status_code == 429]
    assert all(r.json()["error_type"] == "overloaded" for r in refused)
    assert time.perf_counter() - start < 5
    (after,) = asyncio.run(send(app, [("POST", "/embed", {"inputs": "again"})]))
    assert after.status_code == 200  # the slots are free again


async def disconnecting_post(app, path: str, body: dict) -> list:
    """POST through the raw ASGI interface as a client that goes away right after sending."""
    messages = [{"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}]
    sent: list = []

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.sleep(0.05)
        return {"type": "http.disconnect"}

    async def send_message(message):
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"host", b"test")],
        "client": ("127.0.0.1", 1), "server": ("test", 80),
    }  # fmt: skip
    await app(scope, receive, send_message)
    return sent


def test_a_request_whose_client_went_away_is_not_computed(embedder):
    app = build_app(embedder, "embed", max_wait_ms=300)  # the batch waits: the client leaves first
    asyncio.run(disconnecting_post(app, "/embed", {"inputs": "nobody waits for this"}))
    stats = app.state.server.workers[0].batcher.stats
    for _ in range(50):
        if stats["cancelled"]:
            break
        time.sleep(0.05)
    assert stats["cancelled"] == 1 and stats["requests"] == 0 and stats["batches"] == 0
    (metrics,) = asyncio.run(send(app, [("GET", "/metrics", None)]))
    assert 'roberta_request_failure_total{err="cancelled",route="/embed"} 1.0' in metrics.text


def test_truncation_per_request_right_and_left(checkpoints, embedder):
    app = build_app(embedder, "embed", auto_truncate=True)  # the server's default: truncate
    ner = build_app(Tagger.from_pretrained(checkpoints["ner"], device="cpu"), "ner")
    bodies = [
        {"inputs": LONG},
        {"inputs": LONG, "truncation_direction": "left"},
        {"inputs": LONG, "truncate": False},
    ]
    right, left, refused = asyncio.run(send(app, [("POST", "/embed", b) for b in bodies]))
    assert right.status_code == 200 and left.status_code == 200 and refused.status_code == 413
    tokenizer = embedder.tokenizer
    ids = tokenizer(LONG)["input_ids"]
    kept = tokenizer(cut_left(tokenizer, LONG, 512))["input_ids"]
    assert kept[1:-1] == ids[-511:-1]  # the last 510 tokens, as they were tokenized in the whole text
    assert right.headers["x-compute-tokens"] == left.headers["x-compute-tokens"] == "512"
    assert close_to(left.json()["outputs"], embedder.embed(cut_left(tokenizer, LONG, 512)).tolist())
    assert not close_to(left.json()["outputs"], right.json()["outputs"])
    (reply,) = asyncio.run(
        send(ner, [("POST", "/ner", {"inputs": LONG, "truncate": True, "truncation_direction": "left"})])
    )
    assert reply.status_code == 422 and "offsets into the text" in reply.json()["error"]


def test_token_budget_batches_requests_with_different_options_correctly(embedder):
    app = build_app(embedder, "embed", max_batch_tokens=48, max_wait_ms=200)
    bodies = [{"inputs": TEXTS[i % len(TEXTS)], "normalize": i % 2 == 0} for i in range(12)]
    replies = asyncio.run(send(app, [("POST", "/embed", b) for b in bodies]))
    for body, reply in zip(bodies, replies):
        expected = embedder.embed(body["inputs"], normalize=body["normalize"]).tolist()
        assert reply.status_code == 200 and close_to(reply.json()["outputs"], expected)
    stats = app.state.server.workers[0].batcher.stats
    assert 2 <= stats["batches"] < 12 and stats["tokens"] == sum(
        int(r.headers["x-compute-tokens"]) for r in replies
    )


# ---- metrics, headers, API key ---------------------------------------------------------------------


def test_metrics_parse_and_count_requests_batches_and_failures(embedder):
    from prometheus_client.parser import text_string_to_metric_families

    app = build_app(embedder, "embed", max_wait_ms=100)
    bodies = [{"inputs": "one"}, {"inputs": ["two", "three"]}, {"inputs": []}, {"inptus": "x"}]
    replies = asyncio.run(send(app, [("POST", "/embed", b) for b in bodies]))
    assert [r.status_code for r in replies] == [200, 200, 400, 422]
    for reply in replies[:2]:
        times = {h: int(reply.headers[h]) for h in ("x-total-time", "x-queue-time", "x-inference-time")}
        assert all(t >= 0 for t in times.values()) and times["x-total-time"] >= times["x-inference-time"]
    assert replies[1].headers["x-compute-tokens"] == str(
        len(embedder.tokenizer(["two", "three"])["input_ids"][0]) * 2
    )
    (metrics,) = asyncio.run(send(app, [("GET", "/metrics", None)]))
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(metrics.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    route, model = (("route", "/embed"),), (("model", "embed"),)
    assert samples[("roberta_requests_total", route)] == 4
    assert samples[("roberta_request_success_total", route)] == 2
    assert samples[("roberta_request_failure_total", (("err", "empty"), ("route", "/embed")))] == 1
    assert samples[("roberta_request_failure_total", (("err", "validation"), ("route", "/embed")))] == 1
    assert samples[("roberta_request_duration_seconds_count", route)] == 2
    for name in ("tokenization", "queue", "inference"):
        assert samples[(f"roberta_request_{name}_duration_seconds_count", model)] == 2
    assert samples[("roberta_batch_size_sum", model)] == 3  # texts
    assert samples[("roberta_batch_tokens_sum", model)] == int(replies[0].headers["x-compute-tokens"]) + int(
        replies[1].headers["x-compute-tokens"]
    )
    assert samples[("roberta_queue_size", model)] == 0


def test_the_api_key_is_needed_everywhere_but_health_and_metrics(embedder):
    app = build_app(embedder, "embed", api_key="s3cret")
    requests = [
        ("POST", "/embed", {"inputs": "a"}),
        ("GET", "/info", None),
        ("GET", "/health", None),
        ("GET", "/metrics", None),
    ]
    without = asyncio.run(send(app, requests))
    wrong = asyncio.run(send(app, requests[:1], headers={"authorization": "Bearer nope"}))
    right = asyncio.run(send(app, requests, headers={"authorization": "Bearer s3cret"}))
    assert [r.status_code for r in without] == [401, 401, 200, 200]
    assert (
        without[0].json()["error_type"] == "unauthorized"
        and without[0].headers["www-authenticate"] == "Bearer"
    )
    assert wrong[0].status_code == 401
    assert [r.status_code for r in right] == [200] * 4 and right[1].json()["api_key"] is True


# ---- TEI's and OpenAI's routes ---------------------------------------------------------------------


def test_openai_embeddings_with_the_openai_client(embedder):
    openai = pytest.importorskip("openai")
    app = build_app(embedder, "embed", "emb")

    async def create(**kwargs):
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
        client = openai.AsyncOpenAI(
            api_key="unused", base_url="http://test/v1", http_client=http, max_retries=0
        )
        async with http:
            return await client.embeddings.create(**kwargs)

    texts = ["a gripping film", "dull and slow", "Hi"]
    expected = embedder.embed(texts).tolist()
    as_base64 = asyncio.run(create(model="emb", input=texts))  # the client asks for base64 and decodes it
    as_floats = asyncio.run(create(model="emb", input=texts, encoding_format="float"))
    for reply in (as_base64, as_floats):
        assert reply.object == "list" and reply.model == "emb"
        assert [d.index for d in reply.data] == [0, 1, 2] and all(d.object == "embedding" for d in reply.data)
        assert close_to([[float(x) for x in d.embedding] for d in reply.data], expected)
    tokens = sum(len(ids) for ids in embedder.tokenizer(texts)["input_ids"])
    assert as_floats.usage.prompt_tokens == as_floats.usage.total_tokens == tokens
    single = asyncio.run(create(model="emb", input="Hi", encoding_format="float"))
    assert close_to(single.data[0].embedding, expected[2])
    with pytest.raises(openai.NotFoundError, match="no model 'text-embedding-3-small'"):
        asyncio.run(create(model="text-embedding-3-small", input="Hi"))


def test_embed_all_similarity_tokenize_and_decode(embedder):
    app = build_app(embedder, "embed")
    texts = ["A short one.", "Hi"]
    similarity = {"inputs": {"source_sentence": "A film", "sentences": ["A movie", "A cat", "A film"]}}
    ids = embedder.tokenizer(texts)["input_ids"]
    all_, sim, tok, dec, empty = asyncio.run(
        send(
            app,
            [
                ("POST", "/embed_all", {"inputs": texts}),
                ("POST", "/similarity", similarity),
                ("POST", "/tokenize", {"inputs": "Hello world"}),
                ("POST", "/decode", {"ids": ids, "skip_special_tokens": True}),
                ("POST", "/similarity", {"inputs": {"source_sentence": "A", "sentences": []}}),
            ],
        )
    )
    with torch.no_grad():
        for text, vectors in zip(texts, all_.json()):
            row = torch.tensor([embedder.tokenizer(text)["input_ids"]])
            assert close_to(vectors, embedder.model(row).last_hidden_state[0].tolist())
    v = embedder.embed([similarity["inputs"]["source_sentence"], *similarity["inputs"]["sentences"]])
    assert close_to(sim.json(), (v[1:] @ v[0]).tolist()) and abs(sim.json()[2] - 1) < 1e-5
    assert tok.json() == [
        [
            {"id": 0, "text": "<s>", "special": True, "start": None, "stop": None},
            {"id": 31414, "text": "Hello", "special": False, "start": 0, "stop": 5},
            {"id": 232, "text": "world", "special": False, "start": 6, "stop": 11},
            {"id": 2, "text": "</s>", "special": True, "start": None, "stop": None},
        ]
    ]
    assert dec.json() == texts
    assert empty.status_code == 400 and empty.json()["error_type"] == "empty"


def test_rerank_scores_query_text_pairs_with_a_classifier(checkpoints):
    classifier = Classifier.from_pretrained(checkpoints["classify"], device="cpu")
    app = build_app(classifier, "classify")
    texts = ["Berlin is in Germany.", "Cats purr.", "Merkel met Macron in Berlin."]
    bodies = [
        {"query": "Where did Merkel meet Macron?", "texts": texts, "return_text": True},
        {"query": "q", "texts": texts, "raw_scores": True},
    ]
    ranked, raw = asyncio.run(send(app, [("POST", "/rerank", b) for b in bodies]))
    tok = classifier.tokenizer
    with torch.no_grad():
        batch = tok([bodies[0]["query"]] * 3, texts, padding=True, return_tensors="pt")
        expected = classifier.model(batch["input_ids"], batch["attention_mask"]).logits.softmax(-1)[:, -1]
        batch = tok(["q"] * 3, texts, padding=True, return_tensors="pt")
        logits = classifier.model(batch["input_ids"], batch["attention_mask"]).logits[:, -1]
    order = sorted(range(3), key=lambda i: -expected[i])
    assert [r["index"] for r in ranked.json()] == order
    assert close_to([r["score"] for r in ranked.json()], [expected[i].item() for i in order])
    assert [r["text"] for r in ranked.json()] == [texts[i] for i in order]
    assert (
        close_to(sorted(r["score"] for r in raw.json()), sorted(logits.tolist()))
        and "text" not in raw.json()[0]
    )


def test_explain_gives_the_python_apis_attributions_and_refuses_what_it_cannot(checkpoints):
    from roberta.interpret import explain, explanation_json
    from roberta.tasks import QuestionAnswerer

    classifier = Classifier.from_pretrained(checkpoints["classify"], device="cpu")
    app = build_app(classifier, "classify")
    bodies = [
        {"inputs": "a gripping film", "method": "ig", "steps": 16},
        {"inputs": "a gripping film", "target": "neg", "method": "grad-input"},
        {"inputs": "a gripping film", "target": "happy"},
        {"inputs": "a gripping film", "method": "lime"},
        {"inputs": ["a", "b"]},
    ]
    replies = asyncio.run(send(app, [("POST", "/explain", b) for b in bodies]))
    assert [r.status_code for r in replies[:2]] == [200, 200]
    want = explanation_json(
        explain("classify", classifier, "a gripping film", method="ig", steps=16, views=False)
    )
    got = replies[0].json()
    assert got["tokens"] == want["tokens"] and close_to(got["attributions"], want["attributions"])
    assert abs(got["delta"]) < 1e-2 * max(1.0, abs(sum(want["attributions"])))
    assert replies[1].json()["target"] == "neg"
    assert replies[2].status_code in (400, 422) and "neg" in replies[2].text  # the labels are listed
    assert replies[3].status_code == 422 and "unknown method 'lime'" in replies[3].text
    assert replies[4].status_code == 422
    qa = QuestionAnswerer.from_pretrained(checkpoints["qa"], device="cpu")
    (reply,) = asyncio.run(
        send(
            build_app(qa, "qa"), [("POST", "/explain", {"inputs": {"question": "Who?", "context": CONTEXT}})]
        )
    )
    assert reply.status_code == 200 and len(reply.json()["attributions"]) == len(reply.json()["tokens"])


# ---- several models ---------------------------------------------------------------------------------


def test_several_models_each_with_its_worker_picked_by_the_model_field(checkpoints, embedder):
    other = Embedder.from_pretrained(
        checkpoints["fill-mask"].parent / "mlm-short", device="cpu"
    )  # other weights, 32 tokens
    classifier = Classifier.from_pretrained(checkpoints["classify"], device="cpu")
    models = [
        Served("emb", embedder, "embed"),
        Served("cls", classifier, "classify"),
        Served("short", other, "embed"),
    ]
    app = build_app(models, max_wait_ms=50)
    requests = [
        ("POST", "/embed", {"inputs": "a text"}),  # the first embedding model
        ("POST", "/embed", {"inputs": "a text", "model": "short"}),
        ("POST", "/classify", {"inputs": "a text"}),
        ("POST", "/v1/embeddings", {"input": "a text", "model": "short"}),
        ("POST", "/embed", {"inputs": "a text", "model": "cls"}),  # not an embedding model
        ("POST", "/rerank", {"query": "q", "texts": ["a"], "model": "cls"}),
        ("POST", "/tokenize", {"inputs": "a text", "model": "cls"}),
    ]
    replies = asyncio.run(send(app, requests))
    assert [r.status_code for r in replies] == [200, 200, 200, 200, 404, 200, 200]
    assert close_to(replies[0].json()["outputs"], embedder.embed("a text").tolist())
    assert close_to(replies[1].json()["outputs"], other.embed("a text").tolist())
    assert not close_to(replies[0].json()["outputs"], replies[1].json()["outputs"])
    assert close_to(replies[2].json()["outputs"], classifier.classify("a text"))
    assert close_to(replies[3].json()["data"][0]["embedding"], other.embed("a text").tolist())
    assert "it is served by: emb (embed), short (embed)" in replies[4].json()["error"]
    info = asyncio.run(send(app, [("GET", "/info", None)]))[0].json()
    assert [(m["name"], m["task"], m["max_input_length"]) for m in info["models"]] == [
        ("emb", "embed", 512), ("cls", "classify", 512), ("short", "embed", 32)
    ]  # fmt: skip
    assert "/rerank" in info["models"][1]["routes"] and "/similarity" not in info["models"][1]["routes"]
    assert [m["stats"]["requests"] for m in info["models"]] == [1, 2, 2]  # each worker its own


# ---- the command -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_roberta_serve_answers_over_http_with_two_models_and_an_api_key(checkpoints):
    port = free_port()
    cmd = [sys.executable, "-m", "roberta.cli", "serve", "--device", "cpu", "--port", str(port)]
    cmd += ["--model", f"sst={checkpoints['classify']}", "--model", f"emb={checkpoints['fill-mask']}"]
    cmd += ["--task", "classify", "--task", "embed", "--max-batch-tokens", "4096"]
    server = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "ROBERTA_API_KEY": "k"},
    )
    url = f"http://127.0.0.1:{port}"

    def post(path: str, body: dict, key: str | None = "k"):
        headers = {"content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {})}
        request = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode(), headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    try:
        for _ in range(600):  # up to 60 s to import torch and load
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                assert server.poll() is None, server.stdout.read().decode()
                time.sleep(0.1)
        classified = post("/classify", {"inputs": ["a gripping film", "dull"]})
        embedded = post("/embed", {"inputs": "dull", "model": "emb"})
        refused = post("/classify", {"inputs": "dull"}, key=None)
        metrics = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    finally:
        server.terminate()
        server.wait(timeout=30)
    expected = Classifier.from_pretrained(checkpoints["classify"], device="cpu").classify(
        ["a gripping film", "dull"]
    )
    assert classified[0] == 200 and close_to(classified[1]["outputs"], expected)
    expected = Embedder.from_pretrained(checkpoints["fill-mask"], device="cpu").embed("dull").tolist()
    assert embedded[0] == 200 and close_to(embedded[1]["outputs"], expected)
    assert refused[0] == 401 and refused[1]["error_type"] == "unauthorized"
    assert 'roberta_request_success_total{route="/classify"} 1.0' in metrics


def test_serve_with_an_unknown_task_is_one_clear_line(checkpoints, capsys):
    assert main(["serve", "--model", str(checkpoints["classify"]), "--task", "summarize"]) == 2
    assert (
        "unknown task 'summarize'; choose one of fill-mask, classify, ner, qa, multiple-choice, embed, translate"
        in capsys.readouterr().err
    )


def test_replies_are_json_with_nan_as_null_and_text_unescaped():
    reply = json_response({"outputs": [0.5, float("nan"), float("inf")], "label": "café"}, 201, {"x-a": "1"})
    assert reply.status_code == 201 and reply.headers["x-a"] == "1"
    assert reply.headers["content-type"] == "application/json"
    assert json.loads(reply.body) == {"outputs": [0.5, None, None], "label": "café"}
    vector = torch.randn(768, generator=torch.Generator().manual_seed(0)).tolist()
    assert json.loads(json_response(vector).body) == vector  # every float round-trips exactly
