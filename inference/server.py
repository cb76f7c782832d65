"""The reference server for the wire protocol (FastAPI + uvicorn), running models on the local engine.

    python -m inference.server --host 127.0.0.1 --port 8000 --model hustvl/yolos-tiny \\
        --model my-llm=/models/llm

``POST /inference`` implements the protocol of DESIGN.md; ``GET /health`` and ``GET /models`` report
status. Each request goes through ``decode_request`` → ``predict`` → ``encode_response``; models run in
worker threads so the event loop (and ``/health``) stays responsive while they work.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import ipaddress
import json
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from .engine import Engine
from .errors import (
    AuthenticationError,
    BadResponse,
    InferenceError,
    InferenceTimeout,
    InvalidInput,
    ModelLoadError,
    RateLimited,
    RemoteNotConfigured,
    RemoteUnavailable,
    UnsupportedTask,
)
from .model import Model, Request as InferenceRequest, load_model, make_request
from .settings import Settings
from .tasks import TASKS, TaskSpec, get_task
from .types import DetectionResult, Result
from .wire import ERROR_STATUS, Spec, dumps, error_body

__all__ = ["ServedModel", "create_app", "default_models", "main"]

log = logging.getLogger("inference.server")

#: Getting a ready model takes microseconds; a request that took this long waited for a load.
READY_MS = 1.0
#: Default request body limit; the app's upload limit (.streamlit/config.toml) matches it.
MAX_BODY_BYTES = 20 * 1024 * 1024


def default_models() -> dict[str, str]:
    """The app's default model for each task, served under its own id."""
    return {spec.default_model: spec.default_model for spec in TASKS.values()}


class BodyLimitMiddleware:
    """413 with the protocol's JSON error for bodies over ``max_body_bytes``.

    A declared Content-Length is refused before a byte is read; chunked bodies are counted as they come.
    (Starlette's own limiter answers 413 in plain text, which protocol clients cannot parse.)
    """

    def __init__(self, app, max_body_bytes: int) -> None:
        self.app, self.max_body_bytes = app, max_body_bytes

    def _error(self) -> ApiError:
        return ApiError(413, "payload_too_large",
                        f"the request body is larger than {self.max_body_bytes / 2**20:g} MB: send a smaller image")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            error = self._error()
            response = JSONResponse(error_body(error.code, error.message), status_code=413,
                                    headers={"Connection": "close"})
            return await response(scope, receive, send)
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise self._error()
            return message

        await self.app(scope, counting_receive, send)


