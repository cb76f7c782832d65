"""The reference server's FastAPI app: routes, authentication, error handlers and the OpenAPI schema.

``POST /inference`` implements the protocol of DESIGN.md through ``pipeline.InferenceService`` (decode → predict →
encode); ``GET /health`` and ``GET /models`` report status. Models run in worker threads so the event loop (and
``/health``) stays responsive while they work. Each model's ``gate.Gate`` bounds what runs and waits.
"""

from __future__ import annotations

import hmac
import logging
import math
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..backends.loading import tasks_of
from ..engine import Engine
from ..errors import InferenceError
from ..settings import Settings
from ..tasks import TASKS, get_task
from ..wire import Spec, code_of_error, error_body
from .gate import Gate
from .http import ApiError, ProtocolJSON, RequestBodyMiddleware, RequestLogMiddleware, error_response
from .pipeline import InferenceService, ServedModel

__all__ = ["INFERENCE_BODY", "MAX_BODY_BYTES", "create_app", "default_models"]

log = logging.getLogger("inference.server")

#: Default request body limit; the app's upload limit (.streamlit/config.toml) matches it.
MAX_BODY_BYTES = 20 * 1024 * 1024


def default_models() -> dict[str, str]:
    """The app's default model for each task, served under its own id."""
    return {spec.default_model: spec.default_model for spec in TASKS.values()}


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
                model.tasks, model.classes = tasks_of(model.source)
            except InferenceError as exc:
                model.status, model.error = "error", str(exc)
                log.warning("model %s is not available: %s", model.id, exc)
        for model in served.values():
            if preload and model.tasks:
                try:
                    service.ready(model, get_task(model.tasks[0]))  # no request reports this load
                except InferenceError as exc:
                    log.warning("model %s could not be loaded: %s", model.id, exc)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        threading.Thread(target=warm_up, name="inference-warm-up", daemon=True).start()
        yield
        service.close_streams()  # stop generating for clients we no longer serve

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
        gate = gateway if call.use_remote else call.served.gate
        admission = gate.admit()
        try:
            queue_ms = await gate.wait(admission)
            prediction = await run_in_threadpool(service.predict, call)
        except BaseException:
            gate.release(admission)
            raise
        return service.encode_response(call, prediction, queue_ms, partial(gate.release, admission))

    return app
