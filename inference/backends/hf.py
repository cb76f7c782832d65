"""The Hugging Face backend: TGI and Inference Endpoints, one deployed model per URL.

Requests go to the endpoint URL itself, as ``huggingface_hub.InferenceClient(model=URL)`` sends them:
- text: ``{"inputs": prompt, "parameters": {...}, "stream": bool}`` (TGI's ``/`` route, which streams TGI's
  token events when the body says ``"stream": true``; the Inference Endpoints toolkit answers the same body);
- images: the raw bytes (``Content-Type: image/...``), or ``{"inputs": base64, "parameters": {...}}`` when the call
  has parameters; detections come back as ``[{"label", "score", "box"}]``, captions as ``[{"generated_text"}]``.
``client.RemoteClient`` does the HTTP, with the same deadline, retries, failover, bounds and token rules.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Generator, Iterator
from functools import partial
from typing import Any

from ..errors import BadResponse, InferenceError, InvalidInput, UnsupportedTask
from ..request import Request
from ..tasks import TaskSpec, ignored_image
from ..types import Raw
from ..wire import parse_server_timing
from .base import StreamFacts, StreamHandle
from .client import RemoteAnswer, RemoteClient, stop_stream

__all__ = ["HFBackend"]

log = logging.getLogger(__name__)

#: TGI's finish reasons, as ours.
FINISH_REASONS = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}


class HFBackend:
    """Runs requests on a Hugging Face endpoint (TGI, or an Inference Endpoint's task API).

    Args:
        client: the engine's client for the endpoint (its URL is the deployed model's).
        model_id: kept for results; the URL names the model.
        spec: the task.
    """

    name = "remote"

    def __init__(self, client: RemoteClient, model_id: str, spec: TaskSpec, *, use_remote: bool = False) -> None:
        if use_remote:
            raise UnsupportedTask("use_remote (gateway mode) is a studio-protocol feature: a Hugging Face endpoint "
                                  "answers itself")
        self.client, self.model_id, self.spec = client, model_id, spec

    def _body(self, request: Request, *, stream: bool) -> tuple[Any, str | None, float, tuple[str, ...]]:
        """(body, content type for raw bytes or None for JSON, scale of the image sent, warnings)."""
        params = request.parameters.model_dump(exclude_none=True)
        explicit = request.parameters.model_dump(exclude_unset=True, exclude_none=True)
        if explicit.pop("use_chat_template", False):
            raise InvalidInput("a Hugging Face endpoint takes the prompt as it is (TGI's /generate): for the model's "
                               "chat template, use the endpoint's OpenAI route (protocol = \"openai\", url .../v1)")
        if self.spec.image == "none":
            warnings = (ignored_image(self.model_id, self.spec.name),) if request.image_data is not None else ()
            return {"inputs": request.prompt, "parameters": _tgi_parameters(params), "stream": stream}, None, 1.0, \
                warnings
        if request.prompt:
            raise InvalidInput(f"a Hugging Face endpoint's {self.spec.name} takes no prompt with the image: leave it "
                               "empty, or ask an OpenAI-compatible endpoint (vision chat) about the image")
        data, content_type, scale = request.image_data.for_upload(self.client.settings.upload_max_edge)
        if not explicit:
            return data, content_type, scale, ()  # the image alone, as InferenceClient sends it
        return {"inputs": base64.b64encode(data).decode("ascii"), "parameters": explicit}, None, scale, ()

    def run(self, request: Request) -> Raw:
        started = time.perf_counter()
        body, content_type, scale, warnings = self._body(request, stream=False)
        answer = self.client.post_json(None, body, content_type=content_type)
        try:
            output, details = self.spec.codec.from_wire(answer.data, classes=tuple, scale=scale)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise BadResponse(f"the remote endpoint {answer.endpoint} answered JSON of the wrong shape for "
                              f"{self.spec.name}: {str(exc).splitlines()[0]}") from None
        timing = parse_server_timing(answer.headers.get("server-timing"))
        return Raw(output=output, elapsed_ms=(time.perf_counter() - started) * 1000, load_ms=timing.get("load"),
                   server_timing=timing, details={**_details(details), "endpoint": answer.endpoint},
                   attempts=answer.attempts, bytes_sent=answer.bytes_sent, warnings=warnings)

    def stream(self, request: Request) -> StreamHandle:
        """TGI's token events: ``{"token": {"text"}}``, the last one with ``generated_text`` and ``details``."""
        if self.spec.image != "none":
            raise UnsupportedTask(f"a Hugging Face endpoint streams text-generation only, not {self.spec.name}: "
                                  "call the model instead")
        started = time.perf_counter()
        body, _, _, warnings = self._body(request, stream=True)
        answer = self.client.post_json(None, body, stream=True)
        timing = parse_server_timing(answer.headers.get("server-timing"))
        facts = StreamFacts(details={"endpoint": answer.endpoint}, load_ms=timing.get("load"), server_timing=timing,
                            attempts=answer.attempts, bytes_sent=answer.bytes_sent, warnings=warnings)
        return StreamHandle(_pieces(answer.data, answer, facts), started=started, cancel=partial(stop_stream, answer),
                            facts=facts)

    def info(self) -> dict[str, Any]:
        """A Hugging Face endpoint reports no device, dtype or class list."""
        return {}

    def close(self) -> None:
        """Nothing to let go of: the connections are the engine's pool."""

    @staticmethod
    def status(client: RemoteClient) -> tuple[str, list[dict[str, Any]]]:
        """(what the endpoint says, its model): TGI's ``GET /info``, else ``GET /health``, else ``GET`` of the URL
        itself (an Inference Endpoint's, or our server's task-API URL, which describes its model).

        Raises:
            InferenceError: the endpoint cannot be reached, or answers none of them.
        """
        failure: InferenceError | None = None
        for path in ("info", "health", None):
            try:
                data = client.get_json(path)
            except InferenceError as exc:
                failure = failure or exc
                continue
            model = data.get("model_id") or data.get("id") if isinstance(data, dict) else None
            task = (data.get("model_pipeline_tag") or data.get("task")) if isinstance(data, dict) else None
            return "reachable", [{"id": model, "task": task, "status": data.get("status", "served")}] if model else []
        assert failure is not None
        raise failure


