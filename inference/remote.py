"""The remote backend: an httpx client for the wire protocol (see DESIGN.md).

One pooled ``httpx.Client`` per engine. Every call has an overall deadline (``REMOTE_INFERENCE_TIMEOUT``)
that bounds connecting, retries, waiting and slow-drip bodies alike: the engine's transport gives every
socket connect, read and write only the time left until the calling thread's deadline, so calls run in the
caller's thread with no hand-off and still end on time. Retries (stamina) happen only on connect errors and
408/429/502/503/504, honouring ``Retry-After``; a comma-separated endpoint list fails over on connect errors
and 5xx. Errors are mapped to the ``InferenceError`` tree in one place, and no message, log line or repr ever
holds the token.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from .errors import (
    BadResponse,
    InferenceError,
    InferenceTimeout,
    InvalidInput,
    RemoteUnavailable,
)
from .settings import Settings
from .tasks import TaskSpec
from .wire import (
    ERRORS,
    Payload,
    Spec,
    code_of_answer,
    dumps,
    parse_detections,
    parse_error,
    parse_server_timing,
    parse_text,
)

__all__ = ["DeadlineTransport", "RemoteBackend", "RemoteClient", "endpoint_host"]

log = logging.getLogger(__name__)

#: Connecting should be quick; a slow connect means the host is gone.
CONNECT_TIMEOUT = 10.0
#: Time a status call (/health, /models) may take: these feed a sidebar, not a result.
STATUS_TIMEOUT = 3.0
#: How long a GET /models answer is reused.
MODELS_MAX_AGE = 30.0
#: Retry backoff (stamina): exponential from WAIT_INITIAL up to WAIT_MAX seconds, plus up to WAIT_JITTER.
WAIT_INITIAL, WAIT_MAX, WAIT_JITTER = 0.1, 2.0, 0.1
#: A timeout this close to the deadline is the deadline (socket timeouts wake on a millisecond clock).
DEADLINE_SLACK = 0.01
#: How much of an error answer is read: enough for the protocol's JSON error, or an excerpt of anything else.
ERROR_BODY_BYTES = 64 * 1024


# --------------------------------------------------------------------------- the deadline transport

#: The monotonic time the current thread's call must end by (None: no deadline, plain httpx timeouts).
_DEADLINE: ContextVar[float | None] = ContextVar("inference_remote_deadline", default=None)
#: The call running in this thread, told by the transport when it opens a connection (see ``_Connections``).
_CONNECTIONS: ContextVar[_Connections | None] = ContextVar("inference_remote_connections", default=None)


@contextmanager
def _deadline(at: float) -> Iterator[None]:
    token = _DEADLINE.set(at)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


class _Connections:
    """What one call did on the deadline transport's sockets: connections opened, and whether it wrote at all.

    A request that failed before its answer, written on a connection it did not open, was sent on a kept-alive
    one. (Other transports tell us nothing: ``used`` stays False and no such failure is retried.)
    """

    def __init__(self) -> None:
        self.opened = 0
        self.used = False

    @contextmanager
    def counting(self) -> Iterator[None]:
        token = _CONNECTIONS.set(self)
        try:
            yield
        finally:
            _CONNECTIONS.reset(token)


def _bounded(timeout: float | None, error: type[Exception]) -> float | None:
    """``timeout`` cut to the time left before the current deadline; ``error`` once none is left."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return timeout
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise error("the call's deadline has passed")
    return remaining if timeout is None else min(timeout, remaining)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if (connections := _CONNECTIONS.get()) is not None:
            connections.used = True
        self._stream.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context, server_hostname: str | None = None, timeout: float | None = None):
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname,
                                                      _bounded(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's network backend, with every socket operation bounded by the calling thread's deadline."""

    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options=None) -> httpcore.NetworkStream:
        if (connections := _CONNECTIONS.get()) is not None:
            connections.opened += 1
        return _DeadlineStream(self._backend.connect_tcp(host, port, _bounded(timeout, httpcore.ConnectTimeout),
                                                         local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options=None) -> httpcore.NetworkStream:
        if (connections := _CONNECTIONS.get()) is not None:
            connections.opened += 1
        return _DeadlineStream(self._backend.connect_unix_socket(path, _bounded(timeout, httpcore.ConnectTimeout),
                                                                 socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


#: httpcore's errors as httpx names them (most specific first), so callers and tests see httpx's exceptions.
_HTTPCORE_ERRORS: tuple[tuple[type[Exception], type[httpx.HTTPError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextmanager
def _httpx_errors() -> Iterator[None]:
    """httpcore's exceptions raised as httpx's, as httpx's own transport does."""
    try:
        yield
    except Exception as exc:
        for source, target in _HTTPCORE_ERRORS:
            if isinstance(exc, source):
                raise target(str(exc)) from exc
        raise


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def __iter__(self) -> Iterator[bytes]:
        with _httpx_errors():
            yield from self.stream

    def close(self) -> None:
        with _httpx_errors():
            self.stream.close()


class DeadlineTransport(httpx.BaseTransport):
    """An httpx transport whose every socket connect, read and write ends at the calling call's deadline.

    httpx's own read timeout restarts with every chunk, so a body that drips a byte at a time could outlive
    any timeout; here each socket operation gets only the time left. It is httpcore's connection pool with our
    network backend (``ConnectionPool(network_backend=...)``, httpcore's public seam for this), behind httpx's
    public ``BaseTransport``. Outside a ``RemoteClient`` call it behaves as httpx's ``HTTPTransport``.

    Args:
        limits: connection pool limits. verify: TLS verification, as for ``httpx.Client``.
    """

    def __init__(self, *, limits: httpx.Limits | None = None, verify: Any = True) -> None:
        limits = limits or httpx.Limits()
        self.pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify), max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections, keepalive_expiry=limits.keepalive_expiry,
            network_backend=_DeadlineBackend(httpcore.SyncBackend()),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path),
            headers=request.headers.raw, content=request.stream, extensions=request.extensions,
        )
        with _httpx_errors():
            response = self.pool.handle_request(core_request)
        return httpx.Response(status_code=response.status, headers=response.headers,
                              stream=_ResponseStream(response.stream), extensions=response.extensions)

    def close(self) -> None:
        self.pool.close()


