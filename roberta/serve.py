"""An HTTP server for one model, with dynamic batching.

    roberta serve                                   # the built-in model: POST /fill-mask
    roberta serve --model runs/sst2/best            # a classifier: POST /classify

    curl -s localhost:8000/classify -H 'content-type: application/json' -d '{"inputs": "a gripping film"}'
    # {"outputs": {"label": "1", "score": 0.97, "scores": {"0": 0.03, "1": 0.97}}}   (SST-2's labels)

Each request is a few texts; a forward pass is cheap per text only when it holds many. So requests
are not run one by one: a single worker thread owns the model, takes the first waiting request,
gathers every request that arrives within `max_wait_ms` (up to `max_batch_size` texts), and answers
them all with one call of the task's predictor (`roberta/tasks/`), which sorts the texts by
length into forward passes. Results are the ones the Python API gives for each request alone
(`tests/test_serve.py`), whatever else shared its batch.

Endpoints: `POST /<task>` (the loaded model's task, any of roberta/tasks/' registry; its body
is what the task declares — `Task.request_fields`: `inputs` a text or a list and the Python
method's options for most, `question` and `context` for qa; `outputs` one result or a list),
`GET /health`, `GET /info` (model, task, device, the dtype the model runs in, batching settings
and counters: requests, batches, texts), and the API's pages `GET /docs` (Swagger UI) and
`GET /redoc`, whose scripts are served from here (fastapi-offline's copies), so they work offline.
Malformed bodies get 422 with what was wrong (a text holding a lone surrogate, `"\\ud800"`, is
one); input the task cannot take (a fill-mask text without `<mask>`) gets 400 with the predictor's
message, and only that request fails, not its batchmates.

FastAPI, uvicorn and fastapi-offline are an optional extra: `pip install -e ".[serve]"`.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoint's body type from its
# annotation, and the body model is local to build_app, where a string annotation would not resolve.
import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from roberta.predict import Predictor
from roberta.quantize import Int8Linear
from roberta.tasks import Task, get_task, task_of

logger = logging.getLogger(__name__)
DOCS_ASSETS_URL = "/docs-assets"  # where Swagger UI's and ReDoc's files are served
DOCS_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")

# ---- dynamic batching --------------------------------------------------------------------------


@dataclass
class Request:
    items: list  # the request's texts (or (question, context) pairs)
    params: tuple  # the task method's other arguments, sorted (key, value) pairs
    future: Future = field(default_factory=Future)


class Batcher:
    """One worker thread that answers requests in batches.

    run(items, params) -> one result per item: the task's predictor on a list of texts. The
    requests that arrive within `max_wait_ms` of the first, up to `max_batch_size` items in all (a
    larger request goes alone), are gathered; those with the same params go through one `run` call.
    When a call fails, each of its requests is run alone, so that only the one at fault gets the error.
    """

    def __init__(self, run: Callable[[list, dict], list], max_batch_size: int = 32, max_wait_ms: float = 5.0):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be 0 or more, got {max_wait_ms}")
        self.run, self.max_batch_size, self.max_wait = run, max_batch_size, max_wait_ms / 1000
        self.stats = {"requests": 0, "batches": 0, "texts": 0}
        self._queue: queue.Queue[Request | None] = queue.Queue()  # None: stop
        self._held: list[Request | None] = []  # taken from the queue, but it starts the next batch
        self._thread = threading.Thread(target=self._work, name="roberta-batcher", daemon=True)
        self._thread.start()

    def submit(self, items: Sequence, params: dict[str, Any]) -> Future:
        """Queue a request; its future gets the list of results, one per item, or the exception."""
        request = Request(list(items), tuple(sorted(params.items())))
        self._queue.put(request)
        return request.future

    def close(self) -> None:
        """Stop the worker once the requests queued so far are answered."""
        self._queue.put(None)
        self._thread.join()

    def _gather(self) -> list[Request] | None:
        """The first waiting request and those that arrive within `max_wait` of it, while they fit
        in `max_batch_size` items; None when it is time to stop."""
        first = self._held.pop() if self._held else self._queue.get()
        if first is None:
            return None
        gathered, size = [first], len(first.items)
        deadline = time.monotonic() + self.max_wait
        while size < self.max_batch_size:
            try:
                request = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if request is None or size + len(request.items) > self.max_batch_size:
                self._held.append(request)  # it starts the next gathering
                break
            gathered.append(request)
            size += len(request.items)
        return gathered

    def _work(self) -> None:
        while (gathered := self._gather()) is not None:
            by_params: dict[tuple, list[Request]] = {}
            for r in gathered:
                by_params.setdefault(r.params, []).append(r)
            for batch in by_params.values():
                self._answer(batch)

    def _answer(self, batch: list[Request]) -> None:
        """One `run` call for requests with the same params; each alone if that call fails."""
        self.stats["batches"] += 1
        self.stats["requests"] += len(batch)
        self.stats["texts"] += sum(len(r.items) for r in batch)
        try:
            results = self.run([item for r in batch for item in r.items], dict(batch[0].params))
        except Exception as e:
            if len(batch) == 1:
                batch[0].future.set_exception(e)
                return
            for r in batch:  # find the request at fault
                try:
                    r.future.set_result(self.run(r.items, dict(r.params)))
                except Exception as e_alone:
                    r.future.set_exception(e_alone)
            return
        start = 0
        for r in batch:
            r.future.set_result(results[start : start + len(r.items)])
            start += len(r.items)


# ---- the app -----------------------------------------------------------------------------------


def build_app(
    predictor: Predictor,
    task: str,
    model_name: str = "",
    batch_size: int = 32,
    max_wait_ms: float = 5.0,
):
    """The FastAPI app serving `predictor` for `task` (a name in roberta.tasks.TASKS) with
    dynamic batching: `POST /<task>` with the body the task declares."""
    try:
        from fastapi import FastAPI, HTTPException
        from fastapi.exception_handlers import request_validation_exception_handler
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import JSONResponse
    except ImportError:
        raise ImportError('the server needs FastAPI and uvicorn: pip install -e ".[serve]"') from None
    spec = get_task(task)
    if not isinstance(predictor, spec.predictor):
        raise TypeError(f"task {task!r} needs a {spec.predictor.__name__}, got {type(predictor).__name__}")

    def run(items: list, options: dict) -> list:
        return spec.predict(predictor, items, options, batch_size)

    batcher = Batcher(run, batch_size, max_wait_ms)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        batcher.close()  # at shutdown, once the requests in flight are answered

    assets = docs_assets()
    app = FastAPI(
        title=f"roberta: {task}",
        description=f"{model_name} ({task}), dynamically batched",
        lifespan=lifespan,
        **({"docs_url": None, "redoc_url": None} if assets else {}),  # else FastAPI's, from a CDN
    )
    if assets:
        add_offline_docs(app, assets)
    Body = request_body(spec)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own answer echoes the input, and a lone surrogate cannot be written as UTF-8
        message = not_unicode(exc.body)
        if message:
            return JSONResponse({"detail": message}, status_code=422)
        return await request_validation_exception_handler(request, exc)

    async def endpoint(body: Body) -> JSONResponse:  # type: ignore[valid-type]
        fields = body.model_dump()
        message = not_unicode(fields)
        if message:
            raise HTTPException(422, message)
        first = next(iter(fields))  # the input field: named in the error for an empty list
        try:
            items, single, options = spec.request_items(fields)
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        if not items:
            raise HTTPException(422, f"{first} is an empty list; send at least one")
        try:
            results = await asyncio.wrap_future(batcher.submit(items, options))
        except (ValueError, TypeError) as e:  # the predictor's message says what was wrong
            raise HTTPException(400, str(e)) from None
        # a Response as it is: FastAPI's generic encoder would walk every float of an embedding
        return JSONResponse({"outputs": results[0] if single else results})

    app.post(f"/{task}", summary=spec.help)(endpoint)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/info")
    async def info() -> dict:
        return {
            "model": model_name,
            "task": task,
            "device": str(predictor.device),
            "dtype": model_dtype(predictor.model),
            "max_batch_size": batch_size,
            "max_wait_ms": max_wait_ms,
            "stats": dict(batcher.stats),
        }

    return app


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


def request_body(spec: Task):
    """The pydantic model of `spec`'s request body, from its declared fields; misspelt fields are
    errors (422), not ignored."""
    from pydantic import ConfigDict, Field, create_model

    fields = {name: (kind, Field(**options)) for name, (kind, options) in spec.request_fields().items()}
    name = "".join(part.title() for part in spec.name.split("-")) + "Request"
    return create_model(name, __config__=ConfigDict(extra="forbid"), **fields)


def serve(
    model: str,
    task: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    batch_size: int = 32,
    max_wait_ms: float = 5.0,
    **predictor_args,
) -> None:
    """Load `model` for `task` (default: what its checkpoint is for) and serve it until interrupted."""
    try:
        import uvicorn
    except ImportError:
        raise ImportError('the server needs FastAPI and uvicorn: pip install -e ".[serve]"') from None
    task = task or task_of(model)
    predictor = get_task(task).predictor.from_pretrained(model, **predictor_args)
    app = build_app(predictor, task, model, batch_size, max_wait_ms)
    uvicorn.run(app, host=host, port=port, log_level="info")
