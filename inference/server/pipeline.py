"""The protocol's pipeline, the LitServe way: ``decode_request`` → ``predict`` → ``encode_response``.

One pipeline for JSON answers and event streams alike: ``predict`` runs the call on a backend (the local one on
the served model, or the studio client in gateway mode) and gives a ``Raw`` or a ``StreamHandle``; ``encode_response``
writes either with the task's codec. The server runs on the engine and the backends, never on the user-facing
``Model``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from pydantic import ValidationError
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.datastructures import UploadFile

from ..backends.base import Backend, StreamHandle
from ..backends.loading import model_libraries, tasks_of
from ..backends.local import LocalBackend
from ..backends.studio import StudioBackend
from ..engine import Engine
from ..errors import InferenceError, ModelLoadError
from ..images import WIRE_FORMATS
from ..request import Request as InferenceRequest, make_request
from ..settings import Settings, parse_flag
from ..tasks import TaskSpec, get_task, ignored_image
from ..types import Raw, Timings
from ..wire import Spec, code_of_error, dumps, error_body
from .gate import Gate
from .http import ApiError, EventStream, ProtocolJSON, header_value, sse_event

__all__ = ["Call", "InferenceService", "Prediction", "ServedModel", "decoded_request"]

log = logging.getLogger("inference.server")

#: Form parts of a request: spec, image and use_remote. The spec may come as a file part (curl -F spec=@spec.json).
MAX_FILES, MAX_FIELDS, MAX_PART_BYTES = 2, 4, 1024 * 1024
#: JSON nesting a spec may have: the protocol's spec is three levels deep; parameters are flat.
MAX_SPEC_DEPTH = 32


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
    #: Held while the model loads, so that loads of its tasks run one at a time and its status stays true.
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
    #: The client asked for server-sent events.
    stream: bool = False

    @property
    def use_remote(self) -> bool:
        return self.served is None


@dataclass
class Prediction:
    """What ``predict`` gives ``encode_response``: the answer (or the started stream) and where it ran."""

    outcome: Raw | StreamHandle
    source: str
    #: How long this request waited for its model to load (its own load or another's), once.
    load_wait_ms: float | None = None
    #: Run in a batch: how long it waited for the batch to close after a slot was free, and the batch's size.
    batch_ms: float | None = None
    batch_size: int | None = None

    def server_timing(self, queue_ms: float) -> str:
        """The answer's ``Server-Timing``: ``inference`` (not known yet for a stream; a batch's whole run),
        ``queue``, ``batch`` (with the batch's size) and ``load`` (this server's wait and, in gateway mode, the
        upstream's own load)."""
        outcome = self.outcome
        facts = outcome.facts if isinstance(outcome, StreamHandle) else outcome
        loads = [wait for wait in (self.load_wait_ms, facts.load_ms) if wait is not None]
        inference = None if isinstance(outcome, StreamHandle) else Timings.from_raw(outcome).total_ms
        descriptions = {} if self.batch_size is None else {
            "batch": f"{self.batch_size} request{'s' if self.batch_size != 1 else ''}"}
        return _server_timing(descriptions, inference=inference, queue=queue_ms, batch=self.batch_ms,
                              load=sum(loads) if loads else None)


class InferenceService:
    """decode_request → predict → encode_response, on the engine's models (or the gateway's upstream)."""

    def __init__(self, engine: Engine, settings: Settings, served: dict[str, ServedModel]) -> None:
        self.engine, self.settings, self.served = engine, settings, served
        self.streams: set[StreamHandle] = set()  # open event streams, stopped on shutdown

    def warm_up(self, preload: bool) -> None:
        """What every first request needs, whatever its model: torch and transformers' model machinery (seconds of
        imports). Then every model's tasks and classes, read from configs; then, with ``preload``, the weights."""
        model_libraries()

        for model in self.served.values():
            try:
                model.tasks, model.classes = tasks_of(model.source)
            except InferenceError as exc:
                model.status, model.error = "error", str(exc)
                log.warning("model %s is not available: %s", model.id, exc)
        for model in self.served.values():
            if preload and model.tasks:
                try:
                    self.ready(model, get_task(model.tasks[0]))  # no request reports this load
                except InferenceError as exc:
                    log.warning("model %s could not be loaded: %s", model.id, exc)

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
            served = self.served_model(spec.model_id)
            if task.image == "none" and image_bytes is not None:
                # A text request may carry an image (the protocol's own example does): a model that takes
                # images answers about it; a text-only one runs the text and says the image was not used.
                if served.tasks and "image-text-to-text" in served.tasks:
                    task = get_task("image-text-to-text")
                    spec = spec.model_copy(update={"task": task.name})
                else:
                    warning = ignored_image(spec.model_id, task.name)
            self.check_task(served, task)
        inputs: Any = image_bytes if task.image == "required" else spec.payload.inputs
        prompt = spec.payload.inputs if task.image == "required" else None
        extra_image = image_bytes if task.image == "none" else None
        validated = await run_in_threadpool(
            decoded_request, task, inputs, prompt, spec.payload.parameters, image=extra_image,
            max_pixels=self.settings.max_image_pixels, formats=WIRE_FORMATS, decode=served is not None,
        )
        stream = "text/event-stream" in request.headers.get("accept", "")
        if stream and not task.codec.streams:
            raise ApiError("invalid_input", f"{task.name} has no text to stream: accept application/json")
        return Call(spec, validated, served, warning, stream)

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

    def served_model(self, model_id: str) -> ServedModel:
        served = self.served.get(model_id)
        if served is None:
            raise ApiError("model_not_found",
                           f"model {model_id!r} is not served here; served models: {', '.join(sorted(self.served))}")
        return served

    def text_model(self) -> ServedModel:
        """The first served text-generation model (``--model`` order): what TGI's routes run, and what a chat request
        naming TGI's placeholder model (``tgi``, or ``dummy`` from huggingface_hub) gets."""
        for served in self.served.values():
            if served.tasks and "text-generation" in served.tasks:
                return served
        if any(served.tasks is None and served.error is None for served in self.served.values()):
            raise ApiError("model_loading", "the server is still reading its models' configs: retry shortly")
        raise ApiError("model_not_found", "this server serves no text-generation model for TGI's routes: use "
                                          "/models/{model_id} or /v1/chat/completions with a served model")

    @staticmethod
    def check_task(served: ServedModel, task: TaskSpec) -> None:
        if served.tasks is not None and task.name not in served.tasks:
            raise ApiError("invalid_input",
                           f"model {served.id!r} does {', '.join(served.tasks) or 'no supported task'}, not {task.name}")

    # ------------------------------------------------------------------ predict

    def ready(self, served: ServedModel, task: TaskSpec) -> float | None:
        """Load ``served`` for ``task`` if it is not loaded; the ms this waited for a load (its own or another's).

        A failed load is reported (``/models``) and raised as ``ModelLoadError`` (503 ``model_load_failed``); the
        next request for the model tries again.
        """
        if self.engine.is_loaded(served.source, task):
            return None
        started = time.perf_counter()
        with served.lock:
            if not self.engine.loaded(served.source):
                served.status = "loading"
            try:
                self.engine.get(served.source, task)
            except ModelLoadError as exc:
                served.status, served.error = "error", str(exc)
                raise
            if served.tasks is None:  # its config could not be read at startup; now it loaded
                served.tasks, served.classes = tasks_of(served.source)
            served.status, served.error = "loaded", None
        return (time.perf_counter() - started) * 1000

    def backend(self, call: Call) -> Backend:
        """Where ``call`` runs: the served model here, or this server's own remote endpoint (gateway mode)."""
        task = call.request.spec
        if call.served is not None:
            return LocalBackend(self.engine, call.served.source, task)
        if not self.settings.remote_configured:
            raise ApiError("remote_not_configured",
                           "use_remote=true, but this server has no remote endpoint: set "
                           "REMOTE_INFERENCE_ENABLED=true and REMOTE_INFERENCE_ENDPOINT on the server")
        model_id = call.spec.model_id.strip()
        if not model_id:
            raise ApiError("invalid_input", "model_id is empty: name the model the upstream endpoint serves")
        return StudioBackend(self.engine.remote_client(self.settings), model_id, task)

    def predict(self, call: Call) -> Prediction:
        """Run ``call`` (or start its stream), after waiting for its model. Runs in a worker thread.

        A load held this request up (at startup, or for another request): that wait is reported as ``load``,
        never as inference or network time, once, by the request that waited. A gateway's upstream reports its own.
        """
        backend = self.backend(call)
        load_wait_ms = self.ready(call.served, call.request.spec) if call.served is not None else None
        outcome = backend.stream(call.request) if call.stream else backend.run(call.request)
        return Prediction(outcome, backend.name, load_wait_ms)

    def batchable(self, call: Call) -> bool:
        """Whether ``call`` may join a batch: a whole answer from a served model (a stream starts at once, alone)."""
        return call.served is not None and not call.stream

    @staticmethod
    def batch_key(call: Call) -> Hashable:
        """Which calls may share a batch: text runs one ``generate`` a batch, so the same generation parameters (a
        seeded call alone: its seed fixes its own draws); images of any parameters share one forward."""
        parameters = call.request.parameters
        if not call.request.spec.codec.streams:
            return None
        return id(call) if getattr(parameters, "seed", None) is not None else parameters

    def predict_batch(self, calls: list[Call]) -> list[Prediction | Exception]:
        """Run calls to one served model and task together (``LocalBackend.run_batch``); each call's prediction or
        failure in its place. Runs in a worker thread."""
        served, task = calls[0].served, calls[0].request.spec
        backend = LocalBackend(self.engine, served.source, task)
        load_wait_ms = self.ready(served, task)
        outcomes = backend.run_batch([call.request for call in calls])
        return [outcome if isinstance(outcome, Exception) else Prediction(outcome, backend.name, load_wait_ms)
                for outcome in outcomes]

    # ------------------------------------------------------------------ encode

    def encode_response(self, call: Call, prediction: Prediction, queue_ms: float,
                        release: Callable[[], None]) -> ProtocolJSON | EventStream:
        """The protocol's answer: JSON, or server-sent events for a stream, with X-Inference-Source, Server-Timing
        and any X-Inference-Warning. ``release`` frees the request's place at its gate once the answer is made
        (a stream's, when the stream ends, however it ends)."""
        outcome = prediction.outcome
        if isinstance(outcome, StreamHandle):
            return self._event_stream(call, prediction, outcome, queue_ms, release)
        release()
        codec = call.request.spec.codec
        response = ProtocolJSON(codec.to_wire(outcome.output, outcome.details), headers={
            "X-Inference-Source": prediction.source,
            "Server-Timing": prediction.server_timing(queue_ms),
        })
        for warning in self._warnings(call, outcome.warnings):
            response.headers.append("X-Inference-Warning", header_value(warning))
        return response

    def _event_stream(self, call: Call, prediction: Prediction, handle: StreamHandle, queue_ms: float,
                      release: Callable[[], None]) -> EventStream:
        """Text as server-sent events: ``data: {"token": ...}`` pieces, then ``data: {"generated_text": ...}``."""
        self.streams.add(handle)

        def close() -> None:
            handle.cancel()  # generation stops within a token
            release()
            self.streams.discard(handle)

        async def events() -> AsyncIterator[bytes]:
            pieces: list[str] = []
            try:
                async for piece in iterate_in_threadpool(handle):
                    pieces.append(piece)
                    yield sse_event({"token": piece})
                raw = handle.raw("".join(pieces))
                details = {**raw.details, "server_ms": round(Timings.from_raw(raw).total_ms, 1)}
                yield sse_event({"generated_text": raw.output, "details": details})
            except InferenceError as exc:
                yield sse_event(error_body(code_of_error(exc), str(exc)))
            finally:
                close()

        headers = {"X-Inference-Source": prediction.source, "Cache-Control": "no-cache",
                   "Server-Timing": prediction.server_timing(queue_ms)}
        response = EventStream(events(), close, headers)
        for warning in self._warnings(call, handle.facts.warnings):
            response.headers.append("X-Inference-Warning", header_value(warning))
        return response

    @staticmethod
    def _warnings(call: Call, upstream: tuple[str, ...]) -> tuple[str, ...]:
        # Run here, the served id names the model (the backend knows only its source); forwarded, the upstream's
        # own warnings pass through.
        if call.use_remote:
            return upstream
        return (call.warning,) if call.warning else ()

    def close_streams(self) -> None:
        """Stop generating for every open stream (the server is stopping)."""
        for handle in list(self.streams):
            handle.cancel()


def decoded_request(task: TaskSpec, inputs: Any, prompt: str | None, parameters: Any, *, decode: bool = True,
                    **options: Any) -> InferenceRequest:
    """``make_request``, and the image's pixels decoded too when the request runs here (``decode``): in the
    request's own worker thread, beside other requests, and not on the model's time (a batch would decode its
    images one after another). Bytes that are no image fail here, before the request waits for the model."""
    request = make_request(task, inputs, prompt, parameters, **options)
    if decode and task.image != "none":
        request.image  # noqa: B018 (decodes once; ImageData keeps it)
    return request


def _server_timing(descriptions: dict[str, str], **durations: float | None) -> str:
    """``Server-Timing``: ``inference;dur=12.5, queue;dur=0.3, batch;dur=1.9;desc="4 requests"`` (None left out)."""
    return ", ".join(f"{name};dur={value:.1f}" + (f';desc="{descriptions[name]}"' if name in descriptions else "")
                     for name, value in durations.items() if value is not None)


def _depth(value: Any, limit: int = MAX_SPEC_DEPTH) -> int:
    """How deeply ``value`` nests lists and dicts (counting stops past ``limit``)."""
    depth, level = 0, [value]
    while level and depth <= limit:
        depth += 1
        level = [child for item in level if isinstance(item, (dict, list))
                 for child in (item.values() if isinstance(item, dict) else item)
                 if isinstance(child, (dict, list))]
    return depth
