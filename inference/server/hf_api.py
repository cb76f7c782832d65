"""Hugging Face's routes: TGI's ``/``, ``/generate`` and ``/generate_stream``, and the task API at ``/models/{id}``.

The same pipeline, auth, limits, gates and error codes as ``/inference``; only the shapes are Hugging Face's, so
``huggingface_hub.InferenceClient`` works with this server as its ``model`` URL: ``text_generation`` (streamed too)
on ``/`` or ``/models/{id}``, ``object_detection`` and ``image_to_text`` on ``/models/{id}``. TGI serves one model:
its routes here run the first served text-generation model (``--model`` order).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator, Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from ..backends.base import StreamHandle
from ..errors import InferenceError
from ..images import WIRE_FORMATS
from ..request import make_request
from ..tasks import get_task
from ..types import Raw
from ..wire import Payload, Spec, code_of_error, error_body
from .http import ApiError, EventStream, ProtocolJSON, parse_json, sse_event, validate_body
from .pipeline import Call, InferenceService, Prediction, ServedModel, decoded_request

__all__ = ["HFService", "TGIRequest"]

#: Our finish reasons, as TGI's.
FINISH_REASONS = {"stop": "eos_token", "length": "length", "cancelled": "length"}
#: TGI parameters this server cannot honour: refused when set, so that nothing is silently ignored.
UNSUPPORTED = ("best_of", "decoder_input_details", "frequency_penalty", "grammar", "stop", "top_n_tokens",
               "truncate", "typical_p", "watermark", "adapter_id")


class TGIParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    do_sample: bool | None = None
    details: bool = False
    return_full_text: bool | None = None
    # Accepted when unset or falsy (clients send defaults), refused otherwise:
    best_of: int | None = None
    decoder_input_details: bool | None = None
    frequency_penalty: float | None = None
    grammar: Any = None
    stop: list[str] | None = None
    top_n_tokens: int | None = None
    truncate: int | None = None
    typical_p: float | None = None
    watermark: bool | None = None
    adapter_id: str | None = None

    def ours(self) -> dict[str, Any]:
        """Our generation parameters; TGI takes the prompt as it is (no chat template)."""
        refused = [name for name in UNSUPPORTED if _is_set(name, getattr(self, name))]
        if refused:
            raise ApiError("invalid_input", f"this server does not support {', '.join(refused)}: leave "
                                            f"{'it' if len(refused) == 1 else 'them'} out")
        temperature = self.temperature
        if self.do_sample is False:
            temperature = 0.0
        elif self.do_sample and temperature is None:
            temperature = 1.0
        values = {"max_new_tokens": self.max_new_tokens, "temperature": temperature, "top_p": self.top_p,
                  "top_k": self.top_k, "repetition_penalty": self.repetition_penalty, "seed": self.seed,
                  "use_chat_template": False}
        return {key: value for key, value in values.items() if value is not None}


def _is_set(name: str, value: Any) -> bool:
    """Whether a client asked for something with ``name`` (clients send the defaults: None, False, [], best_of=1)."""
    return not (value is None or value is False or value == [] or (name == "best_of" and value == 1))


class TGIRequest(BaseModel):
    """``{"inputs", "parameters", "stream"}``: TGI's body, and the task API's JSON body."""

    model_config = ConfigDict(extra="forbid")

    inputs: str = Field(max_length=10_000_000)
    parameters: TGIParameters = Field(default_factory=TGIParameters)
    stream: bool = False


class HFService:
    """Decodes Hugging Face requests into the pipeline's ``Call`` and encodes its predictions as their answers."""

    def __init__(self, service: InferenceService) -> None:
        self.service = service

    # ------------------------------------------------------------------ decode

    def tgi_model(self) -> ServedModel:
        """The model TGI's routes run: the first served text-generation model."""
        return self.service.text_model()

    async def decode_text(self, served: ServedModel, body: Any, *, stream: bool | None = None) -> tuple[Call, TGIRequest]:
        tgi = await run_in_threadpool(validate_body, TGIRequest, body)
        task = get_task("text-generation")
        self.service.check_task(served, task)
        request = await run_in_threadpool(make_request, task, tgi.inputs, None, tgi.parameters.ours(),
                                          max_pixels=self.service.settings.max_image_pixels)
        wants_stream = tgi.stream if stream is None else stream
        return _call(served, task.name, request, wants_stream), tgi

    async def decode_task(self, model_id: str, content_type: str, raw: bytes) -> tuple[Call, TGIRequest | None]:
        """The task API: the image bytes, or JSON ``{"inputs", "parameters"}`` (base64 for an image task)."""
        served = self.service.served_model(model_id)
        tasks = served.tasks or ()
        if "text-generation" in tasks:
            return await self.decode_text(served, await run_in_threadpool(parse_json, content_type, raw))
        image_task = next((name for name in ("object-detection", "image-to-text", "image-text-to-text")
                           if name in tasks), None)
        if image_task is None:
            if served.tasks is None and served.error is None:
                raise ApiError("model_loading", f"model {model_id!r} is still starting: retry shortly")
            if served.error is not None:
                raise ApiError("model_load_failed", f"model {model_id!r} cannot be loaded: {served.error}")
            raise ApiError("unsupported_task", f"model {model_id!r} does {', '.join(tasks) or 'no supported task'}: "
                                               "the task API here runs text generation, detection and captions")
        task = get_task(image_task)
        parameters: dict[str, Any] = {}
        if "json" not in content_type:  # the image bytes (InferenceClient may send them with no type): Pillow decides
            image = raw
        else:
            body = await run_in_threadpool(_image_body, content_type, raw)
            try:
                image = base64.b64decode(body.inputs, validate=True)
            except (binascii.Error, ValueError):
                raise ApiError("invalid_input", "inputs must be the image in base64 (or send the image bytes as "
                                                "the body, with an image Content-Type)") from None
            parameters = body.parameters
        self.service.check_task(served, task)
        request = await run_in_threadpool(decoded_request, task, image, None, parameters,
                                          max_pixels=self.service.settings.max_image_pixels, formats=WIRE_FORMATS)
        return _call(served, task.name, request, False), None

    def info(self) -> dict[str, Any]:
        """TGI's ``GET /info`` for the model its routes run."""
        served = self.tgi_model()
        facts = served.describe(self.service.engine)
        return {"model_id": served.id, "model_sha": None, "model_pipeline_tag": "text-generation",
                "model_dtype": facts["dtype"], "model_device_type": facts["device"],
                "max_concurrent_requests": served.gate.places,
                "router": "inference-studio", "version": "1"}

    # ------------------------------------------------------------------ encode

    def encode(self, call: Call, prediction: Prediction, queue_ms: float, release: Callable[[], None], *,
               tgi: TGIRequest | None, listed: bool) -> ProtocolJSON | EventStream:
        """The answer: detections, ``[{"generated_text"}]`` (``listed``) or TGI's ``{"generated_text"}``, or
        TGI's token events for a stream."""
        outcome = prediction.outcome
        headers = {"X-Inference-Source": prediction.source, "Server-Timing": prediction.server_timing(queue_ms)}
        if isinstance(outcome, StreamHandle):
            return self._stream(outcome, tgi, release, headers)
        release()
        if tgi is None:  # an image task: detections as they are, a caption as [{"generated_text"}]
            body = call.request.spec.codec.to_wire(outcome.output, outcome.details)
            return ProtocolJSON([body] if isinstance(body, dict) else body, headers=headers)
        answer = {"generated_text": _full_text(tgi, outcome.output)}
        if tgi.parameters.details:
            answer["details"] = _details(outcome, tgi)
        return ProtocolJSON([answer] if listed else answer, headers=headers)

    def _stream(self, handle: StreamHandle, tgi: TGIRequest | None, release: Callable[[], None],
                headers: dict[str, str]) -> EventStream:
        assert tgi is not None  # only text streams
        self.service.streams.add(handle)

        def close() -> None:
            handle.cancel()
            release()
            self.service.streams.discard(handle)

        def event(index: int, text: str, *, special: bool = False, final: Raw | None = None) -> bytes:
            # NOTE: pieces are decoded text as the tokenizer releases it, not single tokens: no id or logprob.
            return sse_event({"index": index, "token": {"id": -1, "text": text, "logprob": None, "special": special},
                              "generated_text": None if final is None else _full_text(tgi, final.output),
                              "details": None if final is None else _details(final, tgi), "top_tokens": None})

        async def events() -> AsyncIterator[bytes]:
            pieces: list[str] = []
            try:
                async for piece in iterate_in_threadpool(handle):
                    pieces.append(piece)
                    yield event(len(pieces), piece)
                yield event(len(pieces) + 1, "", special=True, final=handle.raw("".join(pieces)))
            except InferenceError as exc:
                yield sse_event(error_body(code_of_error(exc), str(exc)))
            finally:
                close()

        return EventStream(events(), close, {**headers, "Cache-Control": "no-cache"})


class ImageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: str
    parameters: dict[str, Any] = Field(default_factory=dict)


def _image_body(content_type: str, raw: bytes) -> ImageRequest:
    return validate_body(ImageRequest, parse_json(content_type, raw, max_bytes=None))  # an image: the body limit


def _call(served: ServedModel, task: str, request, stream: bool) -> Call:
    return Call(Spec(model_id=served.id, task=task, payload=Payload(inputs=request.prompt)), request, served,
                stream=stream)


def _full_text(tgi: TGIRequest, text: str) -> str:
    return tgi.inputs + text if tgi.parameters.return_full_text else text


def _details(raw: Raw, tgi: TGIRequest) -> dict[str, Any]:
    return {"finish_reason": FINISH_REASONS.get(raw.details.get("finish_reason"), "length"),
            "generated_tokens": int(raw.details.get("generated_tokens") or 0), "seed": tgi.parameters.seed,
            "prefill": [], "tokens": []}
