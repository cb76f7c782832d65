"""The reference server for the wire protocol (FastAPI + uvicorn), running models on the local engine.

    python -m inference.server --host 127.0.0.1 --port 8000 --model hustvl/yolos-tiny \\
        --model my-llm=/models/llm

``POST /inference`` implements the protocol of DESIGN.md; ``GET /health`` and ``GET /models`` report
status. Each request goes through ``decode_request`` → ``predict`` → ``encode_response``; models run in
worker threads so the event loop (and ``/health``) stays responsive while they work. Errors follow the one
table of ``wire.ERRORS``; what a client sends can cost only bounded bytes and time (headers, body, JSON depth).
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import ipaddress
import json
import logging
import math
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.sse import format_sse_event
from pydantic import ValidationError
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from .engine import Engine
from .errors import InferenceError, ModelLoadError
from .images import WIRE_FORMATS
from .model import Model, Request as InferenceRequest, load_model, make_request
from .settings import Settings, parse_flag
from .tasks import TASKS, TaskSpec, get_task, ignored_image
from .types import DetectionResult, Result, TextStream
from .wire import ERRORS, Spec, code_of_error, dumps, error_body

__all__ = ["ServedModel", "create_app", "default_models", "http_protocol", "main"]

log = logging.getLogger("inference.server")

#: Default request body limit; the app's upload limit (.streamlit/config.toml) matches it.
MAX_BODY_BYTES = 20 * 1024 * 1024
#: Seconds a client gets to send a request's headers, and then its whole body: a slow or idle sender is cut off
#: (uvicorn itself bounds only the idle time between requests).
HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 60.0
#: Seconds open connections (event streams) get to finish when the server is told to stop.
SHUTDOWN_GRACE = 3
#: Retry-After of the answers that ask a client to come back, by code.
RETRY_AFTER = {"busy": 1, "model_loading": 2, "model_load_failed": 10, "rate_limited": 1}
#: Error messages are cut to this many characters (they may quote a client's values).
MAX_MESSAGE_CHARS = 1000
#: Form parts of a request: spec, image and use_remote. The spec may come as a file part (curl -F spec=@spec.json).
MAX_FILES, MAX_FIELDS, MAX_PART_BYTES = 2, 4, 1024 * 1024
#: JSON nesting a spec may have: the protocol's spec is three levels deep; parameters are flat.
MAX_SPEC_DEPTH = 32


def default_models() -> dict[str, str]:
    """The app's default model for each task, served under its own id."""
    return {spec.default_model: spec.default_model for spec in TASKS.values()}