class _BoundedStream(httpx.SyncByteStream):
    """A response's byte stream that raises ``too_large()`` once more than ``limit`` bytes came through it."""

    def __init__(self, stream: httpx.SyncByteStream, limit: int, too_large) -> None:
        self.stream, self.limit, self.too_large = stream, limit, too_large

    def __iter__(self) -> Iterator[bytes]:
        size = 0
        for chunk in self.stream:
            size += len(chunk)
            if size > self.limit:
                raise self.too_large()
            yield chunk

    def close(self) -> None:
        self.stream.close()


def endpoint_host(url: str) -> str:
    """``"https://gpu-box:8000/inference"`` → ``"gpu-box:8000"``: what we show and log of an endpoint."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else (parts.hostname or "?")


class _StatusFailure(Exception):
    """A 408/429/5xx answer: retried when its code's ``wire.ERRORS`` entry says so, else mapped as it is."""

    def __init__(self, response: httpx.Response, body: bytes) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response, self.body = response, body
        code = code_of_answer(response.status_code, _body_code(body))
        self.retryable = code is not None and ERRORS[code].retry
        self.retry_after = _retry_after(response)


class _ReusedConnectionLost(Exception):
    """A kept-alive connection the server had closed: the request failed before any answer, and is sent again.

    (A server closes idle connections, and closes after an error answer; the pool may hand one out just then.)
    """

    def __init__(self, error: httpx.TransportError) -> None:
        super().__init__(type(error).__name__)
        self.error = error


@dataclass
class _CallState:
    """What one call has done so far."""

    deadline: float
    attempts: int = 0
    next_wait: float = 0.0  # stamina's backoff before the next attempt, without jitter
    bytes_sent: int = 0
    endpoint: str = ""
    cancelled: bool = False  # a stream's reader stopped (set from any thread)

    connections: _Connections = field(default_factory=_Connections)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


