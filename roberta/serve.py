"""An HTTP server for one or several models, with token-budget dynamic batching, back-pressure,
limits, Prometheus metrics and an OpenAI-compatible embeddings route.

    roberta serve                                   # the built-in model: POST /fill-mask
    roberta serve --model runs/sst2/best            # a classifier: POST /classify, /rerank
    roberta serve --model emb=roberta-small-books --task embed --model sst2=runs/sst2/best --task classify

    curl -s localhost:8000/classify -H 'content-type: application/json' -d '{"inputs": "a gripping film"}'
    # {"outputs": {"label": "1", "score": 0.97, "scores": {"0": 0.03, "1": 0.97}}}   (SST-2's labels)

text-embeddings-inference (TEI) is the reference for how a server in front of traffic behaves, and
its defaults are ours:

- Batching by tokens: each model has one worker thread that owns it. It takes the first waiting
  request, gathers those that arrive within `max_wait_ms` while their tokens add up to at most
  `max_batch_tokens` (the sum over texts: the encoder unpads, so padding costs no compute) and
  they number at most `max_batch_requests`, and answers each set of requests with the same options
  with one call of the task's predictor, which sorts the texts by length into forward passes of at
  most `batch_size` texts. Each request gets what it would get alone (`tests/test_serve.py`).
- Back-pressure: past `max_concurrent_requests` requests in flight, a request is refused at once
  with 429 (nothing is queued without bound); a body over `payload_limit` bytes is 413, more than
  `max_client_batch_size` inputs 413, a malformed body 422, an empty list of inputs 400, input the
  task cannot read (a fill-mask text without `<mask>`) 400, an unknown `model` 404, a missing or
  wrong API key 401. Errors are `{"error": message, "error_type": kind}` (OpenAI's shape under
  /v1/). A request whose client went away before its batch ran is dropped, not computed.
- Truncation per request: `truncate` (default: the server's `auto_truncate`, off) and
  `truncation_direction` ("right" or "left"). Without it, an input longer than the model reads is
  413; with it, the text is cut to what the model reads, at its end (right) or its start (left:
  the text is cut before its last tokens, so the model reads its end; not for ner, whose answers
  are character offsets into the text sent).

Routes: `POST /<task>` for each served model's task (the body that task declares —
`Task.request_fields` — plus `model`; replies `{"outputs": ...}` as the Python API returns);
for embedding models `/embed_all` (token vectors), `/similarity` (cosine of a source sentence
with each sentence) and `/v1/embeddings` (OpenAI's request and response); for classifiers
`/rerank` (the classifier as a cross-encoder of query and text); for every model `/tokenize` and
`/decode`; `GET /health`, `/info` (models, settings, counters), `/metrics` (Prometheus text),
`/docs` and `/redoc` (served from here by fastapi-offline, so they work offline). Replies carry
`x-total-time`, `x-tokenization-time`, `x-queue-time`, `x-inference-time` (ms) and
`x-compute-tokens`. With an API key, every route but /health, /metrics and the docs needs
`Authorization: Bearer KEY`.

FastAPI, uvicorn, prometheus_client and fastapi-offline are an optional extra:
`pip install -e ".[serve]"`.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoint's body type from its
# annotation, and the body models are local to build_app, where a string annotation would not resolve.
import asyncio
import base64
import contextlib
import hmac
import json
import logging
import queue
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from roberta.interpret import CASES, METHODS, check_task, explain, explanation_json
from roberta.predict import Predictor
from roberta.quantize import Int8Linear
from roberta.tasks import Task, get_task, help_of, task_of

logger = logging.getLogger(__name__)
DOCS_ASSETS_URL = "/docs-assets"  # where Swagger UI's and ReDoc's files are served
DOCS_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")
PUBLIC = ("/health", "/metrics", "/docs", "/redoc", "/openapi.json", DOCS_ASSETS_URL)  # no API key

# ---- settings and errors -----------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """How the server batches and what it refuses; the defaults are TEI's."""

    max_batch_tokens: int = 16384  # tokens in one predictor call (a larger request goes alone)
    max_batch_requests: int | None = None  # requests in one predictor call; None: the tokens decide
    max_client_batch_size: int = 32  # inputs in one request
    max_concurrent_requests: int = 512  # requests in flight; past it, 429
    payload_limit: int = 2_000_000  # bytes of a request body; past it, 413
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for others
    batch_size: int = 32  # texts per forward pass inside a predictor call
    auto_truncate: bool = False  # what `truncate` is when a request does not say
    api_key: str | None = None  # if set, `Authorization: Bearer <api_key>` on every non-public route

    def __post_init__(self):
        for name in ("max_batch_tokens", "max_client_batch_size", "max_concurrent_requests"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("payload_limit", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_batch_requests is not None and self.max_batch_requests < 1:
            raise ValueError(f"max_batch_requests must be at least 1, got {self.max_batch_requests}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be 0 or more, got {self.max_wait_ms}")
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must not be empty")


# error kind -> HTTP status. TEI's kinds where it has them (overloaded 429, validation 413 for
# limits, empty 400); a malformed body is 422, as FastAPI answers it.
STATUS = {
    "unauthorized": 401,
    "model": 404,
    "empty": 400,
    "input": 400,
    "payload": 413,
    "validation": 422,
    "overloaded": 429,
    "cancelled": 499,
    "backend": 500,
}


class ServeError(Exception):
    """A request refused or failed: its kind (a key of STATUS) and a message for the client."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind, self.message = kind, message

    @property
    def status(self) -> int:
        return STATUS[self.kind]


def error_body(kind: str, message: str, openai: bool = False) -> dict:
    """TEI's error body, or OpenAI's under /v1/."""
    if openai:
        return {"error": {"message": message, "type": kind, "code": STATUS[kind]}}
    return {"error": message, "error_type": kind}


# ---- dynamic batching --------------------------------------------------------------------------


@dataclass(eq=False)
class Job:
    """One request in a batcher: what to run, on which items, and when it waited and ran."""

    op: str  # the computation (a key of the worker's operations), e.g. "task"
    items: list  # the request's texts (or pairs, or (question, context) ...)
    params: tuple  # the computation's options, sorted (key, value) pairs
    tokens: int  # what the request costs against the token budget
    future: Future = field(default_factory=Future)  # the results, one per item, or the exception
    queued: float = field(default_factory=time.perf_counter)
    started: float = 0.0  # perf_counter when its batch started
    finished: float = 0.0


class Batcher:
    """One worker thread that answers requests in batches.

    run(op, items, params) -> one result per item. The requests that arrive within `max_wait_ms`
    of the first are gathered while their tokens add up to at most `max_batch_tokens` and they
    number at most `max_batch_requests` (a request over the budget goes alone); those with the same
    op and params go through one `run` call. When a call fails, each of its requests is run alone,
    so that only the one at fault gets the error. A request whose future was cancelled before its
    batch ran is dropped. At most `max_queue` requests wait (0: no bound); past it submit refuses.
    """

    def __init__(
        self,
        run: Callable[[str, list, dict], list],
        max_batch_tokens: int = 16384,
        max_batch_requests: int | None = None,
        max_wait_ms: float = 5.0,
        max_queue: int = 0,
        on_batch: Callable[[int, int, float], None] | None = None,
    ):
        if max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be at least 1, got {max_batch_tokens}")
        if max_batch_requests is not None and max_batch_requests < 1:
            raise ValueError(f"max_batch_requests must be at least 1, got {max_batch_requests}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be 0 or more, got {max_wait_ms}")
        self.run, self.max_batch_tokens, self.max_batch_requests = run, max_batch_tokens, max_batch_requests
        self.max_wait, self.on_batch = max_wait_ms / 1000, on_batch
        self.stats = {"requests": 0, "batches": 0, "texts": 0, "tokens": 0, "cancelled": 0}
        self._queue: queue.Queue[Job | None] = queue.Queue(max_queue)  # None: stop
        self._held: list[Job | None] = []  # taken from the queue, but it starts the next batch
        self._thread = threading.Thread(target=self._work, name="roberta-batcher", daemon=True)
        self._thread.start()

    def submit(self, items: Sequence, params: dict[str, Any], tokens: int | None = None, op: str = "") -> Job:
        """Queue a request (`tokens`: its cost, default one per item); ServeError("overloaded")
        when the queue is full."""
        job = Job(op, list(items), tuple(sorted(params.items())), len(items) if tokens is None else tokens)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise ServeError("overloaded", "the model's queue is full; retry later") from None
        return job

    @property
    def queue_size(self) -> int:
        """Requests waiting for a batch."""
        return self._queue.qsize() + sum(j is not None for j in self._held)

    def close(self) -> None:
        """Stop the worker once the requests queued so far are answered."""
        self._queue.put(None)
        self._thread.join()

    def _gather(self) -> list[Job] | None:
        """The first waiting request and those that arrive within `max_wait` of it, while they fit
        in the budget; None when it is time to stop."""
        first = self._held.pop() if self._held else self._queue.get()
        if first is None:
            return None
        gathered, tokens = [first], first.tokens
        deadline = time.monotonic() + self.max_wait
        while self.max_batch_requests is None or len(gathered) < self.max_batch_requests:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is not None and job.future.cancelled():
                self.stats["cancelled"] += 1  # its client went away: dropped, it takes no room
                continue
            if job is None or tokens + job.tokens > self.max_batch_tokens:
                self._held.append(job)  # it starts the next gathering
                break
            gathered.append(job)
            tokens += job.tokens
        return gathered

    def _work(self) -> None:
        while (gathered := self._gather()) is not None:
            groups: dict[tuple, list[Job]] = {}
            for job in gathered:
                if job.future.set_running_or_notify_cancel():  # False: cancelled, never computed
                    groups.setdefault((job.op, job.params), []).append(job)
                else:
                    self.stats["cancelled"] += 1
            for batch in groups.values():
                try:
                    self._answer(batch)
                except Exception as e:  # a bug here must not stop the worker or strand the requests
                    for job in batch:
                        if not job.future.done():
                            job.future.set_exception(e)

    def _answer(self, batch: list[Job]) -> None:
        """One `run` call for requests with the same op and params; each alone if that call fails."""
        start = time.perf_counter()
        items = [item for job in batch for item in job.items]
        tokens = sum(job.tokens for job in batch)
        for job in batch:
            job.started = start
        self.stats["batches"] += 1
        self.stats["requests"] += len(batch)
        self.stats["texts"] += len(items)
        self.stats["tokens"] += tokens
        op, params = batch[0].op, dict(batch[0].params)
        try:
            results = self.run(op, items, params)
        except Exception as e:
            results = None
            if len(batch) == 1:
                batch[0].finished = time.perf_counter()
                batch[0].future.set_exception(e)
            else:
                for job in batch:  # find the request at fault
                    try:
                        result = self.run(op, job.items, params)
                    except Exception as e_alone:
                        job.finished = time.perf_counter()
                        job.future.set_exception(e_alone)
                    else:
                        job.finished = time.perf_counter()
                        job.future.set_result(result)
        end = time.perf_counter()
        if self.on_batch is not None:
            self.on_batch(len(items), tokens, end - start)
        if results is None:
            return
        start_item = 0
        for job in batch:
            job.finished = end
            job.future.set_result(results[start_item : start_item + len(job.items)])
            start_item += len(job.items)


# ---- what the server computes, beyond the tasks' own methods --------------------------------------


def token_counts(tokenizer, items: list) -> list[int]:
    """The tokens of each item, special tokens included: a text, a (text, text) pair, or a
    (context, [choices]) item (the sum over its choices)."""
    first = items[0]
    if isinstance(first, str):
        return [len(ids) for ids in tokenizer(items)["input_ids"]]
    if isinstance(first[1], str):
        return [len(ids) for ids in tokenizer([a for a, _ in items], [b for _, b in items])["input_ids"]]
    pairs = [(c, choice) for c, choices in items for choice in choices]
    lengths = iter(token_counts(tokenizer, pairs)) if pairs else iter(())
    return [sum(next(lengths) for _ in choices) for _, choices in items]


def cut_left(tokenizer, text: str, max_length: int) -> str:
    """The end of `text` that the model reads whole: its last `max_length` tokens (special tokens
    included). The cut falls where the token before the first kept one ends, so the kept token
    keeps the space before it and is tokenized as it was."""
    encoding = tokenizer(text, return_offsets_mapping=True)
    offsets = encoding["offset_mapping"][1:-1]  # the text's tokens, without <s> and </s>
    keep = max_length - 2
    if len(offsets) <= keep:
        return text
    first = len(offsets) - keep
    return text[offsets[first - 1][1] :]


def token_vectors(predictor: Predictor, texts: list[str], batch_size: int) -> list:
    """Each text's last-layer vector per token (special tokens included): a list of T lists of C."""
    enc = predictor.tokenizer(texts, truncation=True, max_length=predictor.max_length)

    def vectors(ids: torch.Tensor, mask: torch.Tensor, **types) -> list:
        h = predictor.model(ids, mask, **types).last_hidden_state.float()  # (B, T, C)
        return [h[i, :n].cpu().tolist() for i, n in enumerate(mask.sum(1).tolist())]

    return predictor.run(enc["input_ids"], batch_size, vectors, enc.get("token_type_ids"))


def pair_scores(predictor: Predictor, pairs: list, batch_size: int, raw_scores: bool = False) -> list[float]:
    """A sequence classifier as a cross-encoder: one relevance score per (query, text) pair, the
    pair encoded as `<s> query </s></s> text </s>` (BERT: `[CLS] query [SEP] text [SEP]`, token
    types 0/1). The score is the sigmoid of a one-output head, or the last label's probability;
    raw_scores: that output's logit."""
    queries, texts = [q for q, _ in pairs], [t for _, t in pairs]
    enc = predictor.tokenizer(queries, texts, truncation=True, max_length=predictor.max_length)

    def scores(ids: torch.Tensor, mask: torch.Tensor, **types) -> list:
        logits = predictor.model(ids, mask, **types).logits.float()  # (B, num_labels)
        if raw_scores:
            return logits[:, -1].cpu().tolist()
        if logits.shape[-1] == 1:
            return logits[:, 0].sigmoid().cpu().tolist()
        return logits.softmax(-1)[:, -1].cpu().tolist()

    return predictor.run(enc["input_ids"], batch_size, scores, enc.get("token_type_ids"))


def simple_tokens(tokenizer, texts: list[str], add_special_tokens: bool) -> list[list[dict]]:
    """TEI's /tokenize answer: per text, its tokens as {"id", "text", "special", "start", "stop"}
    (character offsets into the text; None for special tokens)."""
    batch = tokenizer(
        texts,
        add_special_tokens=add_special_tokens,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )
    out = []
    for text, ids, offsets, special in zip(
        texts, batch["input_ids"], batch["offset_mapping"], batch["special_tokens_mask"]
    ):
        tokens = []
        for token_id, (start, stop), is_special in zip(ids, offsets, special):
            if is_special:
                piece, start, stop = tokenizer.convert_ids_to_tokens(token_id), None, None
            else:
                piece = text[start:stop]
            tokens.append(
                {"id": token_id, "text": piece, "special": bool(is_special), "start": start, "stop": stop}
            )
        out.append(tokens)
    return out


# ---- one served model ------------------------------------------------------------------------------


@dataclass
class Served:
    """A model to serve: the name requests pick it by, its predictor and its task."""

    name: str
    predictor: Predictor
    task: str


class Worker:
    """A served model with its batcher: the operations requests can ask of it."""

    def __init__(self, served: Served, settings: Settings, metrics: "Metrics"):
        self.name, self.predictor, self.task = served.name, served.predictor, served.task
        self.spec: Task = get_task(served.task)
        if not isinstance(self.predictor, self.spec.predictor):
            raise TypeError(
                f"task {served.task!r} needs a {self.spec.predictor.__name__}, got {type(self.predictor).__name__}"
            )
        self.batch_size = settings.batch_size
        self.ops: dict[str, Callable[[list, dict], list]] = {
            "task": lambda items, options: self.spec.predict(self.predictor, items, options, self.batch_size),
            "embed_all": lambda items, options: token_vectors(self.predictor, items, self.batch_size),
            "rerank": lambda items, options: pair_scores(self.predictor, items, self.batch_size, **options),
            "explain": lambda items, options: [
                explanation_json(explain(self.task, self.predictor, item, **options)) for item in items
            ],
        }
        self.batcher = Batcher(
            self._run,
            settings.max_batch_tokens,
            settings.max_batch_requests,
            settings.max_wait_ms,
            max_queue=settings.max_concurrent_requests,
            on_batch=metrics.batch_observer(self.name),
        )
        metrics.queue_size.labels(model=self.name).set_function(lambda: self.batcher.queue_size)

    def _run(self, op: str, items: list, options: dict) -> list:
        with warnings.catch_warnings():  # truncation was checked or asked for, per request
            warnings.simplefilter("ignore")
            return self.ops[op](items, options)

    @property
    def max_length(self) -> int:
        return self.predictor.max_length

    def info(self, routes: list[str]) -> dict:
        return {
            "name": self.name,
            "task": self.task,
            "routes": routes,
            "device": str(self.predictor.device),
            "dtype": model_dtype(self.predictor.model),
            "max_input_length": self.max_length,
            "stats": dict(self.batcher.stats),
        }


# ---- metrics ---------------------------------------------------------------------------------------


class Metrics:
    """The Prometheus instruments of one app (its own registry: several apps in one process each
    count their own). Request-level ones by route, model-level ones by model."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        seconds = [0.001 * 2**k for k in range(15)]  # 1 ms .. 16 s
        powers = [2.0**k for k in range(21)]  # 1 .. 1M
        self.requests = Counter("roberta_requests", "requests received", ["route"], registry=r)
        self.success = Counter("roberta_request_success", "requests answered", ["route"], registry=r)
        self.failure = Counter(
            "roberta_request_failure",
            "requests refused or failed, by error kind",
            ["route", "err"],
            registry=r,
        )
        self.duration = Histogram(
            "roberta_request_duration_seconds", "time to answer", ["route"], buckets=seconds, registry=r
        )
        model_histogram = lambda name, doc, buckets: Histogram(  # noqa: E731
            name, doc, ["model"], buckets=buckets, registry=r
        )
        self.tokenization = model_histogram(
            "roberta_request_tokenization_duration_seconds", "time to count and cut tokens", seconds
        )
        self.queue = model_histogram(
            "roberta_request_queue_duration_seconds", "time waiting for a batch", seconds
        )
        self.inference = model_histogram(
            "roberta_request_inference_duration_seconds", "time in the model", seconds
        )
        self.input_tokens = model_histogram("roberta_request_input_tokens", "tokens of one request", powers)
        self.batch_size = model_histogram("roberta_batch_size", "texts in one predictor call", powers[:14])
        self.batch_tokens = model_histogram("roberta_batch_tokens", "tokens in one predictor call", powers)
        self.batch_duration = model_histogram(
            "roberta_batch_inference_duration_seconds", "time of one predictor call", seconds
        )
        self.queue_size = Gauge("roberta_queue_size", "requests waiting for a batch", ["model"], registry=r)
        self.in_flight = Gauge("roberta_requests_in_flight", "requests being answered", registry=r)

    def batch_observer(self, model: str) -> Callable[[int, int, float], None]:
        size, tokens, duration = (
            m.labels(model=model) for m in (self.batch_size, self.batch_tokens, self.batch_duration)
        )

        def observe(texts: int, n_tokens: int, seconds: float) -> None:
            size.observe(texts)
            tokens.observe(n_tokens)
            duration.observe(seconds)

        return observe

    def text(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


# ---- the gate: API key, concurrency and payload limits, request metrics -----------------------------


class Gate:
    """ASGI middleware in front of every route. It refuses, before the body is read, a request
    without the API key (401) and one past `max_concurrent_requests` (429); it reads the body up to
    `payload_limit` bytes (413 past it); and it counts every request of a known route, with its
    outcome (the handler names an error's kind in `scope["roberta.error"]`) and duration."""

    def __init__(self, app, settings: Settings, metrics: Metrics, routes: set[str]):
        self.app, self.settings, self.metrics, self.routes = app, settings, metrics, routes
        self.in_flight = 0
        metrics.in_flight.set_function(lambda: self.in_flight)

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith(PUBLIC):
            return await self.app(scope, receive, send)
        route = path if path in self.routes else "other"  # no label per random path
        if self.settings.api_key is not None and not self.authorized(scope):
            return await self.refuse(
                send, route, "unauthorized", "send the API key: Authorization: Bearer KEY"
            )
        if scope["method"] != "POST":
            return await self.app(scope, receive, send)
        if self.in_flight >= self.settings.max_concurrent_requests:
            return await self.refuse(
                send,
                route,
                "overloaded",
                f"{self.in_flight} requests in flight, the most this server takes; retry later",
            )
        self.in_flight += 1
        start = time.perf_counter()
        status = [500]

        async def send_status(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            body = await read_body(receive, self.settings.payload_limit)
            if body is None:
                return await self.refuse(
                    send,
                    route,
                    "payload",
                    f"the body is over {self.settings.payload_limit:,} bytes, the limit",
                )
            await self.app(scope, replay(body, receive), send_status)
        finally:
            self.in_flight -= 1
            if route != "other" or status[0] != 404:
                self.count(route, status[0], scope.get("roberta.error"), time.perf_counter() - start)

    def authorized(self, scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, key = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(key.strip(), self.settings.api_key)

    def count(self, route: str, status: int, kind: str | None, seconds: float) -> None:
        self.metrics.requests.labels(route=route).inc()
        if status < 400:
            self.metrics.success.labels(route=route).inc()
            self.metrics.duration.labels(route=route).observe(seconds)
        else:
            self.metrics.failure.labels(route=route, err=kind or str(status)).inc()

    async def refuse(self, send, route: str, kind: str, message: str) -> None:
        self.count(route, STATUS[kind], kind, 0.0)
        body = json.dumps(error_body(kind, message, route.startswith("/v1/"))).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if kind == "unauthorized":
            headers.append((b"www-authenticate", b"Bearer"))
        await send({"type": "http.response.start", "status": STATUS[kind], "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def read_body(receive, limit: int) -> bytes | None:
    """The request body, or None once it passes `limit` bytes (the rest is not read)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replay(body: bytes, receive):
    """A `receive` that gives the app the body already read, then what the client sends next
    (its disconnect)."""
    sent = False

    async def receive_again():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receive_again


async def until_answered(job: Job, request) -> list:
    """The job's results; if the client goes away first, the job is cancelled (dropped unless its
    batch already runs) and ServeError("cancelled") raised."""
    answer = asyncio.wrap_future(job.future)
    gone = asyncio.ensure_future(disconnected(request))
    try:
        await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not answer.done():
        answer.cancel()  # cancels the job's future too
        raise ServeError("cancelled", "the client went away")
    return answer.result()


async def disconnected(request) -> None:
    """Returns once the client has gone (the body is read by then, so the next message says so)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


# ---- routes ------------------------------------------------------------------------------------------


@dataclass
class Call:
    """What one request asks of a model: the batcher's op, the items and options, and the reply."""

    op: str | None  # a Worker op; None: answered by `reply` without the model (tokenize, decode)
    items: list
    options: dict
    reply: Callable[[list | None, int], Any]  # (results, tokens) -> the JSON body
    field: str = "inputs"  # the body field the items came from, named in errors
    truncation: str | None = "text"  # "text": texts the truncation options apply to; "pair"; None


@dataclass
class Route:
    """A POST route: its path, body, the tasks of the models that serve it, and how to make a Call."""

    path: str
    fields: dict[str, tuple[Any, dict]]
    tasks: set[str] | None  # None: every model
    prepare: Callable[[dict, Worker], Call]
    summary: str
    truncates: bool = True  # whether the body takes `truncate` and `truncation_direction`


def task_route(spec: Task) -> Route:
    def prepare(fields: dict, worker: Worker) -> Call:
        try:
            items, single, options = spec.request_items(fields)
        except ValueError as e:
            raise ServeError("validation", str(e)) from None
        first = next(iter(spec.request_fields()))
        text = "inputs" in spec.request_fields()
        return Call(
            "task",
            items,
            options,
            lambda results, tokens: {"outputs": results[0] if single else results},
            field=first,
            truncation="text" if text else None,
        )

    return Route(
        f"/{spec.name}",
        spec.request_fields(),
        {spec.name},
        prepare,
        help_of(spec.name),
        "inputs" in spec.request_fields(),
    )


# the model's pooling (a sentence-transformers folder's, else mean), unit length: the cosine is a dot product
EMBED_OPTIONS = {"pooling": None, "normalize": True}


def texts_of(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def embed_all_call(fields: dict, worker: Worker) -> Call:
    return Call("embed_all", texts_of(fields["inputs"]), {}, lambda results, tokens: results)


def similarity_call(fields: dict, worker: Worker) -> Call:
    source, sentences = fields["inputs"]["source_sentence"], fields["inputs"]["sentences"]

    def reply(results: list, tokens: int) -> list[float]:
        vectors = np.asarray(results, dtype=np.float64)  # unit length: the dot product is the cosine
        return (vectors[1:] @ vectors[0]).tolist()

    items = [source, *sentences] if sentences else []  # no sentences: the empty-input error
    return Call("task", items, dict(EMBED_OPTIONS), reply, field="inputs.sentences")


def openai_call(fields: dict, worker: Worker) -> Call:
    texts = texts_of(fields["input"])
    as_base64 = fields["encoding_format"] == "base64"

    def reply(results: list, tokens: int) -> dict:
        def encoded(vector: list[float]):
            return (
                base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode() if as_base64 else vector
            )

        data = [{"object": "embedding", "index": i, "embedding": encoded(v)} for i, v in enumerate(results)]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return {"object": "list", "data": data, "model": worker.name, "usage": usage}

    return Call("task", texts, dict(EMBED_OPTIONS), reply, field="input")


def rerank_call(fields: dict, worker: Worker) -> Call:
    query, texts = fields["query"], fields["texts"]

    def reply(scores: list[float], tokens: int) -> list[dict]:
        ranks = [{"index": i, "score": s} for i, s in enumerate(scores)]
        if fields["return_text"]:
            for rank in ranks:
                rank["text"] = texts[rank["index"]]
        return sorted(ranks, key=lambda r: -r["score"])

    pairs = [(query, t) for t in texts]
    return Call(
        "rerank", pairs, {"raw_scores": fields["raw_scores"]}, reply, field="texts", truncation="pair"
    )


def tokenize_call(fields: dict, worker: Worker) -> Call:
    texts = texts_of(fields["inputs"])
    tokenizer = worker.predictor.tokenizer
    return Call(
        None,
        texts,
        {},
        lambda _, tokens: simple_tokens(tokenizer, texts, fields["add_special_tokens"]),
        truncation=None,
    )


def decode_call(fields: dict, worker: Worker) -> Call:
    ids = fields["ids"]
    rows = [] if not ids else [ids] if isinstance(ids[0], int) else ids
    skip = fields["skip_special_tokens"]
    tokenizer = worker.predictor.tokenizer
    return Call(
        None,
        rows,
        {},
        lambda _, tokens: tokenizer.batch_decode(rows, skip_special_tokens=skip),
        field="ids",
        truncation=None,
    )


def explain_call(fields: dict, worker: Worker) -> Call:
    """One input's attributions (roberta/interpret.py): run by the model's worker thread, so its
    gradient pass never overlaps the batches it also answers."""
    inputs = fields.pop("inputs")
    if worker.task == "qa":
        if not isinstance(inputs, dict) or set(inputs) != {"question", "context"}:
            raise ServeError("validation", 'for qa, inputs is {"question": ..., "context": ...}')
        item = (inputs["question"], inputs["context"])
    elif worker.task == "multiple-choice":
        if not isinstance(inputs, dict) or set(inputs) != {"context", "choices"}:
            raise ServeError(
                "validation", 'for multiple-choice, inputs is {"context": ..., "choices": [...]}'
            )
        item = (inputs["context"], list(inputs["choices"]))
    elif isinstance(inputs, str):
        item = inputs
    else:
        raise ServeError("validation", f"for {worker.task}, inputs is one text")
    try:  # a bad target or method: 422 before the worker spends a gradient pass on it
        check_task(worker.task)
        if fields["method"] not in METHODS:
            raise ValueError(f"unknown method {fields['method']!r}; choose one of {', '.join(METHODS)}")
    except ValueError as e:
        raise ServeError("validation", str(e)) from None
    return Call("explain", [item], fields, lambda results, tokens: results[0], truncation=None)


Texts = str | list[str]


def extra_routes() -> list[Route]:
    """The routes beyond the tasks' own: TEI's and OpenAI's."""
    from pydantic import BaseModel, ConfigDict

    class SimilarityInputs(BaseModel):
        model_config = ConfigDict(extra="forbid")
        source_sentence: str
        sentences: list[str]

    inputs = {"inputs": (Texts, dict(description="the text(s) to read"))}
    return [
        Route("/embed_all", inputs, {"embed"}, embed_all_call, "each token's last-layer vector, per text"),
        Route(
            "/similarity",
            {
                "inputs": (
                    SimilarityInputs,
                    dict(description="a source sentence and the sentences to compare it with"),
                )
            },
            {"embed"},
            similarity_call,
            "cosine similarity of a source sentence with each sentence (the model's pooling)",
        ),
        Route(
            "/v1/embeddings",
            {
                "input": (Texts, dict(description="the text(s) to embed")),
                "encoding_format": (
                    Literal["float", "base64"],
                    dict(default="float", description="float or base64"),
                ),
                "user": (str | None, dict(default=None, description="ignored")),
            },
            {"embed"},
            openai_call,
            "OpenAI-compatible embeddings (the model's pooling, unit length)",
            truncates=False,
        ),
        Route(
            "/rerank",
            {
                "query": (str, dict(description="the query")),
                "texts": (list[str], dict(description="the texts to rank against it")),
                "raw_scores": (bool, dict(default=False, description="logits instead of probabilities")),
                "return_text": (bool, dict(default=False, description="add each text to its rank")),
            },
            {"classify"},
            rerank_call,
            "rank texts by relevance to a query (a classifier as cross-encoder)",
        ),
        Route(
            "/explain",
            {
                "inputs": (
                    str | dict[str, Any],
                    dict(
                        description='one text; qa: {"question", "context"}; multiple-choice: {"context", "choices"}'
                    ),
                ),
                "target": (
                    str | None,
                    dict(default=None, description="what to explain (default: the prediction)"),
                ),
                "method": (str, dict(default="ig", description="ig, grad-input, saliency or rollout")),
                "steps": (
                    int,
                    dict(default=64, ge=1, le=512, description="integrated gradients' path points"),
                ),
                "token_index": (
                    int | None,
                    dict(default=None, ge=0, description="ner: the token to explain"),
                ),
                "views": (bool, dict(default=False, description="also every other method and target")),
            },
            set(CASES),
            explain_call,
            "which tokens made the prediction: attributions per token (integrated gradients, ...)",
            truncates=False,
        ),
        Route(
            "/tokenize",
            {**inputs, "add_special_tokens": (bool, dict(default=True, description="add <s> and </s>"))},
            None,
            tokenize_call,
            "the tokens of each text, with character offsets",
            truncates=False,
        ),
        Route(
            "/decode",
            {
                "ids": (list[int] | list[list[int]], dict(description="token ids, or a list of rows")),
                "skip_special_tokens": (bool, dict(default=True, description="drop <s>, </s>, <pad>")),
            },
            None,
            decode_call,
            "text from token ids",
            truncates=False,
        ),
    ]


# ---- the server ----------------------------------------------------------------------------------------


class Server:
    """The workers, the settings and the metrics behind the app's routes."""

    def __init__(self, workers: list[Worker], settings: Settings, metrics: Metrics):
        self.workers, self.settings, self.metrics = workers, settings, metrics

    def pick(self, route: Route, name: str | None) -> Worker:
        """The model a request names (default: the first that serves the route)."""
        eligible = [w for w in self.workers if route.tasks is None or w.task in route.tasks]
        if name is None:
            return eligible[0]
        for worker in eligible:
            if worker.name == name:
                return worker
        here = ", ".join(f"{w.name} ({w.task})" for w in eligible)
        raise ServeError("model", f"no model {name!r} serves {route.path}; it is served by: {here}")

    def fit(self, worker: Worker, call: Call, truncate: bool, direction: str) -> int:
        """Count the call's tokens, refuse (413) or cut inputs longer than the model reads;
        returns the tokens the model will read."""
        if call.op is None:
            return 0
        tokenizer, limit = worker.predictor.tokenizer, worker.max_length
        lengths = token_counts(tokenizer, call.items)
        if call.truncation is None:
            return sum(lengths)
        too_long = [i for i, n in enumerate(lengths) if n > limit]
        if too_long and not truncate:
            i = too_long[0]
            raise ServeError(
                "payload",
                f"{call.field}[{i}] is {lengths[i]} tokens, more than the {limit} the model reads: "
                'shorten it, or send "truncate": true',
            )
        if too_long and direction == "left":
            call.items = [
                cut_left(tokenizer, t, limit) if n > limit else t for t, n in zip(call.items, lengths)
            ]
        return sum(min(n, limit) for n in lengths)

    async def answer(self, route: Route, fields: dict, request) -> Any:
        """The reply to one request: its body checked, tokens counted, batched, answered."""
        start = time.perf_counter()
        openai = route.path.startswith("/v1/")
        try:
            message = not_unicode(fields)
            if message:
                raise ServeError("validation", message)
            worker = self.pick(route, fields.pop("model"))
            truncate = fields.pop("truncate", None)
            truncate = self.settings.auto_truncate if truncate is None else truncate
            direction = fields.pop("truncation_direction", "right").lower()
            call = route.prepare(fields, worker)
            self.check_size(call, direction, worker)
            tokens = await asyncio.to_thread(self.fit, worker, call, truncate, direction)
            tokenized = time.perf_counter()
            self.metrics.tokenization.labels(model=worker.name).observe(tokenized - start)
            if call.op is not None:
                self.metrics.input_tokens.labels(model=worker.name).observe(tokens)
                job = worker.batcher.submit(call.items, call.options, tokens, call.op)
                results = await self.results(job, request, worker)
                body = call.reply(results, tokens)
                headers = timing_headers(start, tokenized, job, tokens)
            else:
                body = await asyncio.to_thread(call.reply, None, tokens)
                headers = timing_headers(start, tokenized, None, tokens)
        except ServeError as e:
            request.scope["roberta.error"] = e.kind
            return json_response(error_body(e.kind, e.message, openai), status_code=e.status)
        # a Response as it is: FastAPI's generic encoder would walk every float of an embedding
        return json_response(body, headers=headers)

    def check_size(self, call: Call, direction: str, worker: Worker) -> None:
        if not call.items:
            raise ServeError("empty", f"{call.field} is an empty list; send at least one")
        if len(call.items) > self.settings.max_client_batch_size:
            raise ServeError(
                "payload",
                f"{call.field} holds {len(call.items)} inputs, more than the {self.settings.max_client_batch_size} "
                "a request may send; split it",
            )
        if direction == "left" and (
            call.truncation == "pair" or get_task(worker.task).offsets_into_text and call.op == "task"
        ):
            what = (
                "query-text pairs"
                if call.truncation == "pair"
                else f"{worker.task}, whose answers are offsets into the text"
            )
            raise ServeError(
                "validation", f'truncation_direction "left" is not offered for {what}; use "right"'
            )

    async def results(self, job: Job, request, worker: Worker) -> list:
        try:
            results = await until_answered(job, request)
        except (ValueError, TypeError) as e:  # the predictor's message says what was wrong
            raise ServeError("input", str(e)) from None
        except ServeError:
            raise
        except Exception as e:
            logger.exception("model %s failed on a request", worker.name)
            raise ServeError("backend", f"the model failed: {type(e).__name__}: {e}") from None
        self.metrics.queue.labels(model=worker.name).observe(job.started - job.queued)
        self.metrics.inference.labels(model=worker.name).observe(job.finished - job.started)
        return results


def json_response(body: Any, status_code: int = 200, headers: dict[str, str] | None = None):
    """`body` as a JSON reply, written by pydantic's serializer (in Rust; FastAPI's own
    dependency) rather than json.dumps, which walks every float of an embedding in Python.
    NaN and infinities are written as null, as TEI writes them, not as invalid JSON."""
    import pydantic_core
    from fastapi.responses import Response

    content = pydantic_core.to_json(body, inf_nan_mode="null")
    return Response(content, status_code=status_code, headers=headers, media_type="application/json")


def timing_headers(start: float, tokenized: float, job: Job | None, tokens: int) -> dict[str, str]:
    """TEI's timing headers, in milliseconds."""
    ms = lambda seconds: str(round(1000 * max(seconds, 0.0)))  # noqa: E731
    queue_time = job.started - job.queued if job else 0.0
    inference = job.finished - job.started if job else 0.0
    return {
        "x-total-time": ms(time.perf_counter() - start),
        "x-tokenization-time": ms(tokenized - start),
        "x-queue-time": ms(queue_time),
        "x-inference-time": ms(inference),
        "x-compute-tokens": str(tokens),
    }


# ---- the app ---------------------------------------------------------------------------------------


def build_app(
    models: Predictor | Sequence[Served],
    task: str | None = None,
    model_name: str = "",
    settings: Settings | None = None,
    **setting_values,
):
    """The FastAPI app serving `models` with dynamic batching.

    models: a predictor (served for `task`, a name in roberta.tasks.TASKS, under `model_name`), or
        a list of Served (name, predictor, task): several models, one batching worker each;
        requests pick one with their `model` field (default: the first that serves the route).
    settings: a Settings, or its fields as keywords (`max_batch_tokens=...`).
    """
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import Response
    except ImportError:
        raise ImportError('the server needs FastAPI and uvicorn: pip install -e ".[serve]"') from None
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ImportError('the server needs prometheus_client: pip install -e ".[serve]"') from None
    if isinstance(models, Predictor):
        if task is None:
            raise ValueError("name the task the predictor is served for")
        models = [Served(model_name or task, models, task)]
    if not models:
        raise ValueError("serve at least one model")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must differ, got {names}")
    settings = settings or Settings(**setting_values)
    metrics = Metrics()
    workers = [Worker(m, settings, metrics) for m in models]
    server = Server(workers, settings, metrics)
    routes = [task_route(get_task(t)) for t in dict.fromkeys(w.task for w in workers)] + extra_routes()
    routes = [r for r in routes if r.tasks is None or any(w.task in r.tasks for w in workers)]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        for worker in workers:  # at shutdown, once the requests in flight are answered
            worker.batcher.close()

    first = workers[0]
    assets = docs_assets()
    app = FastAPI(
        title=f"roberta: {', '.join(f'{w.name} ({w.task})' for w in workers)}",
        description="dynamically batched: " + ", ".join(r.path for r in routes),
        lifespan=lifespan,
        **({"docs_url": None, "redoc_url": None} if assets else {}),  # else FastAPI's, from a CDN
    )
    if assets:
        add_offline_docs(app, assets)
    add_error_handlers(app)
    for route in routes:
        add_route(app, server, route, Request)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/info")
    async def info() -> dict:
        routes_of = {
            w.name: [r.path for r in routes if r.tasks is None or w.task in r.tasks] for w in workers
        }
        return {
            "model": first.name,  # the first model's, as when one model is served
            "task": first.task,
            "device": str(first.predictor.device),
            "dtype": model_dtype(first.predictor.model),
            "stats": dict(first.batcher.stats),
            "models": [w.info(routes_of[w.name]) for w in workers],
            **{k: v for k, v in vars(settings).items() if k != "api_key"},
            "api_key": settings.api_key is not None,
        }

    @app.get("/metrics")
    async def metrics_text() -> Response:
        body, kind = metrics.text()
        return Response(body, media_type=kind)

    app.add_middleware(Gate, settings=settings, metrics=metrics, routes={r.path for r in routes} | {"/info"})
    app.state.server = server
    return app


def add_route(app, server: Server, route: Route, Request) -> None:
    """POST route.path with its body model; the request goes through server.answer."""
    Body = request_body(route)

    async def endpoint(body: Body, request: Request):  # type: ignore[valid-type]
        return await server.answer(route, body.model_dump(), request)

    app.post(route.path, summary=route.summary)(endpoint)


def add_error_handlers(app) -> None:
    """Malformed bodies: 422 with one line naming each field at fault, in the error body's shape."""
    from fastapi.exceptions import RequestValidationError

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request, exc: RequestValidationError):
        # FastAPI's own answer echoes the input, and a lone surrogate cannot be written as UTF-8
        message = not_unicode(exc.body) or "; ".join(
            f"{'.'.join(str(part) for part in e['loc'] if part != 'body') or 'the body'}: {e['msg']}"
            for e in exc.errors()
        )
        request.scope["roberta.error"] = "validation"
        openai = request.url.path.startswith("/v1/")
        return json_response(error_body("validation", message, openai), status_code=422)


def model_dtype(model: torch.nn.Module) -> str:
    """The dtype `model` runs in: "int8" when it holds int8-quantized layers (roberta.quantize),
    else its floating-point parameters' ("float32", "bfloat16", ...)."""
    tensors = [*model.parameters(), *model.buffers()]
    if any(isinstance(m, Int8Linear) for m in model.modules()) or any(t.dtype == torch.int8 for t in tensors):
        return "int8"
    dtype = next((t.dtype for t in tensors if t.is_floating_point()), torch.float32)
    return str(dtype).removeprefix("torch.")


def not_unicode(value: Any, where: str = "") -> str | None:
    """What is wrong with the first string in a request body (nested lists and dicts included) that
    is not valid Unicode, a lone UTF-16 surrogate ("\\ud800"), which JSON allows but no text is
    made of; None when all are valid. `where` names the field, e.g. `inputs[2]`."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return (
                f"{where or 'the body'} is not valid Unicode text: character {e.start} is a lone surrogate "
                f"(\\u{ord(value[e.start]):04x}), half of a UTF-16 pair; send the whole pair "
                "(e.g. \\ud83d\\ude42 for 🙂) or the text itself in UTF-8"
            )
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            message = not_unicode(key, "a field name") or not_unicode(
                item, f"{where}.{key}" if where else key
            )
            if message:
                return message
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            message = not_unicode(item, f"{where}[{i}]")
            if message:
                return message
    return None


def docs_assets() -> Path | None:
    """The folder of Swagger UI's and ReDoc's files that fastapi-offline ships, or None (with a log
    line) when it is not installed: then /docs and /redoc are FastAPI's, which load them from a CDN."""
    try:
        import fastapi_offline
    except ImportError:
        logger.warning(
            "fastapi-offline is not installed, so /docs and /redoc load their scripts from a CDN and are "
            'blank offline; pip install -e ".[serve]" to serve them from here'
        )
        return None
    folder = Path(fastapi_offline.__file__).parent / "static"
    missing = [name for name in DOCS_FILES if not (folder / name).is_file()]
    if missing:
        logger.warning("fastapi-offline at %s lacks %s; /docs and /redoc load from a CDN", folder, missing)
        return None
    return folder


def add_offline_docs(app, assets: Path) -> None:
    """Serve `assets` (see docs_assets) at DOCS_ASSETS_URL, and /docs and /redoc pages that use them."""
    from fastapi import Request
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
    from fastapi.responses import HTMLResponse
    from fastapi.staticfiles import StaticFiles

    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "") + DOCS_ASSETS_URL
        return get_swagger_ui_html(
            openapi_url=request.scope.get("root_path", "") + app.openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/swagger-ui.css",
            swagger_favicon_url=f"{root}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "") + DOCS_ASSETS_URL
        return get_redoc_html(
            openapi_url=request.scope.get("root_path", "") + app.openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}/redoc.standalone.js",
            redoc_favicon_url=f"{root}/favicon.png",
            with_google_fonts=False,
        )


def request_body(route: Route):
    """The pydantic model of a route's body: its declared fields, `model`, and for text routes
    `truncate` and `truncation_direction`; misspelt fields are errors (422), not ignored."""
    from pydantic import ConfigDict, Field, create_model

    fields = {name: (kind, Field(**options)) for name, (kind, options) in route.fields.items()}
    fields["model"] = (
        str | None,
        Field(default=None, description="the served model to use (default: the first)"),
    )
    if route.truncates:
        fields["truncate"] = (
            bool | None,
            Field(default=None, description="cut inputs longer than the model reads (default: the server's)"),
        )
        fields["truncation_direction"] = (
            Literal["right", "left", "Right", "Left"],
            Field(default="right", description="cut the end (right) or the start (left)"),
        )
    name = "".join(
        part.title() for part in route.path.strip("/").replace("/", "-").replace("_", "-").split("-")
    )
    return create_model(name + "Request", __config__=ConfigDict(extra="forbid"), **fields)


# ---- roberta serve -------------------------------------------------------------------------------


def parse_model(text: str) -> tuple[str, str]:
    """`--model NAME=PATH` -> (NAME, PATH); a bare PATH is named by itself."""
    name, sep, path = text.partition("=")
    if sep and name and path and all(c.isalnum() or c in "._-" for c in name):
        return name, path
    return text, text


def serve(
    models: str | Sequence[str],
    tasks: str | Sequence[str | None] | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: Settings | None = None,
    **predictor_args,
) -> None:
    """Load each model (`NAME=PATH` or `PATH`) for its task (one for all, one per model, or what
    each checkpoint is for) and serve them until interrupted; uvicorn finishes the requests in
    flight at shutdown."""
    try:
        import uvicorn
    except ImportError:
        raise ImportError('the server needs FastAPI and uvicorn: pip install -e ".[serve]"') from None
    models = [models] if isinstance(models, str) else list(models)
    tasks = [tasks] * len(models) if tasks is None or isinstance(tasks, str) else list(tasks)
    if len(tasks) == 1:
        tasks = tasks * len(models)
    if len(tasks) != len(models):
        raise ValueError(f"give one --task for all models or one per --model: {len(tasks)} for {len(models)}")
    served = []
    for spec_text, task in zip(models, tasks):
        name, path = parse_model(spec_text)
        task = task or task_of(path)
        served.append(Served(name, get_task(task).load(path, **predictor_args), task))
    app = build_app(served, settings=settings or Settings())
    uvicorn.run(app, host=host, port=port, log_level="info")
