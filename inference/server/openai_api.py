"""The OpenAI-compatible routes: ``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models``.

The same pipeline as ``/inference`` (decode → predict → encode), the same auth, limits, gates and error codes; only
the request and answer shapes are OpenAI's, so the ``openai`` SDK, LangChain or any OpenAI client can use the
reference server. Chat messages go through the model's chat template; an ``image_url`` part (a data URI) makes the
request image-text-to-text on a model that takes images.
"""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from ..backends.base import StreamHandle
from ..errors import InferenceError
from ..images import WIRE_FORMATS
from ..request import make_request
from ..tasks import get_task
from ..types import Raw
from ..wire import Payload, Spec, code_of_error, error_body
from .http import ApiError, EventStream, ProtocolJSON, sse_event, validate_body
from .pipeline import Call, InferenceService, Prediction, decoded_request

__all__ = ["ChatRequest", "CompletionRequest", "OpenAIService"]

#: Most messages one chat request may hold, parts one message may hold, and characters of text in all of them.
MAX_MESSAGES, MAX_PARTS, MAX_TEXT_CHARS = 256, 64, 1_000_000
#: OpenAI parameters this server cannot honour: refused when set, never silently ignored (others a client may send,
#: such as ``user`` or ``metadata``, change nothing and are ignored).
UNSUPPORTED = ("stop", "logprobs", "top_logprobs", "response_format", "tools", "tool_choice", "functions",
               "function_call", "presence_penalty", "frequency_penalty", "logit_bias", "best_of", "suffix", "echo")
#: The model names TGI's clients send when the URL names the model: huggingface_hub's InferenceClient sends "dummy".
TGI_PLACEHOLDERS = ("tgi", "dummy")


class _Sampling(BaseModel):
    """The sampling fields both routes take; others a client may send (user, logprobs, ...) are ignored."""

    model_config = ConfigDict(extra="allow")  # kept to refuse what cannot be honoured (``UNSUPPORTED``)

    model: str = Field(min_length=1, max_length=512)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: dict[str, Any] | None = None

    def parameters(self, *, chat: bool) -> dict[str, Any]:
        """Our generation parameters (validated by the task, with its ranges and messages)."""
        if self.n != 1:
            raise ApiError("invalid_input", f"n={self.n}: this server answers one choice per request (n=1)")
        refused = [name for name in UNSUPPORTED if (self.model_extra or {}).get(name) not in (None, False, [], 0)]
        if refused:
            raise ApiError("invalid_input", f"this server does not support {', '.join(refused)}: leave "
                                            f"{'it' if len(refused) == 1 else 'them'} out")
        if self.stream_options is not None and not isinstance(self.stream_options, dict):
            raise ApiError("invalid_input", "stream_options must be an object such as {\"include_usage\": true}")
        tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        values = {"max_new_tokens": tokens, "temperature": self.temperature,
                  "top_p": self.top_p, "top_k": self.top_k, "repetition_penalty": self.repetition_penalty,
                  "seed": self.seed, "use_chat_template": chat}
        return {key: value for key, value in values.items() if value is not None}

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: dict[str, Any] | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart] = Field(max_length=MAX_PARTS)


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)


class CompletionRequest(_Sampling):
    prompt: str