@dataclass
class _Parts:
    """One call's multipart request: form files and fields, headers, and whether to stream the answer."""

    files: dict[str, Any]
    data: dict[str, str] | None
    headers: dict[str, str]
    stream: bool


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
        http_client: the pooled client to use (injectable: tests pass a ``MockTransport``). Build it on
            ``DeadlineTransport`` for exact deadlines; any other transport gets the time left as httpx
            timeouts, which restart with every read (a slow-drip body could outlast the deadline).
        max_attempts: attempts per call, retries included.
    """

    def __init__(self, settings: Settings, http_client: httpx.Client, *, max_attempts: int = 3) -> None:
        if not settings.remote_endpoints:
            raise InvalidInput("no remote endpoint configured: set REMOTE_INFERENCE_ENDPOINT")
        self.settings = settings
        self.endpoints = settings.remote_endpoints
        self._hosts = tuple(endpoint_host(url) for url in self.endpoints)  # what errors and logs name
        self.max_attempts = max_attempts
        self._http = http_client
        self._preferred = 0  # the endpoint that answered last; failover starts there
        self._token = settings.remote_token.get_secret_value() if settings.remote_token else None
        self._models: tuple[float, list[dict[str, Any]] | None] = (0.0, None)

    def __repr__(self) -> str:
        hosts = ", ".join(self._hosts)
        return f"<RemoteClient {hosts} token={'set' if self._token else 'unset'}>"

    # ------------------------------------------------------------------ public calls

    @contextmanager
    def call_deadline(self) -> Iterator[float]:
        """The deadline of one call: ``REMOTE_INFERENCE_TIMEOUT`` from now, or that of the call already running in
        this thread. Everything a call does (its model-list look-up, retries, the body) counts against it.
        """
        current = _DEADLINE.get()
        if current is not None:
            yield current
            return
        at = time.monotonic() + self.settings.remote_timeout
        with _deadline(at):
            yield at

    def infer(self, spec: Spec, image: tuple[bytes, str] | None = None, *, use_remote: bool = False) -> RemoteAnswer:
        """POST one request and return its parsed JSON answer.

        Raises:
            InferenceTimeout, RemoteUnavailable, AuthenticationError, RateLimited, ModelLoadError,
            InvalidInput (the server refused the request), BadResponse.
        """
        with self.call_deadline() as deadline:
            state = _CallState(deadline=deadline)
            response, body = self._call(self._parts(spec, image, use_remote, stream=False), state)
        try:
            data = json.loads(body) if body else None
        except ValueError:
            raise self._bad_response(response, body, "the body is not JSON") from None
        return RemoteAnswer(data, response.headers, state.attempts, state.bytes_sent, state.endpoint)

    def stream(self, spec: Spec, image: tuple[bytes, str] | None = None, *, use_remote: bool = False
               ) -> tuple[Generator[dict[str, Any], None, None], RemoteAnswer, _CallState]:
        """POST with ``Accept: text/event-stream``; returns (events, answer with headers, call state).

        Each event is the parsed JSON of one ``data:`` line. Closing the iterator (or cancelling the state)
        closes the connection. The deadline covers the whole stream.
        """
        with self.call_deadline() as deadline:
            state = _CallState(deadline=deadline)
            response, _ = self._call(self._parts(spec, image, use_remote, stream=True), state)
        answer = RemoteAnswer(None, response.headers, state.attempts, state.bytes_sent, state.endpoint)
        return self._events(response, state), answer, state

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
        # A server that is still starting lists models without their task and classes yet: ask again next time.
        settled = all(not isinstance(item, dict) or item.get("task") or item.get("status") == "error" for item in items)
        self._models = (time.monotonic() if settled else 0.0, items)
        return items

    def health(self) -> dict[str, Any]:
        """``GET /health`` of the first endpoint that answers (no retries, short timeout)."""
        data = self._get("health")
        return data if isinstance(data, dict) else {"status": str(data)}

    # ------------------------------------------------------------------ the call

    def _call(self, parts: _Parts, state: _CallState) -> tuple[httpx.Response, bytes]:
        """Attempts with retries, then the body (a stream: only its headers). Runs inside ``_deadline``."""
        send = partial(self._attempt, parts, state)
        try:
            with state.connections.counting():
                try:
                    response = send()  # most calls succeed at once: that path skips the retry machinery
                except (httpx.TransportError, _StatusFailure, _ReusedConnectionLost) as failure:
                    response = self._retry(failure, send, state)
            if parts.stream and response.status_code < 300:
                self._bound_stream(response)
                return response, b""
            body = self._read(response, cut=response.status_code >= 300)
        except _StatusFailure as exc:
            raise self._status_error(exc.response, exc.body) from None
        except _ReusedConnectionLost as exc:
            raise self._transport_error(exc.error, state) from None
        except httpx.TransportError as exc:
            raise self._transport_error(exc, state) from None
        except httpx.DecodingError as exc:
            raise BadResponse(f"the remote endpoint {state.endpoint} sent a body that cannot be decoded "
                              f"({_describe(exc)})") from None
        if 300 <= response.status_code < 400:
            raise self._redirected(response)
        if response.status_code >= 400:
            raise self._status_error(response, body)
        return response, body

    def _retry(self, failure: Exception, send, state: _CallState) -> httpx.Response:
        """The attempts after a failed first one: stamina judges each failure (``_backoff``), waits and counts."""
        import stamina

        for attempt in stamina.retry_context(on=partial(self._backoff, state=state), attempts=self.max_attempts,
                                             timeout=None, wait_initial=WAIT_INITIAL, wait_max=WAIT_MAX,
                                             wait_jitter=WAIT_JITTER):
            with attempt:
                state.next_wait = attempt.next_wait
                if attempt.num == 1:
                    raise failure  # the first attempt's failure, handed to stamina like any other
                response = send()
        return response

    def _backoff(self, exc: Exception, state: _CallState) -> bool | float:
        """stamina's hook: False to give up on ``exc``; True for its exponential backoff; or seconds to wait."""
        if not isinstance(exc, (httpx.TransportError, _StatusFailure, _ReusedConnectionLost)):
            return False
        if isinstance(exc, _StatusFailure) and not exc.retryable:
            return False
        if isinstance(exc, httpx.TransportError) and not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
            return False  # a request that may have reached the server is not repeated
        budget = state.remaining()
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            if retry_after >= budget:
                return False  # the server asks for longer than we have: say so now
            wait: bool | float = retry_after
        elif state.next_wait + WAIT_JITTER >= budget:
            return False  # no time left for the backoff, let alone another attempt
        else:
            wait = True
        if state.attempts < self.max_attempts:  # stamina gives up by itself after the last one
            log.warning("retrying %s after %s (attempt %d of %d)", state.endpoint, _describe(exc),
                        state.attempts + 1, self.max_attempts)
        return wait

    def _parts(self, spec: Spec, image, use_remote: bool, *, stream: bool) -> _Parts:
        """The multipart request of one call (the same for every attempt and endpoint)."""
        files: dict[str, Any] = {"spec": (None, dumps(spec.model_dump(mode="json")), "application/json")}
        if image is not None:
            data, content_type = image
            extension = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}.get(content_type, "bin")
            files["image"] = (f"image.{extension}", data, content_type)
        headers = {"Accept": "text/event-stream" if stream else "application/json"}
        if stream:
            headers["Accept-Encoding"] = "identity"  # the stream's bound counts the bytes as they are sent
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return _Parts(files, {"use_remote": "true"} if use_remote else None, headers, stream)

    def _attempt(self, parts: _Parts, state: _CallState) -> httpx.Response:
        """One attempt: each endpoint in failover order until one answers without a 5xx or connect error."""
        state.attempts += 1
        count = len(self.endpoints)
        failure: Exception | None = None
        for position in range(count):
            index = (self._preferred + position) % count
            url = self.endpoints[index]
            state.endpoint = self._hosts[index]
            remaining = max(0.001, state.remaining())
            # The deadline transport ends every read and write at the deadline; these bound any other transport.
            request = self._http.build_request(
                "POST", url, files=parts.files, data=parts.data, headers=parts.headers,
                timeout=httpx.Timeout(connect=min(CONNECT_TIMEOUT, remaining), read=remaining, write=remaining,
                                      pool=remaining),
            )
            state.bytes_sent = int(request.headers.get("content-length", 0))
            last = position == count - 1
            connections = state.connections
            opened, connections.used = connections.opened, False
            try:
                # Always streamed: a body is read only within its bound (``_read``), never whole by httpx.
                response = self._http.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if state.remaining() <= 0:
                    raise  # the deadline, not the endpoint: no failover
                log.warning("remote endpoint %s unreachable (%s)%s", state.endpoint, type(exc).__name__,
                            "" if last else "; failing over")
                failure = exc
                continue
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                if connections.used and connections.opened == opened:
                    raise _ReusedConnectionLost(exc) from None
                raise
            if response.status_code >= 500 or response.status_code in (408, 429):
                failure = _StatusFailure(response, self._read(response, cut=True))
                if response.status_code >= 500 and not last:
                    log.warning("remote endpoint %s answered %d; failing over", state.endpoint, response.status_code)
                    continue
                raise failure
            self._preferred = index
            return response
        assert failure is not None
        raise failure

    def _read(self, response: httpx.Response, *, cut: bool = False) -> bytes:
        """The decoded body, at most ``REMOTE_INFERENCE_MAX_RESPONSE_BYTES``; reads end at the deadline.

        Over the bound: ``BadResponse``, or with ``cut`` (an error answer, read for its message) the first
        ``ERROR_BODY_BYTES``. Nothing past the bound is read (a gzip bomb stops within one decoded chunk).
        """
        limit = ERROR_BODY_BYTES if cut else self.settings.max_response_bytes
        chunks, size = [], 0
        try:
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > limit:
                    if cut:
                        chunks.append(chunk[:limit - (size - len(chunk))])
                        break
                    raise self._too_large(response, "its body")
                chunks.append(chunk)
        finally:
            response.close()
        return b"".join(chunks)

    def _bound_stream(self, response: httpx.Response) -> None:
        """Bound an event stream's bytes, as ``_read`` bounds a body (streams are asked for without compression)."""
        response.stream = _BoundedStream(response.stream, self.settings.max_response_bytes,
                                         lambda: self._too_large(response, "its event stream"))

    def _too_large(self, response: httpx.Response, what: str) -> BadResponse:
        limit = self.settings.max_response_bytes
        return BadResponse(
            f"the remote endpoint {endpoint_host(str(response.request.url))} sent more than {limit / 2**20:g} MB in "
            f"{what}, the most this client reads: raise REMOTE_INFERENCE_MAX_RESPONSE_BYTES if that is expected"
        )

    def _redirected(self, response: httpx.Response) -> BadResponse:
        host = endpoint_host(str(response.request.url))
        try:
            target = endpoint_host(str(response.request.url.join(response.headers["location"])))
            where = f" to {target}"
        except (KeyError, httpx.InvalidURL):
            where = ""
        return BadResponse(
            f"the remote endpoint {host} redirected the request{where} ({response.status_code}): redirects are not "
            "followed, on purpose (the token must not travel on). Set REMOTE_INFERENCE_ENDPOINT to the URL that answers"
        )

    def _events(self, response: httpx.Response, state: _CallState) -> Generator[dict[str, Any], None, None]:
        """Parse the server-sent events of ``response``, each read bounded by the call's deadline."""
        from httpx_sse import EventSource

        events = EventSource(response).iter_sse()
        try:
            while not state.cancelled:
                try:
                    with _deadline(state.deadline):
                        event = next(events, None)
                except httpx.TransportError as exc:
                    raise self._transport_error(exc, state, streaming=True) from None
                except httpx.DecodingError as exc:
                    raise BadResponse(f"the remote endpoint {state.endpoint} sent a stream that cannot be decoded "
                                      f"({_describe(exc)})") from None
                if event is None:
                    return
                if not event.data:
                    continue
                try:
                    value = event.json()
                except ValueError:
                    raise self._bad_response(response, event.data.encode(), "an event is not JSON") from None
                if isinstance(value, dict) and "error" in value:
                    detail = parse_error(value)
                    said = self._scrub(detail.message if detail else _excerpt(event.data.encode()))
                    code = detail.code if detail and detail.code in ERRORS else "upstream_error"
                    raise ERRORS[code].exception(f"the remote endpoint {state.endpoint} failed mid-stream: {said}",
                                                 code=code)
                yield value
        finally:
            state.cancelled = True
            response.close()

    def _get(self, path: str) -> Any:
        """``GET path`` of the first endpoint that answers; within ``STATUS_TIMEOUT`` and the running call's deadline."""
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        failure: Exception | None = None
        call_deadline = _DEADLINE.get() or math.inf
        for url, host in zip(self.endpoints, self._hosts, strict=True):
            target = httpx.URL(url).join(path)
            deadline = min(call_deadline, time.monotonic() + STATUS_TIMEOUT)
            try:
                with _deadline(deadline):
                    response = self._http.send(self._http.build_request("GET", target, headers=headers,
                                                                        timeout=STATUS_TIMEOUT), stream=True)
                    body = self._read(response, cut=response.status_code >= 300)
            except httpx.TransportError as exc:
                failure = self._transport_error(exc, _CallState(deadline=deadline, endpoint=host))
                continue
            except httpx.DecodingError as exc:
                failure = BadResponse(f"the remote endpoint {host} sent a body that cannot be decoded ({_describe(exc)})")
                continue
            except BadResponse as exc:  # over the size bound
                failure = exc
                continue
            if 300 <= response.status_code < 400:
                failure = self._redirected(response)
                continue
            if response.status_code >= 400:
                failure = self._status_error(response, body)
                continue
            try:
                return json.loads(body)
            except ValueError:
                failure = self._bad_response(response, body, "the body is not JSON")
        assert failure is not None
        raise failure

    # ------------------------------------------------------------------ error mapping (the one place)

    def _transport_error(self, exc: httpx.TransportError, state: _CallState, *, streaming: bool = False) -> InferenceError:
        host = state.endpoint or ", ".join(self._hosts)
        tried = f" after {state.attempts} attempt{'s' if state.attempts != 1 else ''}" if state.attempts else ""
        if isinstance(exc, httpx.TimeoutException) and state.remaining() <= DEADLINE_SLACK:
            return self._timeout(state, streaming=streaming)
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

    def _timeout(self, state: _CallState, *, streaming: bool = False) -> InferenceTimeout:
        """The call's deadline (REMOTE_INFERENCE_TIMEOUT) passed."""
        limit = f"{self.settings.remote_timeout:g} s"
        if streaming:
            return InferenceTimeout(f"the remote stream did not finish within {limit}: raise REMOTE_INFERENCE_TIMEOUT "
                                    "or ask for fewer tokens")
        attempts = f"{state.attempts} attempt{'s' if state.attempts != 1 else ''}"
        return InferenceTimeout(
            f"the remote endpoint did not answer within {limit} ({attempts} to {state.endpoint or 'no endpoint'}): "
            "raise REMOTE_INFERENCE_TIMEOUT or lower the request's size"
        )

    def _status_error(self, response: httpx.Response, body: bytes) -> InferenceError:
        """The error of an error answer, through ``wire.ERRORS``: its code (or its status's) names the exception."""
        status = response.status_code
        host = endpoint_host(str(response.request.url))
        detail = _error_detail(body)
        said = self._scrub(detail.message if detail and detail.message else _excerpt(body))
        said = f": {said}" if said else ""
        code = code_of_answer(status, detail.code if detail else None)
        if code is None:
            return BadResponse(f"the remote endpoint {host} answered an unexpected status {status}{said}")
        kind = ERRORS[code].exception
        template = _MESSAGES.get(code) or _MESSAGES[kind.__name__]
        retry_after = _retry_after(response)
        wait = f"; retry after {retry_after:g} s" if retry_after is not None and ERRORS[code].retry else ""
        return kind(template.format(host=host, status=status, said=said) + wait, code=code, retry_after=retry_after)

    def _bad_response(self, response: httpx.Response, body: bytes, why: str) -> BadResponse:
        host = endpoint_host(str(response.request.url))
        return BadResponse(
            f"the remote endpoint {host} sent a bad answer ({response.status_code}): {why}; "
            f"it began {self._scrub(_excerpt(body))!r}. Is REMOTE_INFERENCE_ENDPOINT the /inference URL of a "
            "server that speaks this protocol?"
        )

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text


