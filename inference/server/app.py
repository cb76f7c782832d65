"""The reference server's FastAPI app: routes, authentication, error handlers and the OpenAPI schema.

``POST /inference`` implements the wire protocol (README, "Remote inference") through ``pipeline.InferenceService``
(decode → predict → encode); the same pipeline answers OpenAI's routes (``/v1/...``, ``openai_api``) and Hugging
Face's (TGI's ``/``, ``/generate``, ``/generate_stream``, ``/info`` and the task API at ``/models/{id}``,
``hf_api``); ``GET /health`` and ``GET /models`` report status. Models run in worker threads so the event loop (and
``/health``) stays responsive while they work. Each model's ``gate.Gate`` bounds what runs and waits.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import partial
from typing import Any

from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from ..engine import Engine
from ..settings import Settings
from ..tasks import TASKS
from ..wire import Spec
from .batching import Batcher
from .gate import Gate
from .http import (
    MAX_TEXT_JSON_BYTES,
    BearerAuth,
    RequestBodyMiddleware,
    RequestLogMiddleware,
    install_error_handlers,
    parse_json,
    until_answered,
)
from .hf_api import HFService
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .openai_api import OpenAIService
from .pipeline import Call, InferenceService, ServedModel

__all__ = ["DEFAULT_MAX_WAIT_MS", "INFERENCE_BODY", "MAX_BODY_BYTES", "create_app", "default_models"]

log = logging.getLogger("inference.server")

#: Default request body limit; the app's upload limit (.streamlit/config.toml) matches it.
MAX_BODY_BYTES = 20 * 1024 * 1024
#: How long the first request of a batch waits for others, by default: not at all. A batch takes what queued while
#: the model was busy, so batches form under load, when they pay, and an idle server adds no latency (measured in
#: bench/serving.py: 0 ms beat 2 and 5 ms in throughput at 16 clients and in latency at 1).
DEFAULT_MAX_WAIT_MS = 0.0


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
    max_batch_size: int = 1,
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
    max_body_bytes: int = MAX_BODY_BYTES,
    preload: bool = True,
) -> FastAPI:
    """The reference server as a FastAPI app.

    Args:
        models: served id → model source (hub id, ``demo/<task>`` or directory); default: the app's default models.
        settings: tokens (``INFERENCE_SERVER_TOKEN``), limits and the gateway's remote endpoint.
        engine: the engine to run on (default: a new one with ``settings``).
        concurrency: requests (or batches) one model runs at once; ``queue_size`` more requests may wait, the rest
            get 503.
        max_batch_size: whole answers (not streams) to one model and task that wait together run together, up to
            this many (``batching.Batcher``); 1 runs each request alone.
        max_wait_ms: how long a batch's first request waits for others to join (default 0: a batch takes what
            queued while the model was busy).
        max_body_bytes: larger request bodies get 413.
        preload: load every model in the background at startup.
    """
    settings = settings or Settings()
    engine = engine or Engine(settings)
    served = {
        model_id: ServedModel(model_id, source, Gate(model_id, concurrency, queue_size, max_batch_size))
        for model_id, source in (models if models is not None else default_models()).items()
    }
    # Forwarded (use_remote) requests share one gate, wider than a model's: they wait on the network, not a CPU.
    gateway = Gate("gateway", 16, queue_size)
    service = InferenceService(engine, settings, served)
    openai = OpenAIService(service)
    hf = HFService(service)
    authorize = BearerAuth(settings.server_tokens)
    metrics = Metrics(partial(_gauges, served, engine), served)
    batchers: dict[tuple[str, str], Batcher] = {}

    def batcher(call: Call) -> Batcher:
        """The batcher of ``call``'s model and task (one batch runs one task's code)."""
        key = (call.served.id, call.request.spec.name)
        if key not in batchers:
            label = metrics.model_label(call.served.id)
            batchers[key] = Batcher(
                f"{key[0]}:{key[1]}", call.served.gate, service.predict_batch, max_batch_size=max_batch_size,
                max_wait_ms=max_wait_ms, key=service.batch_key, on_batch=metrics.batch_size.labels(label).observe)
        return batchers[key]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        threading.Thread(target=service.warm_up, args=(preload,), name="inference-warm-up", daemon=True).start()
        yield
        service.close_streams()  # stop generating for clients we no longer serve
        for each in batchers.values():
            await each.aclose()

    # The schema and its pages tell anyone who asks what the server serves: not without the token.
    docs = {} if not authorize.enabled else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="Inference Studio reference server", version="1", lifespan=lifespan, **docs)
    app.add_middleware(RequestBodyMiddleware, max_body_bytes=max_body_bytes)
    app.add_middleware(RequestLogMiddleware, observe=metrics.observe_request)
    app.state.service = service
    app.openapi = partial(_openapi, app)
    install_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness: answers at once, even while models work."""
        loaded = sum(1 for model in served.values() if model.status == "loaded")
        return {"status": "ok", "served": len(served), "loaded": loaded,
                "auth": "bearer" if authorize.enabled else "none"}

    @app.get("/models")
    async def list_models(request: Request) -> dict[str, Any]:
        """Served models with task, classes, device and status."""
        authorize(request)
        return {"models": [model.describe(engine) for model in served.values()]}

    async def answer(request: Request, call: Call, encode: Callable[..., Any]) -> Any:
        """predict ``call`` at its model's gate (alone, or in a batch), then ``encode`` the prediction (which frees
        the place). A client that leaves while its request waits takes it out of the queue."""
        request.state.model_id, request.state.task = call.spec.model_id, call.request.spec.name
        gate = gateway if call.use_remote else call.served.gate
        admission = gate.admit()
        try:
            if max_batch_size > 1 and service.batchable(call):
                queue = batcher(call)
                queued = queue.submit(call, admission)
                batched = await until_answered(request, queued.future, partial(queue.leave, queued))
                queue_ms = batched.queue_ms
                prediction = replace(batched.outcome, batch_ms=batched.batch_ms, batch_size=batched.size)
            else:
                waiting = asyncio.ensure_future(gate.wait(admission))
                queue_ms = await until_answered(request, waiting, waiting.cancel)
                prediction = await run_in_threadpool(service.predict, call)
        except BaseException:
            gate.release(admission)
            raise
        metrics.observe_prediction(call, prediction, queue_ms)
        return encode(call, prediction, queue_ms, partial(gate.release, admission))

    @app.post("/inference", openapi_extra={"requestBody": INFERENCE_BODY})
    async def inference(request: Request):
        """The wire protocol: multipart ``spec`` (+ ``image``), answered as JSON or server-sent events."""
        authorize(request)
        return await answer(request, await service.decode_request(request), service.encode_response)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        """OpenAI's chat completions: messages through the model's chat template; an image_url part (data URI)."""
        authorize(request)
        call, chat = await openai.decode_chat(await _json_body(request, None))  # images travel in it: the body limit
        return await answer(request, call, partial(openai.encode, chat=True, sampling=chat))

    @app.post("/v1/completions")
    async def completions(request: Request):
        """OpenAI's completions: the prompt as it is, no chat template."""
        authorize(request)
        call, completion = await openai.decode_completion(await _json_body(request))
        return await answer(request, call, partial(openai.encode, chat=False, sampling=completion))

    @app.post("/generate")
    async def tgi_generate(request: Request):
        """TGI's generate: ``{"inputs", "parameters"}`` on the first served text-generation model."""
        authorize(request)
        call, tgi = await hf.decode_text(hf.tgi_model(), await _json_body(request), stream=False)
        return await answer(request, call, partial(hf.encode, tgi=tgi, listed=False))

    @app.post("/generate_stream")
    async def tgi_generate_stream(request: Request):
        """TGI's token events for the same body."""
        authorize(request)
        call, tgi = await hf.decode_text(hf.tgi_model(), await _json_body(request), stream=True)
        return await answer(request, call, partial(hf.encode, tgi=tgi, listed=False))

    @app.post("/")
    async def tgi_root(request: Request):
        """TGI's ``/``: generate, or token events when the body says ``"stream": true``."""
        authorize(request)
        call, tgi = await hf.decode_text(hf.tgi_model(), await _json_body(request))
        return await answer(request, call, partial(hf.encode, tgi=tgi, listed=True))

    @app.get("/metrics")
    async def prometheus_metrics(request: Request) -> Response:
        """Prometheus metrics (text exposition format); the token is needed when one is set."""
        authorize(request)
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/info")
    async def tgi_info(request: Request) -> dict[str, Any]:
        """TGI's info: the model its routes run."""
        authorize(request)
        return hf.info()

    @app.get("/models/{model_id:path}")
    async def describe_model(model_id: str, request: Request) -> dict[str, Any]:
        """One served model, as ``GET /models`` lists it (the task API's URL answers what it serves)."""
        authorize(request)
        return service.served_model(model_id).describe(engine)

    @app.post("/models/{model_id:path}")
    async def task_api(model_id: str, request: Request):
        """The Inference Endpoints task API: the image bytes, or ``{"inputs", "parameters"}``, for any served model."""
        authorize(request)
        request.state.model_id = model_id
        call, tgi = await hf.decode_task(model_id, request.headers.get("content-type", ""), await request.body())
        return await answer(request, call, partial(hf.encode, tgi=tgi, listed=True))

    @app.get("/v1/models")
    async def openai_models(request: Request) -> dict[str, Any]:
        """The served models, in OpenAI's list shape."""
        authorize(request)
        return openai.models()

    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, with the protocol's ``Spec`` among its components (the multipart body refers to it)."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        spec_schema = Spec.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(spec_schema.pop("$defs", {}), Spec=spec_schema)
        app.openapi_schema = schema
    return app.openapi_schema


async def _json_body(request: Request, max_bytes: int | None = MAX_TEXT_JSON_BYTES) -> Any:
    """The request's JSON body, parsed in the threadpool (the event loop keeps serving /health and streams)."""
    raw = await request.body()
    return await run_in_threadpool(parse_json, request.headers.get("content-type", ""), raw, max_bytes)


def _gauges(served: dict[str, ServedModel], engine: Engine) -> list[dict[str, Any]]:
    """Each served model's running and waiting requests, state and last load time, for the metrics' gauges."""
    loads = {model["model_id"]: model["load_ms"] / 1000 for model in engine.status()["models"]}
    return [{"id": model.id, "running": model.gate.running, "waiting": model.gate.in_flight - model.gate.running,
             "status": model.describe(engine)["status"], "load_s": loads.get(model.source)} for model in served.values()]