class ApiError(Exception):
    """An error answer of the protocol: a code of ``wire.ERRORS`` (which gives the status) and a message."""

    def __init__(self, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.headers = code, message, headers or {}


class ProtocolJSON(JSONResponse):
    """JSON as the protocol writes it: UTF-8, and never a crash on text that UTF-8 cannot hold."""

    def render(self, content: Any) -> bytes:
        # NOTE: a lone surrogate (from a client's JSON) in a message would make a plain encode raise.
        return dumps(content).encode("utf-8", errors="replace")


def error_response(code: str, message: str, headers: dict[str, str] | None = None) -> ProtocolJSON:
    """The protocol's error answer: ``{"error": {...}}`` with the table's status, and Retry-After where it applies."""
    status = ERRORS[code].status
    headers = dict(headers or {})
    if code in RETRY_AFTER:
        headers.setdefault("Retry-After", str(RETRY_AFTER[code]))
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + "…"
    return ProtocolJSON(error_body(code, message), status_code=status, headers=headers)


def _header_value(text: str) -> str:
    """``text`` as an HTTP header value: ASCII, one line."""
    return " ".join(text.encode("ascii", errors="replace").decode().split())


# --------------------------------------------------------------------------- connections and requests


def http_protocol() -> type:
    """uvicorn's h11 protocol with a deadline for each request's headers (``HEADER_TIMEOUT``).

    A client that connects and sends nothing, or drips its headers, is disconnected; uvicorn alone would
    hold such a connection open forever. Pass it as ``uvicorn.Config(app, http=http_protocol())``.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):
        header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:
                self._arm()  # headers begun, not complete
            else:
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self.header_timer is None and not self.transport.is_closing():
                self.header_timer = self.loop.call_later(HEADER_TIMEOUT, self._expire)

        def _disarm(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

        def _expire(self) -> None:
            self.header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                log.info("closing a connection whose request headers did not arrive within %g s", HEADER_TIMEOUT)
                self.transport.close()

    return HeaderTimeoutProtocol


class RequestBodyMiddleware:
    """Bounds what a request body may cost: ``max_body_bytes`` (413) and ``BODY_TIMEOUT`` seconds (408).

    A declared Content-Length over the limit is refused before a byte is read; chunked bodies are counted as
    they come. Both answers close the connection (the rest of the body is never read). Once the body is in,
    ``receive`` is passed through untouched (an event stream waits on it for the client's disconnect).
    """

    def __init__(self, app, max_body_bytes: int) -> None:
        self.app, self.max_body_bytes = app, max_body_bytes

    def _too_large(self) -> ApiError:
        return ApiError("payload_too_large", f"the request body is larger than {self.max_body_bytes / 2**20:g} MB: "
                        "send a smaller image", headers={"Connection": "close"})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            error = self._too_large()
            return await error_response(error.code, error.message, error.headers)(scope, receive, send)
        received, complete = 0, False
        deadline = asyncio.get_running_loop().time() + BODY_TIMEOUT

        async def bounded_receive():
            nonlocal received, complete
            if complete:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), deadline - asyncio.get_running_loop().time())
            except TimeoutError:
                raise ApiError("request_timeout", f"the request body did not arrive within {BODY_TIMEOUT:g} s: "
                               "send it faster, or a smaller image", headers={"Connection": "close"}) from None
            received += len(message.get("body", b""))
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            if received > self.max_body_bytes:
                raise self._too_large()
            return message

        await self.app(scope, bounded_receive, send)


class RequestLogMiddleware:
    """One log line per request (never headers or bodies: the token, the image), and the 500 of a bug.

    An unexpected exception is logged once, here, and answered with the protocol's JSON and
    ``Connection: close`` (the connection's state is unknown after a bug), so nothing above sees it.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        status = 0

        async def logged_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, logged_send)
        except Exception:
            log.exception("unexpected error on %s %s", scope["method"], scope["path"])
            if not status:  # else the answer is half sent: returning closes the connection
                response = error_response("internal_error", "the server failed unexpectedly; see its log",
                                          headers={"Connection": "close"})
                await response(scope, receive, logged_send)
        finally:
            log.info("%s %s %d model=%s %.1fms", scope["method"], scope["path"], status,
                     ascii(state.get("model_id", "-"))[1:-1], (time.perf_counter() - started) * 1000)


class Gate:
    """Admission for one model: ``concurrency`` requests run at once, ``queue_size`` more wait, the rest get 503."""

    def __init__(self, name: str, concurrency: int, queue_size: int) -> None:
        self.name, self.concurrency, self.queue_size = name, concurrency, queue_size
        self.in_flight = 0  # running + waiting
        self._semaphore = asyncio.Semaphore(concurrency)

    def enter(self) -> Ticket:
        """Take a place, or refuse with 503 ``busy`` when every place is taken."""
        if self.in_flight >= self.concurrency + self.queue_size:
            raise ApiError("busy", f"model {self.name!r} is busy ({self.in_flight} requests in flight): retry shortly")
        self.in_flight += 1
        return Ticket(self)


class Ticket:
    """One request's place at a ``Gate``: ``await run()`` waits for its turn; ``release()`` gives it back, once."""

    def __init__(self, gate: Gate) -> None:
        self.gate, self.running, self.released = gate, False, False

    async def run(self) -> float:
        """Wait for a free slot; returns the milliseconds waited (the request's queue time)."""
        started = time.perf_counter()
        await self.gate._semaphore.acquire()
        self.running = True
        return (time.perf_counter() - started) * 1000

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        if self.running:
            self.gate._semaphore.release()
        self.gate.in_flight -= 1


class EventStream(StreamingResponse):
    """Server-sent events that free what they hold however they end: finished, failed or the client gone.

    ``on_close`` (idempotent) runs when the response is over, by code: generation stops within a token and
    the model's gate is free for the next request at once, whatever the garbage collector does.
    """

    def __init__(self, events: AsyncIterator[bytes], on_close: Callable[[], None], headers: dict[str, str]) -> None:
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()
            await self.body_iterator.aclose()


# --------------------------------------------------------------------------- models and the protocol


@dataclass
class ServedModel:
    """One model this server serves, with its concurrency gate and load status."""

    id: str
    source: str
    gate: Gate
    tasks: tuple[str, ...] | None = None
    classes: tuple[str, ...] = ()  # from the config, known before the weights load
    status: str = "not loaded"
    error: str | None = None
    handles: dict[str, Model] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def describe(self, engine: Engine) -> dict[str, Any]:
        loaded = engine.loaded(self.source)
        facts = {"device": None, "dtype": None, "classes": list(self.classes), "memory_bytes": None}
        if loaded:
            facts = {"device": loaded[0].device, "dtype": loaded[0].dtype, "classes": list(loaded[0].classes),
                     "memory_bytes": sum(model.memory_bytes for model in loaded)}
        tasks = list(self.tasks or ())
        status = self.status if not (self.status == "loaded" and not loaded) else "unloaded"
        return {"id": self.id, "task": tasks[0] if tasks else None, "tasks": tasks, **facts, "status": status,
                "error": self.error, "in_flight": self.gate.in_flight}


@dataclass
class Call:
    """One decoded request: the validated inputs, where it runs, and what its answer must say."""

    spec: Spec
    request: InferenceRequest
    served: ServedModel | None  # None: forwarded to this server's remote endpoint (gateway mode)
    #: Set when the image of a text request is not used here (a text-only model runs it).
    warning: str | None = None

    @property
    def use_remote(self) -> bool:
        return self.served is None


class InferenceService:
    """The protocol's logic, split the LitServe way: decode_request → predict → encode_response."""

    def __init__(self, engine: Engine, settings: Settings, served: dict[str, ServedModel]) -> None:
        self.engine, self.settings, self.served = engine, settings, served
        self.streams: set[TextStream] = set()  # open event streams, closed on shutdown

    # ------------------------------------------------------------------ decode

    async def decode_request(self, request: Request) -> Call:
        """Parse and check the multipart body."""
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise ApiError("malformed_request",
                           "send multipart/form-data with a 'spec' part (JSON) and, for image tasks, an 'image' part")
        try:
            form = await request.form(max_files=MAX_FILES, max_fields=MAX_FIELDS, max_part_size=MAX_PART_BYTES)
        except ApiError:
            raise  # the body's size or time limit, hit while the form was read
        except Exception as exc:  # python-multipart raises several types for garbage bodies
            raise ApiError("malformed_request", f"the multipart body cannot be parsed: {exc}") from None
        spec = await self._spec(form.get("spec"))
        request.state.model_id = spec.model_id
        task = get_task(spec.task)
        try:
            use_remote = parse_flag(form.get("use_remote", False))
        except ValueError:
            raise ApiError("malformed_request", "the 'use_remote' field must be true or false") from None
        image = form.get("image")
        if isinstance(image, UploadFile):
            image_bytes: bytes | None = await image.read()
        elif image is not None:
            raise ApiError("malformed_request", "the 'image' part must be a file part with the image bytes")
        else:
            image_bytes = None
        if task.image == "required" and image_bytes is None:
            raise ApiError("invalid_input", f"{task.name} needs an 'image' part (JPEG, PNG or WebP)")
        served = None
        warning = None
        if not use_remote:
            served = self._served(spec.model_id)
            if task.image == "none" and image_bytes is not None:
                # A text request may carry an image (the protocol's own example does): a model that takes
                # images answers about it; a text-only one runs the text and says the image was not used.
                if served.tasks and "image-text-to-text" in served.tasks:
                    task = get_task("image-text-to-text")
                    spec = spec.model_copy(update={"task": task.name})
                else:
                    warning = ignored_image(spec.model_id, task.name)
            self._check_task(served, task)
        inputs: Any = image_bytes if task.image == "required" else spec.payload.inputs
        prompt = spec.payload.inputs if task.image == "required" else None
        extra_image = image_bytes if task.image == "none" else None
        validated = await run_in_threadpool(
            make_request, task, inputs, prompt, spec.payload.parameters, image=extra_image,
            max_pixels=self.settings.max_image_pixels, formats=WIRE_FORMATS,
        )
        return Call(spec, validated, served, warning)

    async def _spec(self, part: Any) -> Spec:
        if part is None:
            raise ApiError("malformed_spec", "the request has no 'spec' part: send the spec as JSON")
        raw = await part.read() if isinstance(part, UploadFile) else part
        try:
            data = json.loads(raw)
        except RecursionError:
            raise ApiError("malformed_spec", "the 'spec' part is nested too deeply: send the protocol's spec") from None
        except (ValueError, UnicodeDecodeError):
            raise ApiError("malformed_spec", "the 'spec' part is not valid JSON") from None
        if not isinstance(data, dict):
            raise ApiError("malformed_spec", "the 'spec' part must be a JSON object with model_id, task and payload")
        if _depth(data) > MAX_SPEC_DEPTH:
            raise ApiError("malformed_spec", "the 'spec' part is nested too deeply: send the protocol's spec")
        try:
            dumps(data).encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError("malformed_spec", "the 'spec' part holds text that is not valid Unicode (a lone "
                           "surrogate such as \\ud800): send UTF-8 text") from None
        try:
            return Spec.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in error['loc']) or 'spec'}: {error['msg'].lower()}" for error in exc.errors()
            )
            raise ApiError("invalid_spec", f"the spec is not valid: {problems}") from None

    def _served(self, model_id: str) -> ServedModel:
        served = self.served.get(model_id)
        if served is None:
            raise ApiError("model_not_found",
                           f"model {model_id!r} is not served here; served models: {', '.join(sorted(self.served))}")
        return served

    @staticmethod
    def _check_task(served: ServedModel, task: TaskSpec) -> None:
        if served.tasks is not None and task.name not in served.tasks:
            raise ApiError("invalid_input",
                           f"model {served.id!r} does {', '.join(served.tasks) or 'no supported task'}, not {task.name}")

    # ------------------------------------------------------------------ predict

    def handle(self, served: ServedModel, task: str) -> Model:
        """The (cached) model handle for ``task``; loads the model on first use.

        A failed load is reported (``/models``) and raised as ``ModelLoadError`` (503 ``model_load_failed``);
        the next request for the model tries again.
        """
        with served.lock:
            handle = served.handles.get(task)
            if handle is None:
                served.status = "loading" if not self.engine.loaded(served.source) else served.status
                try:
                    handle = load_model(served.source, task=task, backend="local", engine=self.engine,
                                        settings=self.settings)
                except ModelLoadError as exc:
                    served.status, served.error = "error", str(exc)
                    raise
                if served.tasks is None:  # its config could not be read at startup; now it loaded
                    served.tasks, served.classes = _tasks_of(served.source)
                served.handles[task] = handle
                served.status, served.error = "loaded", None
            return handle

    def ready_model(self, call: Call) -> tuple[Model, float | None]:
        """The model to run ``call`` on, and how long this request waited for it to load (its own load or another's).

        Gateway mode: a handle on this server's remote endpoint (the upstream reports its own loads). Here: a
        model loading at startup or for another request holds this one up; that wait is reported as ``load``
        (never as inference or network time), once, by the request that waited.
        """
        spec = call.spec
        if call.use_remote:
            if not self.settings.remote_configured:
                raise ApiError("remote_not_configured",
                               "use_remote=true, but this server has no remote endpoint: set "
                               "REMOTE_INFERENCE_ENABLED=true and REMOTE_INFERENCE_ENDPOINT on the server")
            return load_model(spec.model_id, task=spec.task, backend="remote", engine=self.engine,
                              settings=self.settings), None
        started = time.perf_counter()
        ready = self.engine.is_loaded(call.served.source, call.request.spec)
        model = self.handle(call.served, spec.task)
        model.take_load_ms()  # included in the wait measured here
        return model, (None if ready else (time.perf_counter() - started) * 1000)

    def predict(self, call: Call) -> tuple[Result, float | None]:
        """Run the call here, or forward it (gateway mode). Returns the result and the load wait (``ready_model``)."""
        model, load_ms = self.ready_model(call)
        return model.run(call.request), load_ms

    # ------------------------------------------------------------------ encode

    @staticmethod
    def encode_response(call: Call, result: Result, queue_ms: float, load_ms: float | None) -> ProtocolJSON:
        """The protocol's JSON body with X-Inference-Source, Server-Timing and any X-Inference-Warning."""
        if isinstance(result, DetectionResult):
            body: Any = result.to_dict()["detections"]
        else:
            body = {"generated_text": result.text, "details": result.details}
        # A gateway's upstream may have loaded too: both are time spent getting a model ready.
        loads = [value for value in (load_ms, result.timings.load_ms) if value is not None]
        response = ProtocolJSON(body, headers={
            "X-Inference-Source": result.source,
            "Server-Timing": _server_timing(inference=result.timings.total_ms, queue=queue_ms,
                                            load=sum(loads) if loads else None),
        })
        # Run here, the served id names the model (the result knows only its source); forwarded, the upstream's
        # own warnings pass through.
        warnings = result.warnings if call.use_remote else (call.warning,) if call.warning else ()
        for warning in warnings:
            response.headers.append("X-Inference-Warning", _header_value(warning))
        return response