#: What an error answer means, by code or by the exception its code maps to (``wire.ERRORS``).
_MESSAGES = {
    "model_not_found": "the remote endpoint {host} does not serve this model ({status}){said}",
    "model_load_failed": "the remote endpoint {host} could not load the model ({status}){said}; it tries again on a "
                         "later request",
    "remote_not_configured": "the remote endpoint {host} was asked to forward the request but has no endpoint of its "
                             "own ({status}){said}",
    "AuthenticationError": "the remote endpoint {host} refused the token ({status}){said}. Check REMOTE_INFERENCE_TOKEN",
    "RateLimited": "the remote endpoint {host} is busy ({status}){said}",
    "InferenceTimeout": "the remote endpoint {host} timed out ({status}){said}",
    "InvalidInput": "the remote endpoint {host} refused the request ({status}){said}",
    "UnsupportedTask": "the remote endpoint {host} refused the request ({status}){said}",
    "RemoteUnavailable": "the remote endpoint {host} failed ({status}){said}",
    "BadResponse": "the remote endpoint {host} has no such route ({status}){said}: is REMOTE_INFERENCE_ENDPOINT the "
                   "/inference URL of a server that speaks this protocol?",
}


def _error_detail(body: bytes):
    """The protocol's error detail in ``body``, or None."""
    try:
        return parse_error(json.loads(body))
    except (ValueError, RecursionError):
        return None


