"""The remote backend: an httpx client for the wire protocol (see DESIGN.md).

One pooled ``httpx.Client`` per engine. Every call has an overall deadline (``REMOTE_INFERENCE_TIMEOUT``)
that bounds connecting, retries, waiting and slow-drip bodies alike; retries (stamina) happen only on
connect errors and 408/429/502/503/504, honouring ``Retry-After``; a comma-separated endpoint list fails
over on connect errors and 5xx. Errors are mapped to the ``InferenceError`` tree in one place, and no
message, log line or repr ever holds the token.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from .errors import (
    AuthenticationError,
    BadResponse,
    InferenceError,
    InferenceTimeout,
    InvalidInput,
    ModelLoadError,
    RateLimited,
    RemoteUnavailable,
)
from .settings import Settings
from .tasks import TaskSpec
from .wire import Payload, Spec, dumps, parse_detections, parse_error, parse_server_timing, parse_text

__all__ = ["RemoteBackend", "RemoteClient", "endpoint_host"]

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})
#: Connecting should be quick; a slow connect means the host is gone.
CONNECT_TIMEOUT = 10.0
#: Time a status call (/health, /models) may take: these feed a sidebar, not a result.
STATUS_TIMEOUT = 3.0
#: How long a GET /models answer is reused.
MODELS_MAX_AGE = 30.0


def endpoint_host(url: str) -> str:
    """``"https://gpu-box:8000/inference"`` → ``"gpu-box:8000"``: what we show and log of an endpoint."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else (parts.hostname or "?")


class _StatusFailure(Exception):
    """A 408/429/5xx answer: retried when ``retryable`` (408/429/502/503/504), else mapped as it is."""

    def __init__(self, response: httpx.Response, body: bytes) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response, self.body = response, body
        self.retryable = response.status_code in RETRY_STATUSES
        self.retry_after = _retry_after(response)


@dataclass
class _CallState:
    """What one call has done so far; shared between the caller and the worker thread."""

    deadline: float
    attempts: int = 0
    bytes_sent: int = 0
    endpoint: str = ""
    cancelled: threading.Event = field(default_factory=threading.Event)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


@dataclass
class RemoteAnswer:
    """A successful answer: parsed JSON (or the event stream), headers and call facts."""

    data: Any
    headers: httpx.Headers
    attempts: int
    bytes_sent: int
    endpoint: str