def _server_timing(**durations: float | None) -> str:
    """``Server-Timing``: ``inference;dur=12.5, queue;dur=0.3, load;dur=2100.0`` (None left out)."""
    return ", ".join(f"{name};dur={value:.1f}" for name, value in durations.items() if value is not None)


def _depth(value: Any, limit: int = MAX_SPEC_DEPTH) -> int:
    """How deeply ``value`` nests lists and dicts (counting stops past ``limit``)."""
    depth, level = 0, [value]
    while level and depth <= limit:
        depth += 1
        level = [child for item in level if isinstance(item, (dict, list))
                 for child in (item.values() if isinstance(item, dict) else item)
                 if isinstance(child, (dict, list))]
    return depth


_SPEC_PART = {"type": "string", "contentMediaType": "application/json",
              "description": "the spec: {model_id, task, payload: {inputs, parameters}} as JSON"}
#: The multipart body of POST /inference, for the OpenAPI schema (the route reads the form itself).
INFERENCE_BODY = {
    "required": True,
    "content": {"multipart/form-data": {
        "schema": {
            "type": "object",
            "required": ["spec"],
            "properties": {
                "spec": {"$ref": "#/components/schemas/Spec"},
                "image": {"type": "string", "format": "binary",
                          "description": "JPEG, PNG or WebP; required for image tasks, optional for text-generation"},
                "use_remote": {"type": "boolean", "default": False,
                               "description": "forward to this server's own remote endpoint (gateway mode)"},
            },
        },
        "encoding": {"spec": {"contentType": "application/json"},
                     "image": {"contentType": "image/jpeg, image/png, image/webp"}},
    }},
}