def _body_code(body: bytes) -> str | None:
    detail = _error_detail(body)
    return detail.code if detail else None


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
        with self.client.call_deadline():  # one deadline for all the call does, the class names' look-up too
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
        return output, {**fields, **_timing_fields(answer.headers, total_ms), **_answer_fields(answer)}

    def stream(self, request):
        """Stream text over server-sent events; returns (pieces, handle, load_ms)."""
        started = time.perf_counter()
        spec, image, _ = self._wire(request)
        events, answer, state = self.client.stream(spec, image, use_remote=self.use_remote)
        timings = parse_server_timing(answer.headers.get("server-timing"))
        load_ms = timings.get("load")
        if load_ms is not None:
            # The server loaded the model before it started streaming: load_ms, never latency or TTFT.
            started = min(time.perf_counter(), started + load_ms / 1000)
        handle = _RemoteStreamHandle(started, state, answer, events, queue_ms=timings.get("queue", 0.0))
        return handle.pieces(), handle, load_ms

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

        items = parse_detections(data)
        if any(before["score"] < after["score"] for before, after in zip(items, items[1:])):
            items = sorted(items, key=lambda item: item["score"], reverse=True)  # best first, like local results
        detections = detections_from_list(items, self.info().get("classes", ()))
        if scale != 1.0 and len(detections):
            # NOTE: the server reports pixels of the image as sent (downscaled), so map back to the original.
            detections.xyxy = detections.xyxy * scale
        return detections