class RemoteClient:
    """Calls the remote endpoint(s) of one ``Settings``.

    Args:
        settings: endpoints, token and deadline.
        http_client: the pooled client to use (injectable: tests pass a ``MockTransport``).
        executor: threads that run calls so the caller can stop waiting exactly at the deadline.
        max_attempts: attempts per call, retries included.
    """

    def __init__(self, settings: Settings, http_client: httpx.Client, executor: ThreadPoolExecutor, *,
                 max_attempts: int = 3) -> None:
        if not settings.remote_endpoints:
            raise InvalidInput("no remote endpoint configured: set REMOTE_INFERENCE_ENDPOINT")
        self.settings = settings
        self.endpoints = settings.remote_endpoints
        self.max_attempts = max_attempts
        self._http = http_client
        self._executor = executor
        self._preferred = 0  # the endpoint that answered last; failover starts there
        self._token = settings.remote_token
        self._models: tuple[float, list[dict[str, Any]] | None] = (0.0, None)

    def __repr__(self) -> str:
        hosts = ", ".join(endpoint_host(url) for url in self.endpoints)
        return f"<RemoteClient {hosts} token={'set' if self._token else 'unset'}>"

    # ------------------------------------------------------------------ public calls

    def infer(self, spec: Spec, image: tuple[bytes, str] | None = None, *, use_remote: bool = False) -> RemoteAnswer:
        """POST one request and return its parsed JSON answer.

        Raises:
            InferenceTimeout, RemoteUnavailable, AuthenticationError, RateLimited, ModelLoadError,
            InvalidInput (the server refused the request), BadResponse.
        """
        state = _CallState(deadline=time.monotonic() + self.settings.remote_timeout)
        future = self._executor.submit(self._call, spec, image, use_remote, state, False)
        response, body = self._wait(future, state)
        try:
            data = json.loads(body) if body else None
        except ValueError:
            raise self._bad_response(response, body, "the body is not JSON") from None
        return RemoteAnswer(data, response.headers, state.attempts, state.bytes_sent, state.endpoint)

    def stream(self, spec: Spec, image: tuple[bytes, str] | None = None, *, use_remote: bool = False
               ) -> tuple[Iterator[dict[str, Any]], RemoteAnswer, _CallState]:
        """POST with ``Accept: text/event-stream``; returns (events, answer with headers, call state).

        Each event is the parsed JSON of one ``data:`` line. Closing the iterator (or cancelling the state)
        closes the connection.
        """
        state = _CallState(deadline=time.monotonic() + self.settings.remote_timeout)
        events: queue.Queue = queue.Queue()
        future = self._executor.submit(self._call, spec, image, use_remote, state, events)
        response, _ = self._wait(future, state)
        answer = RemoteAnswer(None, response.headers, state.attempts, state.bytes_sent, state.endpoint)
        return self._events(events, state, response), answer, state

    def models(self, max_age: float = MODELS_MAX_AGE) -> list[dict[str, Any]]:
        """``GET /models`` of the first endpoint that answers (no retries, short timeout).

        The answer is reused for ``max_age`` seconds: every model handle on this endpoint asks for it.
        """
        fetched_at, cached = self._models
        if cached is not None and time.monotonic() - fetched_at < max_age:
            return cached
        data = self._get("models")
        items = data.get("models", data) if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise BadResponse("GET /models did not answer a list of models")
        self._models = (time.monotonic(), items)
        return items

    def health(self) -> dict[str, Any]:
        """``GET /health`` of the first endpoint that answers (no retries, short timeout)."""
        data = self._get("health")
        return data if isinstance(data, dict) else {"status": str(data)}

    # ------------------------------------------------------------------ the call

    def _wait(self, future: Future, state: _CallState) -> tuple[httpx.Response, bytes]:
        try:
            return future.result(timeout=max(0.0, state.remaining()))
        except FutureTimeout:
            state.cancelled.set()
            raise InferenceTimeout(
                f"the remote endpoint did not answer within {self.settings.remote_timeout:g} s "
                f"({state.attempts} attempt{'s' if state.attempts != 1 else ''} to {state.endpoint or 'no endpoint'}): "
                "raise REMOTE_INFERENCE_TIMEOUT or lower the request's size"
            ) from None

    def _call(self, spec: Spec, image, use_remote: bool, state: _CallState, events) -> tuple[httpx.Response, bytes]:
        """Runs in a worker thread: attempts with retries; reads the body (or feeds ``events``)."""
        import stamina

        def backoff(exc: Exception) -> bool | float:
            if state.cancelled.is_set() or not isinstance(exc, (httpx.TransportError, _StatusFailure)):
                return False
            if isinstance(exc, _StatusFailure) and not exc.retryable:
                return False
            if isinstance(exc, httpx.TransportError) and not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
                return False  # a request that may have reached the server is not repeated
            retry_after = getattr(exc, "retry_after", None)
            if retry_after is not None:
                if retry_after >= state.remaining():
                    return False  # the server asks for longer than we have: say so now
                wait: float | bool = retry_after
            else:
                wait = True
            log.warning("retrying %s after %s (attempt %d of %d)", state.endpoint, _describe(exc),
                        state.attempts + 1, self.max_attempts)
            return wait

        try:
            for attempt in stamina.retry_context(on=backoff, attempts=self.max_attempts, timeout=None,
                                                 wait_initial=0.1, wait_max=2.0, wait_jitter=0.1):
                with attempt:
                    if state.cancelled.is_set():
                        raise InferenceTimeout("cancelled")
                    response = self._attempt(spec, image, use_remote, state, stream=events is not False)
        except _StatusFailure as exc:
            raise self._status_error(exc.response, exc.body) from None
        except httpx.TransportError as exc:
            raise self._transport_error(exc, state) from None
        if events is False:
            try:
                body = self._read(response, state)
            except httpx.TransportError as exc:
                raise self._transport_error(exc, state) from None
            if response.status_code >= 400:
                raise self._status_error(response, body)
            return response, body
        if response.status_code >= 400:
            body = self._read(response, state)
            raise self._status_error(response, body)
        self._executor.submit(self._pump, response, state, events)
        return response, b""

    def _attempt(self, spec: Spec, image, use_remote: bool, state: _CallState, *, stream: bool) -> httpx.Response:
        """One attempt: each endpoint in failover order until one answers without a 5xx or connect error."""
        state.attempts += 1
        count = len(self.endpoints)
        order = [(self._preferred + offset) % count for offset in range(count)]
        failure: Exception | None = None
        for position, index in enumerate(order):
            url = self.endpoints[index]
            state.endpoint = endpoint_host(url)
            request = self._build(url, spec, image, use_remote, state, stream=stream)
            state.bytes_sent = int(request.headers.get("content-length", 0))
            last = position == count - 1
            try:
                response = self._http.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                log.warning("remote endpoint %s unreachable (%s)%s", state.endpoint, type(exc).__name__,
                            "" if last else "; failing over")
                failure = exc
                continue
            if response.status_code >= 500 or response.status_code in RETRY_STATUSES:
                failure = _StatusFailure(response, self._read(response, state))
                if response.status_code >= 500 and not last:
                    log.warning("remote endpoint %s answered %d; failing over", state.endpoint, response.status_code)
                    continue
                raise failure
            self._preferred = index
            return response
        assert failure is not None
        raise failure

    def _build(self, url: str, spec: Spec, image, use_remote: bool, state: _CallState, *, stream: bool) -> httpx.Request:
        remaining = max(0.001, state.remaining())
        files: dict[str, Any] = {"spec": (None, dumps(spec.model_dump(mode="json")), "application/json")}
        if image is not None:
            data, content_type = image
            extension = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}.get(content_type, "bin")
            files["image"] = (f"image.{extension}", data, content_type)
        headers = {"Accept": "text/event-stream" if stream else "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return self._http.build_request(
            "POST", url, files=files, data={"use_remote": "true"} if use_remote else None, headers=headers,
            timeout=httpx.Timeout(connect=min(CONNECT_TIMEOUT, remaining), read=remaining, write=remaining,
                                  pool=remaining),
        )

    @staticmethod
    def _read(response: httpx.Response, state: _CallState) -> bytes:
        """Read the body, giving up once the caller stopped waiting (a slow drip ends here)."""
        chunks = []
        try:
            for chunk in response.iter_bytes():
                chunks.append(chunk)
                if state.cancelled.is_set():
                    break
        finally:
            response.close()
        return b"".join(chunks)

    def _pump(self, response: httpx.Response, state: _CallState, events: queue.Queue) -> None:
        """Worker: parse server-sent events into ``events`` until the stream ends or is cancelled."""
        from httpx_sse import EventSource

        try:
            for event in EventSource(response).iter_sse():
                if state.cancelled.is_set():
                    break
                if not event.data:
                    continue
                try:
                    events.put(("event", event.json()))
                except ValueError:
                    events.put(("error", self._bad_response(response, event.data.encode(), "an event is not JSON")))
                    return
            events.put(("end", None))
        except httpx.TransportError as exc:
            events.put(("error", self._transport_error(exc, state)))
        except Exception as exc:  # surfaced to the reader, never lost in a thread
            events.put(("error", exc))
        finally:
            response.close()

    def _events(self, events: queue.Queue, state: _CallState, response: httpx.Response) -> Iterator[dict[str, Any]]:
        try:
            while True:
                try:
                    kind, value = events.get(timeout=max(0.0, state.remaining()))
                except queue.Empty:
                    raise InferenceTimeout(
                        f"the remote stream did not finish within {self.settings.remote_timeout:g} s: "
                        "raise REMOTE_INFERENCE_TIMEOUT or ask for fewer tokens"
                    ) from None
                if kind == "end":
                    return
                if kind == "error":
                    raise value
                if isinstance(value, dict) and "error" in value:
                    detail = parse_error(value)
                    raise RemoteUnavailable(f"the remote endpoint failed mid-stream: {self._scrub(detail.message if detail else str(value))}")
                yield value
        finally:
            state.cancelled.set()

    def _get(self, path: str) -> Any:
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        failure: Exception | None = None
        for url in self.endpoints:
            target = httpx.URL(url).join(path)
            try:
                response = self._http.get(target, headers=headers, timeout=STATUS_TIMEOUT)
            except httpx.TransportError as exc:
                failure = self._transport_error(exc, _CallState(deadline=0, endpoint=endpoint_host(url)))
                continue
            if response.status_code >= 400:
                failure = self._status_error(response, response.content)
                continue
            try:
                return response.json()
            except ValueError:
                failure = self._bad_response(response, response.content, "the body is not JSON")
        assert failure is not None
        raise failure

    # ------------------------------------------------------------------ error mapping (the one place)

    def _transport_error(self, exc: httpx.TransportError, state: _CallState) -> InferenceError:
        host = state.endpoint or ", ".join(endpoint_host(url) for url in self.endpoints)
        tried = f" after {state.attempts} attempt{'s' if state.attempts != 1 else ''}" if state.attempts else ""
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
            return RemoteUnavailable(
                f"cannot reach the remote endpoint {host}{tried} ({type(exc).__name__}): check that the server runs "
                "and that REMOTE_INFERENCE_ENDPOINT is right"
            )
        if isinstance(exc, httpx.TimeoutException):
            return InferenceTimeout(
                f"the remote endpoint {host} did not answer in time{tried}: raise REMOTE_INFERENCE_TIMEOUT "
                "or lower the request's size"
            )
        return RemoteUnavailable(f"the connection to the remote endpoint {host} failed{tried} ({type(exc).__name__})")

    def _status_error(self, response: httpx.Response, body: bytes) -> InferenceError:
        status = response.status_code
        host = endpoint_host(str(response.request.url))
        try:
            detail = parse_error(json.loads(body))
        except ValueError:
            detail = None
        said = self._scrub(detail.message if detail and detail.message else _excerpt(body))
        said = f": {said}" if said else ""
        if status in (401, 403):
            return AuthenticationError(
                f"the remote endpoint {host} refused the token ({status}){said}. Check REMOTE_INFERENCE_TOKEN"
            )
        if status == 404:
            return ModelLoadError(f"the remote endpoint {host} does not serve this model (404){said}")
        if status == 429:
            retry_after = _retry_after(response)
            wait = f"; retry after {retry_after:g} s" if retry_after is not None else ""
            return RateLimited(f"the remote endpoint {host} is busy (429){said}{wait}", retry_after=retry_after)
        if status in (408, 504):
            return InferenceTimeout(f"the remote endpoint {host} timed out ({status}){said}")
        if status in (400, 413, 415, 422):
            return InvalidInput(f"the remote endpoint {host} refused the request ({status}){said}")
        if status >= 500:
            return RemoteUnavailable(f"the remote endpoint {host} failed ({status}){said}")
        return BadResponse(f"the remote endpoint {host} answered an unexpected status {status}{said}")

    def _bad_response(self, response: httpx.Response, body: bytes, why: str) -> BadResponse:
        host = endpoint_host(str(response.request.url))
        return BadResponse(
            f"the remote endpoint {host} sent a bad answer ({response.status_code}): {why}; "
            f"it began {self._scrub(_excerpt(body))!r}. Is REMOTE_INFERENCE_ENDPOINT the /inference URL of a "
            "server that speaks this protocol?"
        )

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text


