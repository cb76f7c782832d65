"""HTTP plumbing of the reference server: error answers, bounds on what a client may cost, logging, event streams.

Errors follow the one table of ``wire.ERRORS``; what a client sends can cost only bounded bytes and time: headers
(``HEADER_TIMEOUT``, ``http_protocol``), the body (``RequestBodyMiddleware``), and every event stream frees what it
holds however it ends (``EventStream``).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.sse import format_sse_event
from pydantic import BaseModel, SecretStr, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import InferenceError
from ..wire import ERRORS, code_of_error, dumps, error_body

__all__ = [
    "ApiError",
    "BearerAuth",
    "ClientGone",
    "EventStream",
    "ProtocolJSON",
    "RequestBodyMiddleware",
    "RequestLogMiddleware",
    "error_response",
    "header_value",
    "http_protocol",
    "install_error_handlers",
    "parse_json",
    "sse_event",
    "until_answered",
    "validate_body",
]

log = logging.getLogger("inference.server")

#: Seconds a client gets to send a request's headers, and then its whole body: a slow or idle sender is cut off
#: (uvicorn itself bounds only the idle time between requests).
HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 60.0
#: Retry-After of the answers that ask a client to come back, by code.
RETRY_AFTER = {"busy": 1, "model_loading": 2, "model_load_failed": 10, "rate_limited": 1}
#: Error messages are cut to this many characters (they may quote a client's values).
MAX_MESSAGE_CHARS = 1000


class ApiError(Exception):
    """An error answer of the protocol: a code of ``wire.ERRORS`` (which gives the status) and a message."""

    def __init__(self, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.headers = code, message, headers or {}


class ClientGone(Exception):
    """The client closed its connection while its request waited: answered 499 (nginx's "client closed request"),
    which no one reads, so that the logs and metrics say what happened."""


async def until_answered(request: Request, answer: asyncio.Future[Any], leave: Callable[[], bool]) -> Any:
    """``answer``'s result, unless the client goes away first and ``leave()`` takes the request out of its queue
    (``ClientGone``); when it cannot (it already runs), the answer is still awaited, so that what it holds is freed
    after it, not before. The request's body must have been read."""
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((answer, gone), return_when=asyncio.FIRST_COMPLETED)
        if not answer.done() and leave():
            raise ClientGone
        return await answer
    except asyncio.CancelledError:
        leave()
        raise
    finally:
        gone.cancel()


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (ASGI's ``http.disconnect``, once the body is read); never,
    when the server cannot tell (then the request simply waits for its answer)."""
    try:
        while (await request.receive())["type"] != "http.disconnect":
            pass
    except Exception:
        await asyncio.Event().wait()


class ProtocolJSON(JSONResponse):
    """JSON as the protocol writes it: UTF-8, and never a crash on text that UTF-8 cannot hold."""

    def render(self, content: Any) -> bytes:
        # NOTE: a lone surrogate (from a client's JSON) in a message would make a plain encode raise.
        return dumps(content).encode("utf-8", errors="replace")


def error_response(code: str, message: str, headers: dict[str, str] | None = None) -> ProtocolJSON:
    """The protocol's error answer: ``{"error": {...}}`` with the table's status, and Retry-After where it applies."""
    status = ERRORS[code].status
    headers = dict(headers or {})
    if code in RETRY_AFTER:
        headers.setdefault("Retry-After", str(RETRY_AFTER[code]))
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + "…"
    return ProtocolJSON(error_body(code, message), status_code=status, headers=headers)


def header_value(text: str) -> str:
    """``text`` as an HTTP header value: ASCII, one line."""
    return " ".join(text.encode("ascii", errors="replace").decode().split())


class BearerAuth:
    """``Authorization: Bearer <token>`` against the server's tokens (none set: every request is let in)."""

    def __init__(self, tokens: Iterable[SecretStr]) -> None:
        self._tokens = [token.get_secret_value().encode() for token in tokens]

    @property
    def enabled(self) -> bool:
        """Whether a token is needed."""
        return bool(self._tokens)

    def __repr__(self) -> str:
        return f"<BearerAuth tokens={len(self._tokens)}>"

    def __call__(self, request: Request) -> None:
        """Let the request in, or raise 401 ``unauthorized``."""
        if not self._tokens:
            return
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        offered = credentials.strip().encode()
        # compare_digest against every token, always: the time taken says nothing about which one matched.
        matched = [hmac.compare_digest(offered, token) for token in self._tokens]
        if scheme.lower() != "bearer" or not any(matched):
            raise ApiError("unauthorized", "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
                           headers={"WWW-Authenticate": 'Bearer realm="inference"'})


def install_error_handlers(app: FastAPI) -> None:
    """Every error ``app`` answers is the protocol's JSON, with the status of its code in ``wire.ERRORS``."""

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, exc: ClientGone) -> Response:
        return Response(status_code=499)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> ProtocolJSON:
        return error_response(exc.code, exc.message, exc.headers)

    @app.exception_handler(InferenceError)
    async def inference_error(request: Request, exc: InferenceError) -> ProtocolJSON:
        # Our own failures and, in gateway mode, the upstream's: its code, status and Retry-After pass through.
        code = code_of_error(exc)
        headers = {"Retry-After": f"{math.ceil(exc.retry_after)}"} if exc.retry_after is not None else None
        return error_response(code, str(exc), headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> ProtocolJSON:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        if code is None:
            return ProtocolJSON(error_body("error", str(exc.detail)), status_code=exc.status_code, headers=exc.headers)
        return error_response(code, str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> ProtocolJSON:
        return error_response("invalid_input", str(exc))


# --------------------------------------------------------------------------- connections and requests


def http_protocol() -> type:
    """uvicorn's h11 protocol with a deadline for each request's headers (``HEADER_TIMEOUT``).

    A client that connects and sends nothing, or drips its headers, is disconnected; uvicorn alone would
    hold such a connection open forever. Pass it as ``uvicorn.Config(app, http=http_protocol())``.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):
        header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:
                self._arm()  # headers begun, not complete
            else:
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self.header_timer is None and not self.transport.is_closing():
                self.header_timer = self.loop.call_later(HEADER_TIMEOUT, self._expire)

        def _disarm(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

        def _expire(self) -> None:
            self.header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                log.info("closing a connection whose request headers did not arrive within %g s", HEADER_TIMEOUT)
                self.transport.close()

    return HeaderTimeoutProtocol


class RequestBodyMiddleware:
    """Bounds what a request body may cost: ``max_body_bytes`` (413) and ``BODY_TIMEOUT`` seconds (408).

    A declared Content-Length over the limit is refused before a byte is read; chunked bodies are counted as
    they come. Both answers close the connection (the rest of the body is never read). Once the body is in,
    ``receive`` is passed through untouched (an event stream waits on it for the client's disconnect).
    """

    def __init__(self, app, max_body_bytes: int) -> None:
        self.app, self.max_body_bytes = app, max_body_bytes

    def _too_large(self) -> ApiError:
        return ApiError("payload_too_large", f"the request body is larger than {self.max_body_bytes / 2**20:g} MB: "
                        "send a smaller image", headers={"Connection": "close"})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            error = self._too_large()
            return await error_response(error.code, error.message, error.headers)(scope, receive, send)
        received, complete = 0, False
        deadline = asyncio.get_running_loop().time() + BODY_TIMEOUT

        async def bounded_receive():
            nonlocal received, complete
            if complete:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), deadline - asyncio.get_running_loop().time())
            except TimeoutError:
                raise ApiError("request_timeout", f"the request body did not arrive within {BODY_TIMEOUT:g} s: "
                               "send it faster, or a smaller image", headers={"Connection": "close"}) from None
            received += len(message.get("body", b""))
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            if received > self.max_body_bytes:
                raise self._too_large()
            return message

        await self.app(scope, bounded_receive, send)


class RequestLogMiddleware:
    """One log line per request (never headers or bodies: the token, the image), the request's metrics
    (``observe(scope, status, seconds)``), and the 500 of a bug.

    An unexpected exception is logged once, here, and answered with the protocol's JSON and
    ``Connection: close`` (the connection's state is unknown after a bug), so nothing above sees it.
    """

    def __init__(self, app, observe: Callable[[dict, int, float], None] | None = None) -> None:
        self.app, self.observe = app, observe

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        status = 0

        async def logged_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, logged_send)
        except Exception:
            log.exception("unexpected error on %s %s", scope["method"], scope["path"])
            if not status:  # else the answer is half sent: returning closes the connection
                response = error_response("internal_error", "the server failed unexpectedly; see its log",
                                          headers={"Connection": "close"})
                await response(scope, receive, logged_send)
        finally:
            seconds = time.perf_counter() - started
            log.info("%s %s %d model=%s %.1fms", scope["method"], scope["path"], status,
                     ascii(state.get("model_id", "-"))[1:-1], seconds * 1000)
            if self.observe is not None and scope.get("path") != "/metrics":
                self.observe(scope, status, seconds)


class EventStream(StreamingResponse):
    """Server-sent events that free what they hold however they end: finished, failed or the client gone.

    ``on_close`` (idempotent) runs when the response is over, by code: generation stops within a token and
    the model's gate is free for the next request at once, whatever the garbage collector does.
    """

    def __init__(self, events: AsyncIterator[bytes], on_close: Callable[[], None], headers: dict[str, str]) -> None:
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()
            await self.body_iterator.aclose()


def sse_event(data: Any) -> bytes:
    """One server-sent event, framed by FastAPI's SSE encoder. NOTE: ASCII JSON (``\\u`` escapes) so that no
    text, not even a lone surrogate, can fail to encode once the stream has begun."""
    return format_sse_event(data_str=json.dumps(data, separators=(",", ":")))


#: Most bytes of a JSON body without an image (a prompt, a conversation): parsing is paid before any admission.
MAX_TEXT_JSON_BYTES = 2 * 2**20


def parse_json(content_type: str, raw: bytes, max_bytes: int | None = MAX_TEXT_JSON_BYTES) -> Any:
    """A JSON request body of at most ``max_bytes`` (None: the body limit of ``RequestBodyMiddleware`` alone, which
    also bounds its time), or the 4xx it deserves. CPU-bound: run it in the threadpool, not on the event loop."""
    if "json" not in content_type:
        raise ApiError("unsupported_media_type", "send the request as JSON (Content-Type: application/json)")
    if max_bytes is not None and len(raw) > max_bytes:
        raise ApiError("payload_too_large", f"the JSON body is larger than {max_bytes / 2**20:g} MB: send a shorter "
                                            "prompt or conversation (an image, base64, at most the body limit)")
    try:
        return json.loads(raw)
    except RecursionError:
        raise ApiError("malformed_request", "the JSON body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError):
        raise ApiError("malformed_request", "the body is not valid JSON") from None


def validate_body(model: type[BaseModel], body: Any) -> Any:
    """``body`` as ``model``, or 422 ``invalid_spec`` naming the first few problems (never echoing big values)."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in error['loc']) or 'body'}: {error['msg'].lower()}"
                             for error in exc.errors()[:5])
        raise ApiError("invalid_spec", f"the request is not a valid {model.__name__}: {problems}") from None