class OpenAIService:
    """Decodes OpenAI requests into the pipeline's ``Call`` and encodes its predictions as OpenAI answers."""

    def __init__(self, service: InferenceService) -> None:
        self.service = service

    # ------------------------------------------------------------------ decode

    async def decode_chat(self, body: Any) -> tuple[Call, ChatRequest]:
        chat = await run_in_threadpool(validate_body, ChatRequest, body)
        texts, images = [], []
        for message in chat.messages:
            parts = [ContentPart(type="text", text=message.content)] if isinstance(message.content, str) \
                else message.content
            text = "".join(part.text or "" for part in parts if part.type == "text")
            images += [_data_uri(part.image_url) for part in parts if part.type == "image_url"]
            texts.append({"role": message.role, "content": text})
        if sum(len(text["content"]) for text in texts) > MAX_TEXT_CHARS:
            raise ApiError("invalid_input", f"the messages hold more than {MAX_TEXT_CHARS:,} characters of text: "
                                            "send a shorter conversation")
        if texts[-1]["role"] != "user":
            raise ApiError("invalid_input", "the last message must be the user's: it is what the model answers")
        served = self._served(chat.model)
        if images:
            if len(images) > 1 or len(texts) > 1:
                raise ApiError("invalid_input", "send one user message with one image: a conversation around "
                                                "images is not supported here")
            if served.tasks is not None and "image-text-to-text" not in served.tasks:
                raise ApiError("invalid_input", f"model {chat.model!r} takes no images (it does "
                                                f"{', '.join(served.tasks) or 'no supported task'}): send text only, "
                                                "or pick a vision-language model")
            task = get_task("image-text-to-text")
            request = await run_in_threadpool(decoded_request, task, images[0], texts[0]["content"] or None,
                                              chat.parameters(chat=True), max_pixels=self._max_pixels,
                                              formats=WIRE_FORMATS)
        else:
            task = get_task("text-generation")
            request = await run_in_threadpool(make_request, task, texts[-1]["content"], None,
                                              chat.parameters(chat=True), max_pixels=self._max_pixels)
            request = replace(request, messages=tuple(texts))
        self.service.check_task(served, task)
        return self._call(chat, task.name, request, served), chat

    async def decode_completion(self, body: Any) -> tuple[Call, CompletionRequest]:
        completion = await run_in_threadpool(validate_body, CompletionRequest, body)
        served = self._served(completion.model)
        task = get_task("text-generation")
        self.service.check_task(served, task)
        request = await run_in_threadpool(make_request, task, completion.prompt, None,
                                          completion.parameters(chat=False), max_pixels=self._max_pixels)
        return self._call(completion, task.name, request, served), completion

    def _served(self, model: str):
        """The served model a request names; TGI's placeholders (``tgi``, ``dummy``) name the TGI routes' model."""
        if model not in self.service.served and model in TGI_PLACEHOLDERS:
            return self.service.text_model()
        return self.service.served_model(model)

    @property
    def _max_pixels(self) -> int:
        return self.service.settings.max_image_pixels

    @staticmethod
    def _call(sampling: _Sampling, task: str, request, served) -> Call:
        spec = Spec(model_id=sampling.model, task=task, payload=Payload(inputs=request.prompt))
        return Call(spec, request, served, stream=sampling.stream)

    # ------------------------------------------------------------------ encode

    def encode(self, call: Call, prediction: Prediction, queue_ms: float, release: Callable[[], None], *,
               chat: bool, sampling: _Sampling) -> ProtocolJSON | EventStream:
        """The OpenAI answer: one JSON object, or ``chat.completion.chunk`` events and ``[DONE]``."""
        identity = _Identity(chat=chat, model=sampling.model)
        outcome = prediction.outcome
        headers = {"X-Inference-Source": prediction.source, "Server-Timing": prediction.server_timing(queue_ms)}
        if isinstance(outcome, StreamHandle):
            return self._stream(identity, outcome, sampling.include_usage, release, headers)
        release()
        choice: dict[str, Any] = {"index": 0, "finish_reason": _finish_reason(outcome)}
        if chat:
            choice["message"] = {"role": "assistant", "content": outcome.output}
        else:
            choice["text"] = outcome.output
        return ProtocolJSON({**identity.fields("chat.completion" if chat else "text_completion"),
                             "choices": [choice], "usage": _usage(outcome)}, headers=headers)

    def _stream(self, identity: _Identity, handle: StreamHandle, include_usage: bool, release: Callable[[], None],
                headers: dict[str, str]) -> EventStream:
        self.service.streams.add(handle)

        def close() -> None:
            handle.cancel()
            release()
            self.service.streams.discard(handle)

        kind = "chat.completion.chunk" if identity.chat else "text_completion"

        def chunk(piece: str | None = None, finish_reason: str | None = None, first: bool = False) -> bytes:
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason}
            if identity.chat:
                choice["delta"] = ({"role": "assistant"} if first else {}) | ({"content": piece} if piece else {})
            else:
                choice["text"] = piece or ""
            return sse_event({**identity.fields(kind), "choices": [choice]})

        async def events() -> AsyncIterator[bytes]:
            pieces: list[str] = []
            try:
                if identity.chat:
                    yield chunk(first=True)
                async for piece in iterate_in_threadpool(handle):
                    pieces.append(piece)
                    yield chunk(piece)
                raw = handle.raw("".join(pieces))
                yield chunk(finish_reason=_finish_reason(raw))
                if include_usage:
                    yield sse_event({**identity.fields(kind), "choices": [], "usage": _usage(raw)})
                yield b"data: [DONE]\n\n"
            except InferenceError as exc:
                yield sse_event(error_body(code_of_error(exc), str(exc)))
            finally:
                close()

        return EventStream(events(), close, {**headers, "Cache-Control": "no-cache"})

    def models(self) -> dict[str, Any]:
        """``GET /v1/models``: the served models in OpenAI's list shape."""
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0,
                                             "owned_by": "inference-studio"} for model_id in self.service.served]}


class _Identity:
    """The fields every answer and chunk of one request repeats."""

    def __init__(self, *, chat: bool, model: str) -> None:
        self.chat, self.model = chat, model
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def fields(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}


def _data_uri(image_url: dict[str, Any] | None) -> bytes:
    """The bytes of an ``image_url`` part: a base64 data URI (this server fetches no URLs)."""
    url = (image_url or {}).get("url")
    if not isinstance(url, str) or not url.startswith("data:") or ";base64," not in url:
        raise ApiError("invalid_input", "an image_url must be a data URI (data:image/jpeg;base64,...): this server "
                                        "does not fetch URLs")
    try:
        return base64.b64decode(url.split(";base64,", 1)[1], validate=True)
    except (binascii.Error, ValueError):
        raise ApiError("invalid_input", "the image_url's data URI is not valid base64") from None


def _finish_reason(raw: Raw) -> str:
    return "length" if raw.details.get("finish_reason") == "length" else "stop"


def _usage(raw: Raw) -> dict[str, int]:
    prompt = int(raw.details.get("prompt_tokens") or 0)
    completion = int(raw.details.get("generated_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
