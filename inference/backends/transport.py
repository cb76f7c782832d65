"""An httpx transport whose every socket operation ends at the calling call's deadline.

httpx's own read timeout restarts with every chunk, so a body that drips a byte at a time could outlive any
timeout. ``DeadlineTransport`` is httpcore's connection pool with a network backend (httpcore's public seam,
``ConnectionPool(network_backend=...)``) that gives every connect, read and write only the time left until the
deadline set with ``deadline_scope``, so calls run in the caller's thread with no hand-off and still end on time.
It also tells a call (``ConnectionLog``) whether its request went out on a kept-alive connection.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import httpcore
import httpx

__all__ = ["BoundedStream", "ConnectionLog", "DeadlineTransport", "current_deadline", "deadline_scope"]

_DEADLINE: ContextVar[float | None] = ContextVar("inference_remote_deadline", default=None)
#: The call running in this thread, told by the transport when it opens a connection (see ``ConnectionLog``).
_CONNECTIONS: ContextVar[ConnectionLog | None] = ContextVar("inference_remote_connections", default=None)


def current_deadline() -> float | None:
    """The ``time.monotonic()`` the current thread's call must end by; None outside a call."""
    return _DEADLINE.get()


@contextmanager
def deadline_scope(at: float) -> Iterator[None]:
    """Every socket operation on a ``DeadlineTransport`` in this block ends by ``at`` (``time.monotonic()``)."""
    token = _DEADLINE.set(at)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


class ConnectionLog:
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


class BoundedStream(httpx.SyncByteStream):
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
