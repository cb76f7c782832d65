"""What every backend is: ``run`` a request to a ``Raw``, ``stream`` one to a ``StreamHandle``, ``info``, ``close``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..request import Request
from ..types import Raw

__all__ = ["Backend", "StreamFacts", "StreamHandle"]


class Backend(Protocol):
    """Where requests run. ``Model`` validates, a backend runs, ``Timings.from_raw`` and the codec do the rest.

    Implementations: ``backends.local.LocalBackend`` (transformers in this process) and
    ``backends.studio.StudioBackend`` (the studio's multipart protocol). A protocol is one module.
    """

    #: Where requests run: ``"local"`` or ``"remote"``.
    name: str

    def run(self, request: Request) -> Raw:
        """Run ``request`` once; the answer and the facts of the call."""

    def stream(self, request: Request) -> StreamHandle:
        """Start generating text for ``request``; its pieces as they come."""

    def info(self) -> dict[str, Any]:
        """Facts about the model for ``ModelInfo``: device, dtype, classes, memory_bytes (None where unknown)."""

    def close(self) -> None:
        """Let go of what this backend holds of its own (models and connections are the engine's)."""


@dataclass
class StreamFacts:
    """What a stream knows once its pieces are exhausted (a backend fills it in as the stream runs)."""

    details: dict[str, Any] = field(default_factory=dict)
    load_ms: float | None = None
    server_timing: dict[str, float] = field(default_factory=dict)
    attempts: int = 1
    bytes_sent: int | None = None
    warnings: tuple[str, ...] = ()


class StreamHandle(Iterator[str]):
    """A started stream of text pieces: timed from the call's start, stopped by ``cancel``, a ``Raw`` at its end.

    Args:
        pieces: the backend's text pieces.
        started: ``time.perf_counter()`` when the call began (a model load it did is in ``facts.load_ms``).
        cancel: stops the backend's generation (idempotent, from any thread).
        facts: what the backend knows of the call; read by ``raw`` once the pieces are exhausted.
    """

    def __init__(self, pieces: Iterator[str], *, started: float, cancel: Callable[[], None], facts: StreamFacts) -> None:
        self._pieces = pieces
        self.started = started
        self._cancel = cancel
        self.facts = facts
        self.first_piece_ms: float | None = None

    def __iter__(self) -> StreamHandle:
        return self

    def __next__(self) -> str:
        piece = next(self._pieces)
        if self.first_piece_ms is None:
            self.first_piece_ms = (time.perf_counter() - self.started) * 1000
        return piece

    def cancel(self) -> None:
        """Stop the backend's generation (idempotent, from any thread)."""
        self._cancel()

    def __del__(self) -> None:
        # A stream nobody reads any more (its request was cancelled before the answer began) stops generating.
        try:
            self._cancel()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def raw(self, text: str) -> Raw:
        """The stream's ``Raw`` once its pieces are exhausted: ``text`` is what they added up to."""
        facts = self.facts
        return Raw(output=text, elapsed_ms=(time.perf_counter() - self.started) * 1000, load_ms=facts.load_ms,
                   server_timing=facts.server_timing, first_piece_ms=self.first_piece_ms, details=facts.details,
                   attempts=facts.attempts, bytes_sent=facts.bytes_sent, warnings=facts.warnings)