class _RemoteStreamHandle:
    """The stream handle ``Model.stream`` expects: started_at, cancel(), details and extra fields."""

    def __init__(self, started_at: float, state: _CallState, answer: RemoteAnswer,
                 events: Generator[dict[str, Any], None, None], *, queue_ms: float = 0.0) -> None:
        self.started_at, self.state, self.answer, self.events = started_at, state, answer, events
        self.queue_ms = queue_ms
        self.details: dict[str, Any] = {}
        self.fields: dict[str, Any] = {}

    def pieces(self) -> Iterator[str]:
        final: dict[str, Any] | None = None
        for event in self.events:
            if "token" in event:
                token = event["token"]
                yield token if isinstance(token, str) else str(token.get("text", ""))
            elif "generated_text" in event:
                final = event
        details = dict((final or {}).get("details") or {})
        server_ms = details.pop("server_ms", None)
        self.details = {**details, **_answer_details(self.answer)}
        total_ms = (time.perf_counter() - self.started_at) * 1000
        self.fields = _answer_fields(self.answer)
        if server_ms is not None:
            server_ms += self.queue_ms  # as for answers in one piece: time in the server, queue included
            self.fields.update(server_ms=server_ms, network_ms=max(0.0, total_ms - server_ms), queue_ms=self.queue_ms)

    def cancel(self) -> None:
        self.state.cancelled = True
        try:
            self.events.close()  # closes the connection now, so the server stops generating
        except ValueError:
            pass  # being read in another thread: that read ends it at its next event


def _answer_details(answer: RemoteAnswer) -> dict[str, Any]:
    details = {"endpoint": answer.endpoint}
    source = answer.headers.get("x-inference-source")
    if source:
        details["server_source"] = source
    return details


def _answer_fields(answer: RemoteAnswer) -> dict[str, Any]:
    """Result fields every answer gives: attempts, bytes sent, and the server's warnings (``X-Inference-Warning``)."""
    fields: dict[str, Any] = {"attempts": answer.attempts, "bytes_sent": answer.bytes_sent}
    warnings = answer.headers.get_list("x-inference-warning")
    if warnings:
        fields["warnings"] = tuple(warnings)
    return fields


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