class ApiError(Exception):
    """An error answer of the protocol: status, code and message."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


@dataclass
class ServedModel:
    """One model this server serves, with its concurrency gate and load status."""

    id: str
    source: str
    concurrency: int
    queue_size: int
    tasks: tuple[str, ...] | None = None
    classes: tuple[str, ...] = ()  # from the config, known before the weights load
    status: str = "not loaded"
    error: str | None = None
    in_flight: int = 0  # running + waiting
    handles: dict[str, Model] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    gate: asyncio.Semaphore | None = None

    def describe(self, engine: Engine) -> dict[str, Any]:
        loaded = engine.loaded(self.source)
        facts = {"device": None, "dtype": None, "classes": list(self.classes), "memory_bytes": None}
        if loaded:
            facts = {"device": loaded[0].device, "dtype": loaded[0].dtype, "classes": list(loaded[0].classes),
                     "memory_bytes": sum(model.memory_bytes for model in loaded)}
        tasks = list(self.tasks or ())
        status = self.status if not (self.status == "loaded" and not loaded) else "unloaded"
        return {"id": self.id, "task": tasks[0] if tasks else None, "tasks": tasks, **facts, "status": status,
                "error": self.error, "in_flight": self.in_flight}


class InferenceService:
    """The protocol's logic, split the LitServe way: decode_request → predict → encode_response."""

    def __init__(self, engine: Engine, settings: Settings, served: dict[str, ServedModel]) -> None:
        self.engine, self.settings, self.served = engine, settings, served

    # ------------------------------------------------------------------ decode

    async def decode_request(self, request: Request) -> tuple[InferenceRequest, Spec, bool]:
        """Parse and check the multipart body: (validated request, spec, use_remote)."""
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise ApiError(400, "malformed_request",
                           "send multipart/form-data with a 'spec' part (JSON) and, for image tasks, an 'image' part")
        try:
            form = await request.form(max_files=1, max_fields=4, max_part_size=1024 * 1024)
        except ApiError:
            raise  # the body limit, raised while the form was read
        except Exception as exc:  # python-multipart raises several types for garbage bodies
            raise ApiError(400, "malformed_request", f"the multipart body cannot be parsed: {exc}") from None
        spec = await self._spec(form.get("spec"))
        request.state.model_id = spec.model_id
        task = get_task(spec.task)
        use_remote = str(form.get("use_remote", "false")).strip().lower() in ("1", "true", "yes")
        if not use_remote:
            self._check_served(spec.model_id, task)
        image = form.get("image")
        if isinstance(image, UploadFile):
            image_bytes: bytes | None = await image.read()
        elif image is not None:
            raise ApiError(400, "malformed_request", "the 'image' part must be a file part with the image bytes")
        else:
            image_bytes = None
        if task.image == "required" and image_bytes is None:
            raise ApiError(422, "invalid_input", f"{task.name} needs an 'image' part (JPEG, PNG or WebP)")
        if task.image == "none" and image_bytes is not None:
            raise ApiError(422, "invalid_input", f"{task.name} takes no image: leave out the 'image' part")
        inputs: Any = image_bytes if task.image == "required" else spec.payload.inputs
        prompt = spec.payload.inputs if task.image == "required" else None
        validated = await run_in_threadpool(
            make_request, task, inputs, prompt, spec.payload.parameters, max_pixels=self.settings.max_image_pixels
        )
        return validated, spec, use_remote

    async def _spec(self, part: Any) -> Spec:
        if part is None:
            raise ApiError(400, "invalid_spec", "the request has no 'spec' part: send the spec as JSON")
        raw = await part.read() if isinstance(part, UploadFile) else part
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "invalid_spec", "the 'spec' part is not valid JSON") from None
        if not isinstance(data, dict):
            raise ApiError(400, "invalid_spec", "the 'spec' part must be a JSON object with model_id, task and payload")
        try:
            return Spec.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in error['loc']) or 'spec'}: {error['msg'].lower()}" for error in exc.errors()
            )
            raise ApiError(422, "invalid_spec", f"the spec is not valid: {problems}") from None

    def _check_served(self, model_id: str, task: TaskSpec) -> ServedModel:
        served = self.served.get(model_id)
        if served is None:
            raise ApiError(404, "model_not_found",
                           f"model {model_id!r} is not served here; served models: {', '.join(sorted(self.served))}")
        if served.tasks is not None and task.name not in served.tasks:
            raise ApiError(422, "invalid_input",
                           f"model {model_id!r} does {', '.join(served.tasks) or 'no supported task'}, not {task.name}")
        return served

    # ------------------------------------------------------------------ predict

    def handle(self, served: ServedModel, task: str) -> Model:
        """The (cached) model handle for ``task``; loads the model on first use."""
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
                served.handles[task] = handle
                served.status, served.error = "loaded", None
            return handle

    def model_for(self, served: ServedModel | None, spec: Spec, use_remote: bool) -> Model:
        """The model to run on: a served one here, or this server's remote endpoint (gateway mode)."""
        if use_remote:
            if not self.settings.remote_configured:
                raise ApiError(400, "remote_not_configured",
                               "use_remote=true, but this server has no remote endpoint: set "
                               "REMOTE_INFERENCE_ENABLED=true and REMOTE_INFERENCE_ENDPOINT on the server")
            return load_model(spec.model_id, task=spec.task, backend="remote", engine=self.engine,
                              settings=self.settings)
        assert served is not None
        return self.handle(served, spec.task)

    def ready_model(self, served: ServedModel | None, spec: Spec, use_remote: bool) -> tuple[Model, float | None]:
        """``model_for``, and how long this request waited for the model to load (its own load or another's).

        A model loading at startup or for another request holds this one up; that wait is reported as
        ``load`` (never as inference or network time), once, by the request that waited.
        """
        if use_remote:
            return self.model_for(served, spec, use_remote), None  # the upstream reports its own loads
        started = time.perf_counter()
        model = self.model_for(served, spec, use_remote)
        model.take_load_ms()  # included in the wait measured here
        waited_ms = (time.perf_counter() - started) * 1000
        return model, (waited_ms if waited_ms >= READY_MS else None)

    def predict(self, served: ServedModel | None, spec: Spec, request: InferenceRequest, use_remote: bool
                ) -> tuple[Result, float | None]:
        """Run the request here, or forward it to this server's remote endpoint (gateway mode).

        Returns the result and the time spent waiting for the model (see ``ready_model``).
        """
        model, load_ms = self.ready_model(served, spec, use_remote)
        return model.run(request), load_ms

    # ------------------------------------------------------------------ encode

    @staticmethod
    def encode_response(result: Result, queue_ms: float, load_ms: float | None) -> JSONResponse:
        """The protocol's JSON body with X-Inference-Source and Server-Timing."""
        if isinstance(result, DetectionResult):
            body: Any = result.to_dict()["detections"]
        else:
            body = {"generated_text": result.text, "details": result.details}
        # A gateway's upstream may have loaded too: both are time spent getting a model ready.
        loads = [value for value in (load_ms, result.timings.load_ms) if value is not None]
        return JSONResponse(body, headers={
            "X-Inference-Source": result.source,
            "Server-Timing": _server_timing(inference=result.timings.total_ms, queue=queue_ms,
                                            load=sum(loads) if loads else None),
        })