def _tgi_parameters(params: dict[str, Any]) -> dict[str, Any]:
    """Our generation parameters as TGI's: sampling is ``do_sample``; ``details`` asks for the finish reason."""
    out: dict[str, Any] = {"max_new_tokens": params["max_new_tokens"], "details": True, "return_full_text": False}
    if params.get("temperature", 0) > 0:
        out.update(do_sample=True, temperature=params["temperature"])
        if params.get("top_p", 1.0) < 1.0:
            out["top_p"] = params["top_p"]  # TGI takes 0 < top_p < 1 only: 1 is its default, no nucleus
        if "top_k" in params:
            out["top_k"] = params["top_k"]
    else:
        out["do_sample"] = False
    for name in ("repetition_penalty", "seed"):
        if name in params:
            out[name] = params[name]
    return out


def _details(details: dict[str, Any]) -> dict[str, Any]:
    """TGI's details as ours: finish_reason, generated_tokens (and prompt_tokens, where a server says)."""
    out = {key: details[key] for key in ("generated_tokens", "prompt_tokens") if isinstance(details.get(key), int)}
    if isinstance(details.get("finish_reason"), str):
        out["finish_reason"] = FINISH_REASONS.get(details["finish_reason"], details["finish_reason"])
    return out


def _pieces(events: Generator[Any, None, None], answer: RemoteAnswer, facts: StreamFacts) -> Iterator[str]:
    finished = False
    for event in events:
        if not isinstance(event, dict):
            raise BadResponse(f"the remote endpoint {answer.endpoint} sent an event that is not TGI's")
        token = event.get("token")
        text = token.get("text") if isinstance(token, dict) else token
        if isinstance(text, str) and text and not (isinstance(token, dict) and token.get("special")):
            yield text
        if isinstance(event.get("details"), dict):
            facts.details.update(_details(event["details"]))
        finished = finished or event.get("generated_text") is not None
    if not finished and answer.state is not None and not answer.state.done and not _stopped(answer):
        raise BadResponse(f"the remote endpoint {answer.endpoint} ended its stream before its last event (the one "
                          "with generated_text): the answer may be cut short; try again, or check the server's log")


def _stopped(answer: RemoteAnswer) -> bool:
    """Whether the reader stopped the stream (``stop_stream``): a stream cut short by its reader is no fault."""
    return bool(answer.state and answer.state.stopped_by_reader)
