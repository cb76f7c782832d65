"""The OpenAI-compatible API's backend (vLLM, TGI, SGLang, Ollama, llama.cpp's server, our reference server).

Text tasks only. ``/chat/completions`` when the prompt goes through the server's chat template (the default, and
always with an image: OpenAI's vision format, an ``image_url`` part holding a data URI), ``/completions`` for a raw
prompt (``use_chat_template=False``). Streamed as server-sent events until ``[DONE]``; ``usage`` is read into the
result's details. ``client.RemoteClient`` does the HTTP: the same deadline, retries, failover, body bound and token
rules as the studio protocol.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Generator, Iterator
from functools import partial
from typing import Any

from ..errors import BadResponse, InferenceError, UnsupportedTask
from ..request import Request
from ..tasks import TaskSpec
from ..types import Raw
from ..wire import parse_server_timing
from .base import StreamFacts, StreamHandle
from .client import RemoteAnswer, RemoteClient, stop_stream

__all__ = ["OpenAIBackend", "chat_body"]

log = logging.getLogger(__name__)

#: What a chat vision-language model is asked when an image comes without a question (as the local runner does).
DEFAULT_CAPTION_PROMPT = "Describe this image in one sentence."


class OpenAIBackend:
    """Runs text requests on an OpenAI-compatible server.

    Args:
        client: the engine's client for the endpoint.
        model_id: the model as the server names it (``Endpoint.served_name``).
        spec: the task; object detection has no OpenAI API.
    """

    name = "remote"

    def __init__(self, client: RemoteClient, model_id: str, spec: TaskSpec, *, use_remote: bool = False) -> None:
        if not spec.codec.streams:
            raise UnsupportedTask(f"endpoint {client.endpoint.name!r} speaks the OpenAI API, which has no "
                                  f"{spec.name}: use a studio or hf endpoint for it")
        if use_remote:
            raise UnsupportedTask("use_remote (gateway mode) is a studio-protocol feature: an OpenAI endpoint "
                                  "answers itself")
        self.client, self.model_id, self.spec = client, model_id, spec
        self._info: dict[str, Any] | None = None

    def _route(self, request: Request, *, stream: bool) -> tuple[str, dict[str, Any]]:
        """(path, body) of the request: chat completions, or completions for a raw prompt."""
        params = request.parameters
        body: dict[str, Any] = {"model": self.model_id, "max_tokens": params.max_new_tokens,
                                "temperature": params.temperature}
        if params.temperature > 0:
            body["top_p"] = params.top_p
            if params.top_k is not None:
                body["top_k"] = params.top_k  # vLLM, TGI and SGLang take it; OpenAI's own API does not
        if params.repetition_penalty is not None:
            body["repetition_penalty"] = params.repetition_penalty
        if params.seed is not None:
            body["seed"] = params.seed
        if stream:
            body.update(stream=True, stream_options={"include_usage": True})
        if request.image_data is None and params.use_chat_template is False:
            return "completions", {**body, "prompt": request.prompt}
        return "chat/completions", {**body, "messages": chat_body(request, self.client.settings.upload_max_edge)}

    def run(self, request: Request) -> Raw:
        started = time.perf_counter()
        path, body = self._route(request, stream=False)
        answer = self.client.post_json(path, body)
        try:
            choice = answer.data["choices"][0]
            text = choice["message"]["content"] if path == "chat/completions" else choice["text"]
            if not isinstance(text, str):
                raise TypeError(f"the answer's text is {type(text).__name__}")
            details = {"finish_reason": choice.get("finish_reason"), **_usage(answer.data.get("usage"))}
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise BadResponse(f"the remote endpoint {answer.endpoint} answered JSON that is not an OpenAI "
                              f"{path.replace('/', ' ')} answer ({exc})") from None
        timing = parse_server_timing(answer.headers.get("server-timing"))
        return Raw(output=text, elapsed_ms=(time.perf_counter() - started) * 1000, load_ms=timing.get("load"),
                   server_timing=timing, details={**details, "endpoint": answer.endpoint}, attempts=answer.attempts,
                   bytes_sent=answer.bytes_sent)

    def stream(self, request: Request) -> StreamHandle:
        started = time.perf_counter()
        path, body = self._route(request, stream=True)
        answer = self.client.post_json(path, body, stream=True)
        timing = parse_server_timing(answer.headers.get("server-timing"))
        facts = StreamFacts(details={"endpoint": answer.endpoint}, load_ms=timing.get("load"), server_timing=timing,
                            attempts=answer.attempts, bytes_sent=answer.bytes_sent)
        return StreamHandle(_pieces(answer.data, answer, facts, chat=path == "chat/completions"), started=started,
                            cancel=partial(stop_stream, answer), facts=facts)

    def info(self) -> dict[str, Any]:
        """What ``GET /models`` says of the model (OpenAI servers say little: no device or dtype)."""
        if self._info is None:
            try:
                listed = [item["id"] for item in self.status(self.client)[1]]
            except InferenceError as exc:
                log.info("GET /models failed (%s); model info stays partial", exc)
                return {}
            if self.model_id not in listed:
                log.warning("endpoint %s does not list %r among its models (%s)", self.client.endpoint.name,
                            self.model_id, ", ".join(map(str, listed[:10])))
            self._info = {}
        return dict(self._info)

    def close(self) -> None:
        """Nothing to let go of: the connections are the engine's pool."""

    @staticmethod
    def status(client: RemoteClient) -> tuple[str, list[dict[str, Any]]]:
        """(what the endpoint says, its models): ``GET /models``, OpenAI's list.

        Raises:
            InferenceError: the endpoint cannot be reached or does not answer as it should.
        """
        data = client.get_json("models")
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise BadResponse(f"GET /models of {', '.join(client.endpoint.hosts)} is not OpenAI's model list")
        return "reachable", [{"id": item.get("id"), "task": "text-generation", "status": "served"}
                             for item in items if isinstance(item, dict)]


def chat_body(request: Request, max_edge: int | None) -> list[dict[str, Any]]:
    """The request as OpenAI chat messages; an image goes as an ``image_url`` part with a data URI."""
    if request.image_data is None:
        return [{"role": "user", "content": request.prompt}]
    data, content_type, _ = request.image_data.for_upload(max_edge)
    uri = f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                         {"type": "text", "text": request.prompt or DEFAULT_CAPTION_PROMPT}]}]


def _usage(usage: Any) -> dict[str, Any]:
    if not isinstance(usage, dict):
        return {}
    details = {}
    if isinstance(usage.get("prompt_tokens"), int):
        details["prompt_tokens"] = usage["prompt_tokens"]
    if isinstance(usage.get("completion_tokens"), int):
        details["generated_tokens"] = usage["completion_tokens"]
    return details


def _pieces(events: Generator[Any, None, None], answer: RemoteAnswer, facts: StreamFacts, *, chat: bool
            ) -> Iterator[str]:
    finish_reason = None
    for event in events:
        if not isinstance(event, dict):
            raise BadResponse(f"the remote endpoint {answer.endpoint} sent an event that is not an OpenAI chunk")
        if event.get("usage"):
            facts.details.update(_usage(event["usage"]))
        for choice in event.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            piece = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
            if isinstance(piece, str) and piece:
                yield piece
            finish_reason = choice.get("finish_reason") or finish_reason
    if answer.state is not None and not answer.state.done and not answer.state.stopped_by_reader:
        raise BadResponse(f"the remote endpoint {answer.endpoint} ended its stream without [DONE]: the answer may be "
                          "cut short; try again, or check the server's log")
    facts.details["finish_reason"] = finish_reason