def _server_timing(**durations: float | None) -> str:
    """``Server-Timing``: ``inference;dur=12.5, queue;dur=0.3, load;dur=2100.0`` (None left out)."""
    return ", ".join(f"{name};dur={value:.1f}" for name, value in durations.items() if value is not None)


def _status_of(exc: InferenceError) -> int:
    if exc.code in ERROR_STATUS:
        return ERROR_STATUS[exc.code]
    if isinstance(exc, UnsupportedTask | InvalidInput):
        return 422
    if isinstance(exc, ModelLoadError):
        return 404
    if isinstance(exc, InferenceTimeout):
        return 504  # only raised forwarding upstream: local calls have no deadline
    if isinstance(exc, AuthenticationError | RemoteUnavailable | BadResponse | RateLimited | RemoteNotConfigured):
        return 502
    return 500


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
        models: served id → model source (hub id or directory); default: the app's default models.
        settings: tokens (``INFERENCE_SERVER_TOKEN``), limits and the gateway's remote endpoint.
        engine: the engine to run on (default: a new one with ``settings``).
        concurrency: requests one model runs at once; ``queue_size`` more may wait, the rest get 503.
        max_body_bytes: larger request bodies get 413.
        preload: load every model in the background at startup.
    """
    settings = settings or Settings()
    engine = engine or Engine(settings)
    served = {
        model_id: ServedModel(model_id, source, concurrency=concurrency, queue_size=queue_size)
        for model_id, source in (models if models is not None else default_models()).items()
    }
    # Forwarded (use_remote) requests share one gate, wider than a model's: they wait on the network, not a CPU.
    gateway = ServedModel("gateway", "", concurrency=16, queue_size=queue_size)
    service = InferenceService(engine, settings, served)
    tokens = [token.encode() for token in settings.server_tokens]

    def warm_up() -> None:
        for model in served.values():
            try:
                model.tasks, model.classes = _tasks_of(model.source)
                if model.tasks and preload:
                    # Loaded before any request: no request should report this load as its own.
                    service.handle(model, model.tasks[0]).take_load_ms()
            except InferenceError as exc:
                model.status, model.error = "error", str(exc)
                log.warning("model %s is not available: %s", model.id, exc)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for model in (*served.values(), gateway):
            model.gate = asyncio.Semaphore(model.concurrency)
        threading.Thread(target=warm_up, name="inference-warm-up", daemon=True).start()
        yield

    app = FastAPI(title="Inference Studio reference server", version="1", lifespan=lifespan)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=max_body_bytes)
    app.state.service = service

    def authorize(request: Request) -> None:
        if not tokens:
            return
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        offered = credentials.strip().encode()
        # compare_digest against every token, always: the time taken says nothing about which one matched.
        matched = [hmac.compare_digest(offered, token) for token in tokens]
        if scheme.lower() != "bearer" or not any(matched):
            raise ApiError(401, "unauthorized", "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
                           headers={"WWW-Authenticate": 'Bearer realm="inference"'})

    @app.middleware("http")
    async def log_requests(request: Request, call_next):
        started = time.perf_counter()
        request.state.model_id = "-"
        response = await call_next(request)
        # One line per request: never headers (the token) nor bodies (the image).
        log.info("%s %s %d model=%s %.1fms", request.method, request.url.path, response.status_code,
                 request.state.model_id, (time.perf_counter() - started) * 1000)
        return response

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(InferenceError)
    async def inference_error(request: Request, exc: InferenceError) -> JSONResponse:
        status = _status_of(exc)
        code = exc.code if exc.code in ERROR_STATUS or status != 502 else "upstream_error"
        if status == 504:
            code = "upstream_timeout"
        return JSONResponse(error_body(code, str(exc)), status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body("invalid_input", str(exc)), status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal_error", "the server failed unexpectedly; see its log"),
                            status_code=500)

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

    @app.post("/inference")
    async def inference(request: Request):
        """The wire protocol: multipart ``spec`` (+ ``image``), answered as JSON or server-sent events."""
        authorize(request)
        validated, spec, use_remote = await service.decode_request(request)
        served_model = None if use_remote else served[spec.model_id]
        wants_stream = "text/event-stream" in request.headers.get("accept", "")
        if wants_stream and validated.spec.output != "text":
            raise ApiError(422, "invalid_input", f"{spec.task} has no text to stream: accept application/json")
        gate = served_model if served_model is not None else gateway
        await _enter(gate)
        entered = time.perf_counter()
        handed_over = False
        try:
            await gate.gate.acquire()
            try:
                queue_ms = (time.perf_counter() - entered) * 1000
                if wants_stream:
                    response = await _stream_response(service, gate, served_model, spec, validated, use_remote,
                                                      queue_ms)
                    handed_over = True  # the event stream releases the gate when it ends
                    return response
                result, load_ms = await run_in_threadpool(service.predict, served_model, spec, validated, use_remote)
            finally:
                if not handed_over:
                    gate.gate.release()
        finally:
            if not handed_over:
                gate.in_flight -= 1
        return service.encode_response(result, queue_ms, load_ms)

    return app


def _tasks_of(source: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    from .local import tasks_of

    return tasks_of(source)


async def _enter(model: ServedModel) -> None:
    if model.in_flight >= model.concurrency + model.queue_size:
        raise ApiError(503, "busy", f"model {model.id!r} is busy ({model.in_flight} requests in flight): retry shortly",
                       headers={"Retry-After": "1"})
    model.in_flight += 1


async def _stream_response(service: InferenceService, gate: ServedModel, served: ServedModel | None, spec: Spec,
                           request: InferenceRequest, use_remote: bool, queue_ms: float) -> StreamingResponse:
    """Text as server-sent events: ``data: {"token": ...}`` pieces, then ``data: {"generated_text": ...}``.

    The caller holds ``gate`` for this request; the event stream releases it when it ends.
    """
    model, load_ms = await run_in_threadpool(service.ready_model, served, spec, use_remote)
    stream = await run_in_threadpool(model.run_stream, request)

    async def events() -> AsyncIterator[bytes]:
        try:
            async for piece in iterate_in_threadpool(stream):
                yield f"data: {dumps({'token': piece})}\n\n".encode()
            result = stream.result
            details = {**result.details, "server_ms": round(result.timings.total_ms, 1)}
            yield f"data: {dumps({'generated_text': result.text, 'details': details})}\n\n".encode()
        except InferenceError as exc:
            yield f"data: {dumps(error_body(exc.code, str(exc)))}\n\n".encode()
        finally:
            stream.close()
            gate.gate.release()
            gate.in_flight -= 1

    headers = {"X-Inference-Source": model.backend, "Server-Timing": _server_timing(queue=queue_ms, load=load_ms),
               "Cache-Control": "no-cache"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


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

    # access_log off: our own line per request says the same without risking anything sensitive.
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