def _excerpt(body: bytes, limit: int = 200) -> str:
    text = body[:limit].decode("utf-8", errors="replace").strip()
    return " ".join(text.split()) + ("…" if len(body) > limit else "")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _describe(exc: Exception) -> str:
    return str(exc) if isinstance(exc, _StatusFailure) else type(exc).__name__


# --------------------------------------------------------------------------- backend


class RemoteBackend:
    """Runs requests on the remote endpoint; the results look exactly like local ones."""

    name = "remote"

    def __init__(self, client: RemoteClient, model_id: str, spec: TaskSpec, *, use_remote: bool = False) -> None:
        self.client, self.model_id, self.spec, self.use_remote = client, model_id, spec, use_remote
        self._info: dict[str, Any] | None = None

    def _wire(self, request) -> tuple[Spec, tuple[bytes, str] | None, float]:
        parameters = request.parameters.model_dump(exclude_unset=True, exclude_none=True)
        spec = Spec(model_id=self.model_id, task=self.spec.name,
                    payload=Payload(inputs=request.prompt, parameters=parameters))
        if request.image_data is None:
            return spec, None, 1.0
        data, content_type, scale = request.image_data.for_upload(self.client.settings.upload_max_edge)
        return spec, (data, content_type), scale

    def run(self, request) -> tuple[Any, dict[str, Any]]:
        """POST ``request``; returns (text or detections, result fields)."""
        if self.spec.output == "detections":
            self.info()  # class names for stable class ids: fetched once, and not timed as part of a call
        started = time.perf_counter()
        spec, image, scale = self._wire(request)
        answer = self.client.infer(spec, image, use_remote=self.use_remote)
        try:
            if self.spec.output == "detections":
                output: Any = self._detections(answer.data, scale)
                fields: dict[str, Any] = {"image_size": request.image_data.size}
            else:
                text = parse_text(answer.data)
                output = text.generated_text
                fields = {"details": dict(text.details or {})}
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise BadResponse(
                f"the remote endpoint {answer.endpoint} answered JSON of the wrong shape for {self.spec.name}: "
                f"{str(exc).splitlines()[0]}"
            ) from None
        total_ms = (time.perf_counter() - started) * 1000
        fields["details"] = {**fields.get("details", {}), **_answer_details(answer)}
        return output, {**fields, **_timing_fields(answer.headers, total_ms), "attempts": answer.attempts,
                        "bytes_sent": answer.bytes_sent}

    def stream(self, request):
        """Stream text over server-sent events; returns (pieces, handle, load_ms)."""
        started = time.perf_counter()
        spec, image, _ = self._wire(request)
        events, answer, state = self.client.stream(spec, image, use_remote=self.use_remote)
        handle = _RemoteStreamHandle(started, state, answer)
        return handle.pieces(events), handle, None

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
            if facts and (facts["classes"] or self.spec.output != "detections"):
                self._info = facts  # complete: no need to ask again
            return dict(facts)
        return dict(self._info)

    def _detections(self, data: Any, scale: float):
        from .annotate import detections_from_list

        detections = detections_from_list(parse_detections(data), self.info().get("classes", ()))
        if scale != 1.0 and len(detections):
            # NOTE: the server reports pixels of the image as sent (downscaled), so map back to the original.
            detections.xyxy = detections.xyxy * scale
        if len(detections) > 1 and (np.diff(detections.confidence) > 0).any():
            detections = detections[detections.confidence.argsort()[::-1]]  # best first, like local results
        return detections


