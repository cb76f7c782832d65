"""The studio protocol's backend: multipart ``spec`` (+ ``image``) to ``/inference``, JSON or server-sent events back.

The protocol is in the README ("Remote inference"); ``client.RemoteClient`` does the HTTP (deadline, retries, failover, error mapping)
and the task's codec reads the answer. Results look exactly like local ones.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator, Iterator
from functools import partial
from typing import Any

from ..errors import BadResponse, InferenceError
from ..request import Request
from ..tasks import TaskSpec
from ..types import Raw
from ..wire import Payload, Spec, parse_server_timing
from .base import StreamFacts, StreamHandle
from .client import RemoteAnswer, RemoteClient, stop_stream

__all__ = ["StudioBackend"]

log = logging.getLogger(__name__)


class StudioBackend:
    """Runs requests on a remote endpoint that speaks the studio protocol (our reference server, a gateway).

    Args:
        client: the engine's client for the endpoint(s).
        model_id: the model as the endpoint serves it.
        spec: the task.
        use_remote: ask the endpoint to forward the request to *its* remote endpoint (gateway mode).
    """

    name = "remote"

    def __init__(self, client: RemoteClient, model_id: str, spec: TaskSpec, *, use_remote: bool = False) -> None:
        self.client, self.model_id, self.spec, self.use_remote = client, model_id, spec, use_remote
        self._info: dict[str, Any] | None = None

    def _wire(self, request: Request) -> tuple[Spec, tuple[bytes, str] | None, float]:
        parameters = request.parameters.model_dump(exclude_unset=True, exclude_none=True)
        spec = Spec(model_id=self.model_id, task=self.spec.name,
                    payload=Payload(inputs=request.prompt, parameters=parameters))
        if request.image_data is None:
            return spec, None, 1.0
        data, content_type, scale = request.image_data.for_upload(self.client.settings.upload_max_edge)
        return spec, (data, content_type), scale

    def run(self, request: Request) -> Raw:
        codec = self.spec.codec
        with self.client.call_deadline():  # one deadline for all the call does, the class names' look-up too
            if codec.needs_classes:
                self.info()  # class names for stable class ids: fetched once, and not timed as part of a call
            started = time.perf_counter()
            spec, image, scale = self._wire(request)
            answer = self.client.infer(spec, image, use_remote=self.use_remote)
        try:
            output, details = codec.from_wire(answer.data, classes=lambda: self.info().get("classes", ()), scale=scale)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise BadResponse(
                f"the remote endpoint {answer.endpoint} answered JSON of the wrong shape for {self.spec.name}: "
                f"{str(exc).splitlines()[0]}"
            ) from None
        timing = parse_server_timing(answer.headers.get("server-timing"))
        return Raw(output=output, elapsed_ms=(time.perf_counter() - started) * 1000, load_ms=timing.get("load"),
                   server_timing=timing, details={**details, **_answer_details(answer)}, attempts=answer.attempts,
                   bytes_sent=answer.bytes_sent, warnings=_warnings(answer))

    def stream(self, request: Request) -> StreamHandle:
        """Text over server-sent events: ``{"token"}`` events, then ``{"generated_text", "details"}``."""
        started = time.perf_counter()
        spec, image, _ = self._wire(request)
        events, answer, state = self.client.stream(spec, image, use_remote=self.use_remote)
        # The server loaded the model (load) and queued the request (queue) before it started streaming.
        timing = parse_server_timing(answer.headers.get("server-timing"))
        facts = StreamFacts(details=_answer_details(answer), load_ms=timing.get("load"), server_timing=timing,
                            attempts=answer.attempts, bytes_sent=answer.bytes_sent, warnings=_warnings(answer))

        streaming = RemoteAnswer(events, answer.headers, answer.attempts, answer.bytes_sent, answer.endpoint, state)
        return StreamHandle(_pieces(events, answer, facts), started=started, cancel=partial(stop_stream, streaming),
                            facts=facts)

    def info(self) -> dict[str, Any]:
        """Device and classes of the model as the endpoint reports them (``GET /models``), when it does."""
        if self._info is None:
            facts: dict[str, Any] = {}
            try:
                for item in self.client.models():
                    if isinstance(item, dict) and item.get("id") == self.model_id:
                        facts = {"device": item.get("device"), "dtype": item.get("dtype"),
                                 "classes": tuple(item.get("classes") or ()),
                                 "memory_bytes": item.get("memory_bytes")}
                        break
            except InferenceError as exc:
                log.info("GET /models failed (%s); model info stays partial", exc)
            if facts and (facts["classes"] or not self.spec.codec.needs_classes):
                self._info = facts  # complete: no need to ask again
            return dict(facts)
        return dict(self._info)

    def close(self) -> None:
        """Nothing to let go of: the connections are the engine's pool."""

    @staticmethod
    def status(client: RemoteClient) -> tuple[str, list[dict[str, Any]]]:
        """(what the endpoint says, its served models): ``GET /health`` and ``GET /models``.

        Raises:
            InferenceError: the endpoint cannot be reached or does not answer as it should.
        """
        client.health()
        try:
            return "reachable", client.models(max_age=0)
        except InferenceError as exc:
            return f"reachable; model list unavailable ({exc})", []


def _pieces(events: Generator[dict[str, Any], None, None], answer: RemoteAnswer, facts: StreamFacts) -> Iterator[str]:
    final: dict[str, Any] = {}
    for event in events:
        if "token" in event:
            token = event["token"]
            yield token if isinstance(token, str) else str(token.get("text", ""))
        elif "generated_text" in event:
            final = event
    details = dict(final.get("details") or {})
    server_ms = details.pop("server_ms", None)
    facts.details = {**details, **_answer_details(answer)}
    if isinstance(server_ms, (int, float)):
        facts.server_timing = {**facts.server_timing, "inference": float(server_ms)}


def _answer_details(answer: RemoteAnswer) -> dict[str, Any]:
    details = {"endpoint": answer.endpoint}
    source = answer.headers.get("x-inference-source")
    if source:
        details["server_source"] = source
    return details


def _warnings(answer: RemoteAnswer) -> tuple[str, ...]:
    """The server's notes on how it ran the request (``X-Inference-Warning``)."""
    return tuple(answer.headers.get_list("x-inference-warning"))