def create_app(
    models: dict[str, str] | None = None,
    *,
    settings: Settings | None = None,
    engine: Engine | None = None,
    concurrency: int = 1,
    queue_size: int = 8,
    max_body_bytes: int = MAX_BODY_BYTES,
    preload: bool = True,
) -> FastAPI:
    """The reference server as a FastAPI app.

    Args:
        models: served id → model source (hub id, ``demo/<task>`` or directory); default: the app's default models.
        settings: tokens (``INFERENCE_SERVER_TOKEN``), limits and the gateway's remote endpoint.
        engine: the engine to run on (default: a new one with ``settings``).
        concurrency: requests one model runs at once; ``queue_size`` more may wait, the rest get 503.
        max_body_bytes: larger request bodies get 413.
        preload: load every model in the background at startup.
    """
    settings = settings or Settings()
    engine = engine or Engine(settings)
    served = {
        model_id: ServedModel(model_id, source, Gate(model_id, concurrency, queue_size))
        for model_id, source in (models if models is not None else default_models()).items()
    }
    # Forwarded (use_remote) requests share one gate, wider than a model's: they wait on the network, not a CPU.
    gateway = Gate("gateway", 16, queue_size)
    service = InferenceService(engine, settings, served)
    tokens = [token.get_secret_value().encode() for token in settings.server_tokens]

    def warm_up() -> None:
        # What every first request needs, whatever its model: torch and transformers' model machinery (seconds
        # of imports). Then every model's tasks and classes, read from configs; then, with preload, the weights.
        from transformers import GenerationMixin, PreTrainedModel  # noqa: F401

        for model in served.values():
            try:
                model.tasks, model.classes = _tasks_of(model.source)
            except InferenceError as exc:
                model.status, model.error = "error", str(exc)
                log.warning("model %s is not available: %s", model.id, exc)
        for model in served.values():
            if preload and model.tasks:
                try:
                    service.handle(model, model.tasks[0]).take_load_ms()  # no request reports this load
                except InferenceError as exc:
                    log.warning("model %s could not be loaded: %s", model.id, exc)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        threading.Thread(target=warm_up, name="inference-warm-up", daemon=True).start()
        yield
        for stream in list(service.streams):  # stop generating for clients we no longer serve
            stream.close()

    # The schema and its pages tell anyone who asks what the server serves: not without the token.
    docs = {} if not tokens else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="Inference Studio reference server", version="1", lifespan=lifespan, **docs)
    app.add_middleware(RequestBodyMiddleware, max_body_bytes=max_body_bytes)
    app.add_middleware(RequestLogMiddleware)
    app.state.service = service

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            spec_schema = Spec.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(spec_schema.pop("$defs", {}), Spec=spec_schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi

    def authorize(request: Request) -> None:
        if not tokens:
            return
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        offered = credentials.strip().encode()
        # compare_digest against every token, always: the time taken says nothing about which one matched.
        matched = [hmac.compare_digest(offered, token) for token in tokens]
        if scheme.lower() != "bearer" or not any(matched):
            raise ApiError("unauthorized", "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
                           headers={"WWW-Authenticate": 'Bearer realm="inference"'})

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> ProtocolJSON:
        return error_response(exc.code, exc.message, exc.headers)

    @app.exception_handler(InferenceError)
    async def inference_error(request: Request, exc: InferenceError) -> ProtocolJSON:
        # Our own failures and, in gateway mode, the upstream's: its code, status and Retry-After pass through.
        code = code_of_error(exc)
        headers = {"Retry-After": f"{math.ceil(exc.retry_after)}"} if exc.retry_after is not None else None
        return error_response(code, str(exc), headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> ProtocolJSON:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        if code is None:
            return ProtocolJSON(error_body("error", str(exc.detail)), status_code=exc.status_code, headers=exc.headers)
        return error_response(code, str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> ProtocolJSON:
        return error_response("invalid_input", str(exc))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness: answers at once, even while models work."""
        loaded = sum(1 for model in served.values() if model.status == "loaded")
        return {"status": "ok", "served": len(served), "loaded": loaded,
                "auth": "bearer" if tokens else "none"}

    @app.get("/models")
    async def list_models(request: Request) -> dict[str, Any]:
        """Served models with task, classes, device and status."""
        authorize(request)
        return {"models": [model.describe(engine) for model in served.values()]}

    @app.post("/inference", openapi_extra={"requestBody": INFERENCE_BODY})
    async def inference(request: Request):
        """The wire protocol: multipart ``spec`` (+ ``image``), answered as JSON or server-sent events."""
        authorize(request)
        call = await service.decode_request(request)
        wants_stream = "text/event-stream" in request.headers.get("accept", "")
        if wants_stream and call.request.spec.output != "text":
            raise ApiError("invalid_input", f"{call.spec.task} has no text to stream: accept application/json")
        ticket: Ticket | None = (gateway if call.use_remote else call.served.gate).enter()
        try:
            queue_ms = await ticket.run()
            if wants_stream:
                response = await _stream_response(service, call, ticket, queue_ms)
                ticket = None  # the event stream gives it back when it ends
                return response
            result, load_ms = await run_in_threadpool(service.predict, call)
        finally:
            if ticket is not None:
                ticket.release()
        return service.encode_response(call, result, queue_ms, load_ms)

    return app


def _tasks_of(source: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    from .local import tasks_of

    return tasks_of(source)


async def _stream_response(service: InferenceService, call: Call, ticket: Ticket, queue_ms: float) -> EventStream:
    """Text as server-sent events: ``data: {"token": ...}`` pieces, then ``data: {"generated_text": ...}``.

    The caller holds ``ticket`` for this request; the event stream gives it back when it ends, however it ends.
    """
    model, load_ms = await run_in_threadpool(service.ready_model, call)
    stream = await run_in_threadpool(model.run_stream, call.request)
    service.streams.add(stream)

    def close() -> None:
        stream.close()  # generation stops within a token
        ticket.release()
        service.streams.discard(stream)

    async def events() -> AsyncIterator[bytes]:
        try:
            async for piece in iterate_in_threadpool(stream):
                yield _event({"token": piece})
            result = stream.result
            details = {**result.details, "server_ms": round(result.timings.total_ms, 1)}
            yield _event({"generated_text": result.text, "details": details})
        except InferenceError as exc:
            yield _event(error_body(code_of_error(exc), str(exc)))
        finally:
            close()

    headers = {"X-Inference-Source": model.backend, "Server-Timing": _server_timing(queue=queue_ms, load=load_ms),
               "Cache-Control": "no-cache"}
    if call.warning:
        headers["X-Inference-Warning"] = _header_value(call.warning)
    return EventStream(events(), close, headers)


def _event(data: Any) -> bytes:
    """One server-sent event, framed by FastAPI's SSE encoder. NOTE: ASCII JSON (``\\u`` escapes) so that no
    text, not even a lone surrogate, can fail to encode once the stream has begun."""
    return format_sse_event(data_str=json.dumps(data, separators=(",", ":")))


# --------------------------------------------------------------------------- command line


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_models(values: list[str] | None) -> dict[str, str]:
    if not values:
        return default_models()
    models = {}
    for value in values:
        model_id, _, source = value.partition("=")
        if not model_id.strip():
            raise SystemExit(f"--model {value!r}: use ID or ID=PATH_OR_HUB_ID")
        models[model_id.strip()] = (source or model_id).strip()
    return models


def _exit_with_parent() -> None:
    """Exit as soon as the parent process dies (it may be killed without a chance to stop us)."""
    import os

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", action="append", metavar="ID[=PATH_OR_HUB_ID]",
                        help="serve this model under ID (repeatable); default: the app's default models")
    parser.add_argument("--concurrency", type=int, default=1, help="requests one model runs at once (default 1)")
    parser.add_argument("--queue", type=int, default=8, help="requests that may wait per model before 503 (default 8)")
    parser.add_argument("--max-body-mb", type=float, default=MAX_BODY_BYTES / 2**20, help="request body limit in MB")
    parser.add_argument("--no-preload", action="store_true", help="load models on first request, not at startup")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--exit-with-parent", action="store_true",
                        help="exit when the process that started this one is gone (used by the app)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings()
    except InferenceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not settings.server_tokens and not _is_loopback(args.host):
        print(f"error: refusing to serve on {args.host} without authentication: set INFERENCE_SERVER_TOKEN "
              "(one or more comma-separated tokens), or bind to 127.0.0.1", file=sys.stderr)
        return 2
    if args.exit_with_parent:
        _exit_with_parent()
    app = create_app(_parse_models(args.model), settings=settings, concurrency=args.concurrency,
                     queue_size=args.queue, max_body_bytes=int(args.max_body_mb * 2**20),
                     preload=not args.no_preload)
    import uvicorn

    # access_log off: our own line per request says the same without risking anything sensitive. Open event
    # streams get SHUTDOWN_GRACE seconds when the server is told to stop, then they are cut.
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                http=http_protocol(), timeout_graceful_shutdown=SHUTDOWN_GRACE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