class _RemoteStreamHandle:
    """The stream handle ``Model.stream`` expects: started_at, cancel(), details and extra fields."""

    def __init__(self, started_at: float, state: _CallState, answer: RemoteAnswer) -> None:
        self.started_at, self.state, self.answer = started_at, state, answer
        self.details: dict[str, Any] = {}
        self.fields: dict[str, Any] = {}

    def pieces(self, events: Iterator[dict[str, Any]]) -> Iterator[str]:
        final: dict[str, Any] | None = None
        for event in events:
            if "token" in event:
                token = event["token"]
                yield token if isinstance(token, str) else str(token.get("text", ""))
            elif "generated_text" in event:
                final = event
        details = dict((final or {}).get("details") or {})
        server_ms = details.pop("server_ms", None)
        self.details = {**details, **_answer_details(self.answer)}
        total_ms = (time.perf_counter() - self.started_at) * 1000
        self.fields = {"attempts": self.answer.attempts, "bytes_sent": self.answer.bytes_sent}
        if server_ms is not None:
            self.fields.update(server_ms=server_ms, network_ms=max(0.0, total_ms - server_ms))

    def cancel(self) -> None:
        self.state.cancelled.set()


def _answer_details(answer: RemoteAnswer) -> dict[str, Any]:
    details = {"endpoint": answer.endpoint}
    source = answer.headers.get("x-inference-source")
    if source:
        details["server_source"] = source
    return details


def _timing_fields(headers: httpx.Headers, total_ms: float) -> dict[str, Any]:
    timings = parse_server_timing(headers.get("server-timing"))
    fields: dict[str, Any] = {"total_ms": total_ms}
    if timings:
        if "load" in timings:
            # A model load on the server is reported once, as load_ms, and kept out of the latencies.
            fields["load_ms"] = timings["load"]
            fields["total_ms"] = total_ms = max(0.0, total_ms - timings["load"])
        server_ms = timings.get("inference", 0.0) + timings.get("queue", 0.0)
        fields.update(server_ms=server_ms, network_ms=max(0.0, total_ms - server_ms))
        if "queue" in timings:
            fields["queue_ms"] = timings["queue"]
    return fields
