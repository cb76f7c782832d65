"""The HTTP client of remote endpoints: deadline, retries, failover, bounded reads and error mapping.

One pooled ``httpx.Client`` per engine (built on ``transport.DeadlineTransport``). Every call has an overall
deadline (``REMOTE_INFERENCE_TIMEOUT``) that bounds connecting, retries, waiting and slow-drip bodies alike.
``_send`` is the one retry loop (stamina) over the endpoints in failover order: retries happen only on connect
errors and 408/429/502/503/504, honouring ``Retry-After``; a comma-separated endpoint list fails over on connect
errors and 5xx. ``map_errors`` maps every failure to the ``InferenceError`` tree, in one place, and no message,
log line or repr ever holds the token.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from functools import partial
from typing import Any

import httpx
import stamina

from ..errors import (
    AuthenticationError,
    BadResponse,
    InferenceError,
    InferenceTimeout,
    InvalidInput,
    RemoteUnavailable,
)
from ..settings import Endpoint, Settings, endpoint_host
from ..wire import ERRORS, Spec, code_of_answer, dumps, parse_error
from .transport import BoundedStream, ConnectionLog, current_deadline, deadline_scope

__all__ = ["RemoteAnswer", "RemoteClient", "stop_stream"]

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
    response: httpx.Response | None = None  # a stream's open answer
    done: bool = False  # the event stream said ``[DONE]`` (the OpenAI protocol's end)
    stopped_by_reader: bool = False  # ``stop_stream`` ended it: a stream cut short by its reader is no fault
    connections: ConnectionLog = field(default_factory=ConnectionLog)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


@dataclass
class _Parts:
    """One call's request: where (``path`` below each endpoint URL; None: the URL itself), a multipart form or a
    JSON body, headers, and whether to stream the answer. The same for every attempt and endpoint."""

    files: dict[str, Any] | None = field(default=None, repr=False)
    data: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # the token
    stream: bool = False
    path: str | None = None
    json: Any = field(default=None, repr=False)
    content: bytes | None = field(default=None, repr=False)  # a raw body (an image), its type in ``headers``


@dataclass
class RemoteAnswer:
    """A successful answer: parsed JSON (or the event stream), headers and call facts."""

    data: Any
    headers: httpx.Headers
    attempts: int
    bytes_sent: int
    endpoint: str
    #: The call's state: a stream's reader cancels it (``state.cancelled``) and may close ``state.response``.
    state: _CallState | None = field(default=None, repr=False)


def stop_stream(answer: RemoteAnswer) -> None:
    """Stop reading an answer's event stream (idempotent, from any thread): the connection closes, so the server
    stops generating."""
    events, state = answer.data, answer.state
    state.stopped_by_reader = state.cancelled = True
    if inspect.getgeneratorstate(events) == inspect.GEN_CREATED and state.response is not None:
        state.response.close()  # never read: closing the generator would not reach its clean-up
    try:
        events.close()
    except ValueError:
        pass  # being read in another thread: that read ends it at its next event


class RemoteClient:
    """Calls one remote endpoint (its URLs in failover order), whatever protocol its backend speaks.

    Args:
        endpoint: the URLs, the token and the names a user sets them by (for error messages).
        settings: the deadline (``remote_timeout``) and the bound on what is read (``max_response_bytes``).
        http_client: the pooled client to use (injectable: tests pass a ``MockTransport``). Build it on
            ``DeadlineTransport`` for exact deadlines; any other transport gets the time left as httpx
            timeouts, which restart with every read (a slow-drip body could outlast the deadline).
        max_attempts: attempts per call, retries included.
    """

    def __init__(self, endpoint: Endpoint, settings: Settings, http_client: httpx.Client, *,
                 max_attempts: int = 3) -> None:
        if not endpoint.urls:
            raise InvalidInput(f"endpoint {endpoint.name!r} has no URL: set {endpoint.url_setting}")
        self.endpoint = endpoint
        self.settings = settings
        self.endpoints = endpoint.urls
        self._hosts = endpoint.hosts  # what errors and logs name
        self.max_attempts = max_attempts
        self._http = http_client
        self._preferred = 0  # the URL that answered last; failover starts there
        self._token = endpoint.token.get_secret_value() if endpoint.token else None
        #: What the endpoint speaks: as configured, or what ``probe`` found for ``auto``.
        self.protocol: str = endpoint.protocol
        self._models: tuple[float, list[dict[str, Any]] | None] = (0.0, None)

    def __repr__(self) -> str:
        hosts = ", ".join(self._hosts)
        return f"<RemoteClient {self.endpoint.name} {hosts} token={'set' if self._token else 'unset'}>"

    # ------------------------------------------------------------------ public calls

    @contextmanager
    def call_deadline(self) -> Iterator[float]:
        """The deadline of one call: ``REMOTE_INFERENCE_TIMEOUT`` from now, or that of the call already running in
        this thread. Everything a call does (its model-list look-up, retries, the body) counts against it.
        """
        current = current_deadline()
        if current is not None:
            yield current
            return
        at = time.monotonic() + self.settings.remote_timeout
        with deadline_scope(at):
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
        except (ValueError, RecursionError):
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
        state.response = response
        answer = RemoteAnswer(None, response.headers, state.attempts, state.bytes_sent, state.endpoint)
        return self._events(response, state), answer, state

    def post_json(self, path: str | None, body: Any, *, stream: bool = False,
                  content_type: str | None = None) -> RemoteAnswer:
        """POST ``body`` to ``path`` below the endpoint URL (None: the URL itself): JSON, or with ``content_type`` raw
        bytes (an image). The parsed answer, or with ``stream`` its events (``answer.data`` is then the generator of
        parsed ``data:`` payloads, ``[DONE]`` ending it).

        Raises:
            the ``InferenceError`` the failure means, as ``infer`` does.
        """
        headers = {"Accept": "text/event-stream" if stream else "application/json", **self._auth()}
        if stream:
            headers["Accept-Encoding"] = "identity"
        if content_type is not None:
            parts = _Parts(content=body, headers={**headers, "Content-Type": content_type}, stream=stream, path=path)
        else:
            parts = _Parts(json=body, headers=headers, stream=stream, path=path)
        with self.call_deadline() as deadline:
            state = _CallState(deadline=deadline)
            response, body_bytes = self._call(parts, state)
        if stream:
            state.response = response
            return RemoteAnswer(self._events(response, state), response.headers, state.attempts, state.bytes_sent,
                                state.endpoint, state)
        try:
            data = json.loads(body_bytes) if body_bytes else None
        except (ValueError, RecursionError):
            raise self._bad_response(response, body_bytes, "the body is not JSON") from None
        return RemoteAnswer(data, response.headers, state.attempts, state.bytes_sent, state.endpoint, state)

    def get_json(self, path: str | None) -> Any:
        """``GET path`` below the endpoint URL (None: the URL itself; no retries, ``STATUS_TIMEOUT``): a status or a
        model list."""
        return self._get(path)

    def probe(self) -> str:
        """What an ``auto`` endpoint speaks, asked once and remembered: ``openai`` when ``{url}/models`` lists models
        OpenAI's way, ``hf`` when TGI's ``{url}/info`` names a model, ``studio`` when the ``/inference`` URL's sibling
        ``health`` answers ours.

        Raises:
            BadResponse: none of them answered; the message says to set the protocol.
        """
        if self.protocol != "auto":
            return self.protocol
        checks = (
            ("openai", "models", "base", lambda data: isinstance(data, dict) and isinstance(data.get("data"), list)),
            ("hf", "info", "base", lambda data: isinstance(data, dict) and "model_id" in data),
            ("studio", "health", "sibling", lambda data: isinstance(data, dict) and "served" in data),
        )
        for protocol, path, style, fits in checks:
            try:
                data = self._get(path, style=style)
            except (AuthenticationError, RemoteUnavailable, InferenceTimeout):
                raise  # the token or the host, whatever the protocol: say so, not "set the protocol"
            except InferenceError:
                continue
            if fits(data):
                log.info("endpoint %s speaks the %s protocol (found by probing)", self.endpoint.name, protocol)
                self.protocol = protocol
                return protocol
        raise BadResponse(f"endpoint {self.endpoint.name!r} ({', '.join(self._hosts)}) answers none of the protocols "
                          f"this client speaks as expected: set its protocol (studio, openai or hf) in "
                          f"{self.endpoint.url_setting.rsplit('.', 1)[0]}.protocol, and check the URL")

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
        """The attempts, then the body (a stream: only its headers). Runs inside the call's deadline."""
        with self.map_errors(state):
            with state.connections.counting():
                response = self._send(parts, state)
            if parts.stream and response.status_code < 300:
                self._bound_stream(response)
                return response, b""
            body = self._read(response, cut=response.status_code >= 300)
        if 300 <= response.status_code < 400:
            raise self._redirected(response)
        if response.status_code >= 400:
            raise self._status_error(response, body)
        return response, body

    def _send(self, parts: _Parts, state: _CallState) -> httpx.Response:
        """The one retry loop: stamina judges each failed attempt (``_backoff``), waits and counts."""
        for attempt in stamina.retry_context(on=partial(self._backoff, state=state), attempts=self.max_attempts,
                                             timeout=None, wait_initial=WAIT_INITIAL, wait_max=WAIT_MAX,
                                             wait_jitter=WAIT_JITTER):
            with attempt:
                state.next_wait = attempt.next_wait
                return self._attempt(parts, state)
        raise AssertionError("unreachable: stamina re-raises the last failure")

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

    def _url(self, url: str, path: str | None) -> str:
        """Where ``path`` is for one endpoint URL. The studio URL names the ``/inference`` route, so its other routes
        are siblings; an OpenAI or Hugging Face URL is a base the routes are below."""
        if path is None:
            return url
        if self.protocol == "studio":
            return str(httpx.URL(url).join(path))
        base = httpx.URL(url)  # below the base's path; its query (Azure's ?api-version=) stays a query
        return str(base.copy_with(path=f"{base.path.rstrip('/')}/{path.lstrip('/')}"))

    def _failover_order(self, start: int | None = None) -> Iterator[tuple[int, str]]:
        """(index, url) of every endpoint, from ``start`` (default: the one that answered last) round the list."""
        first = self._preferred if start is None else start
        for position in range(len(self.endpoints)):
            index = (first + position) % len(self.endpoints)
            yield index, self.endpoints[index]

    def _parts(self, spec: Spec, image, use_remote: bool, *, stream: bool) -> _Parts:
        """The multipart request of one call (the same for every attempt and endpoint)."""
        files: dict[str, Any] = {"spec": (None, dumps(spec.model_dump(mode="json")), "application/json")}
        if image is not None:
            data, content_type = image
            extension = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}.get(content_type, "bin")
            files["image"] = (f"image.{extension}", data, content_type)
        headers = {"Accept": "text/event-stream" if stream else "application/json", **self._auth()}
        if stream:
            headers["Accept-Encoding"] = "identity"  # the stream's bound counts the bytes as they are sent
        return _Parts(files, {"use_remote": "true"} if use_remote else None, headers, stream)

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    def _attempt(self, parts: _Parts, state: _CallState) -> httpx.Response:
        """One attempt: each endpoint in failover order until one answers without a 5xx or connect error."""
        state.attempts += 1
        failure: Exception | None = None
        for position, (index, url) in enumerate(self._failover_order()):
            state.endpoint = self._hosts[index]
            last = position == len(self.endpoints) - 1
            remaining = max(0.001, state.remaining())
            # The deadline transport ends every read and write at the deadline; these bound any other transport.
            request = self._http.build_request(
                "POST", self._url(url, parts.path), files=parts.files, data=parts.data, json=parts.json,
                content=parts.content, headers=parts.headers,
                timeout=httpx.Timeout(connect=min(CONNECT_TIMEOUT, remaining), read=remaining, write=remaining,
                                      pool=remaining),
            )
            state.bytes_sent = int(request.headers.get("content-length", 0))
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
        response.stream = BoundedStream(response.stream, self.settings.max_response_bytes,
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
            f"followed, on purpose (the token must not travel on). Set {self.endpoint.url_setting} to the URL that answers"
        )

    def _events(self, response: httpx.Response, state: _CallState) -> Generator[dict[str, Any], None, None]:
        """Parse the server-sent events of ``response``, each read bounded by the call's deadline."""
        from httpx_sse import EventSource

        events = EventSource(response).iter_sse()
        try:
            while not state.cancelled:
                with deadline_scope(state.deadline), self.map_errors(state, streaming=True):
                    event = next(events, None)
                if event is None:
                    return
                if not event.data:
                    continue
                if event.data.strip() == "[DONE]":
                    state.done = True
                    return
                try:
                    value = event.json()
                except (ValueError, RecursionError):
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

    def _get(self, path: str | None, *, style: str | None = None) -> Any:
        """``GET path`` of the first endpoint that answers; within ``STATUS_TIMEOUT`` and the running call's deadline.

        ``style``: ``"sibling"`` or ``"base"`` to place ``path`` so, whatever the protocol (``probe``).
        """
        headers = {"Accept": "application/json", **self._auth()}
        failure: InferenceError | None = None
        call_deadline = current_deadline() or math.inf
        for index, url in self._failover_order(start=0):
            deadline = min(call_deadline, time.monotonic() + STATUS_TIMEOUT)
            state = _CallState(deadline=deadline, endpoint=self._hosts[index])
            try:
                with deadline_scope(deadline), self.map_errors(state):
                    target = self._url(url, path) if style is None else \
                        str(httpx.URL(url).join(path)) if style == "sibling" else f"{url.rstrip('/')}/{path}"
                    request = self._http.build_request("GET", target, headers=headers, timeout=STATUS_TIMEOUT)
                    response = self._http.send(request, stream=True)
                    body = self._read(response, cut=response.status_code >= 300)
                if 300 <= response.status_code < 400:
                    raise self._redirected(response)
                if response.status_code >= 400:
                    raise self._status_error(response, body)
                try:
                    return json.loads(body)
                except (ValueError, RecursionError):
                    raise self._bad_response(response, body, "the body is not JSON") from None
            except InferenceError as exc:
                failure = exc
        assert failure is not None
        raise failure

    # ------------------------------------------------------------------ error mapping (the one place)

    @contextmanager
    def map_errors(self, state: _CallState, *, streaming: bool = False) -> Iterator[None]:
        """Every failure of a call's HTTP exchange raised as the ``InferenceError`` it means."""
        try:
            yield
        except _StatusFailure as exc:
            raise self._status_error(exc.response, exc.body) from None
        except _ReusedConnectionLost as exc:
            raise self._transport_error(exc.error, state, streaming=streaming) from None
        except httpx.TransportError as exc:
            raise self._transport_error(exc, state, streaming=streaming) from None
        except httpx.DecodingError as exc:
            what = "stream" if streaming else "body"
            raise BadResponse(f"the remote endpoint {state.endpoint} sent a {what} that cannot be decoded "
                              f"({_describe(exc)})") from None

    def _transport_error(self, exc: httpx.TransportError, state: _CallState, *, streaming: bool = False) -> InferenceError:
        host = state.endpoint or ", ".join(self._hosts)
        tried = f" after {state.attempts} attempt{'s' if state.attempts != 1 else ''}" if state.attempts else ""
        if isinstance(exc, httpx.TimeoutException) and state.remaining() <= DEADLINE_SLACK:
            return self._timeout(state, streaming=streaming)
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
            return RemoteUnavailable(
                f"cannot reach the remote endpoint {host}{tried} ({type(exc).__name__}): check that the server runs "
                f"and that {self.endpoint.url_setting} is right"
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
        if code == "model_not_found" and detail is None:
            code = "not_found"  # a 404 that is no error body of any protocol (FastAPI's {"detail"}, a proxy): the URL
        if code is None:
            return BadResponse(f"the remote endpoint {host} answered an unexpected status {status}{said}")
        kind = ERRORS[code].exception
        template = _MESSAGES.get(code) or _MESSAGES[kind.__name__]
        retry_after = _retry_after(response)
        wait = f"; retry after {retry_after:g} s" if retry_after is not None and ERRORS[code].retry else ""
        message = template.format(host=host, status=status, said=said, token=self.endpoint.token_setting,
                                  hint=self._protocol_hint())
        return kind(message + wait, code=code, retry_after=retry_after)

    def _protocol_hint(self) -> str:
        what = {"studio": "the /inference URL of a server that speaks the studio protocol",
                "openai": "the /v1 base URL of an OpenAI-compatible server",
                "hf": "the base URL of a Hugging Face endpoint (TGI or Inference Endpoints)"}
        return f"Is {self.endpoint.url_setting} {what.get(self.protocol, 'right')}?"

    def _bad_response(self, response: httpx.Response, body: bytes, why: str) -> BadResponse:
        host = endpoint_host(str(response.request.url))
        return BadResponse(
            f"the remote endpoint {host} sent a bad answer ({response.status_code}): {why}; "
            f"it began {self._scrub(_excerpt(body))!r}. {self._protocol_hint()}"
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
    "AuthenticationError": "the remote endpoint {host} refused the token ({status}){said}. Check {token}",
    "RateLimited": "the remote endpoint {host} is busy ({status}){said}",
    "InferenceTimeout": "the remote endpoint {host} timed out ({status}){said}",
    "InvalidInput": "the remote endpoint {host} refused the request ({status}){said}",
    "UnsupportedTask": "the remote endpoint {host} refused the request ({status}){said}",
    "RemoteUnavailable": "the remote endpoint {host} failed ({status}){said}",
    "BadResponse": "the remote endpoint {host} has no such route ({status}){said}. {hint}",
}


def _error_detail(body: bytes):
    """The error detail in ``body``: the studio's and OpenAI's ``{"error": {...}}``, or vLLM's flat
    ``{"object": "error", "message": ...}``; None for anything else."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if isinstance(data, dict) and "error" not in data and isinstance(data.get("message"), str):
        data = {"error": {"message": data["message"]}}  # a code here would be an HTTP status: the status says it
    return parse_error(data)


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
