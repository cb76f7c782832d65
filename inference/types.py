"""Results and timings: small frozen dataclasses, the same whichever backend produced them.

A backend reports what it observed as a ``Raw`` (the output and facts: wall time, load time, the server's
timing header, attempts, bytes); ``Timings.from_raw`` derives every figure from it, in one place.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import supervision as sv
    from PIL import Image

__all__ = ["DetectionResult", "ModelInfo", "Raw", "Result", "TextResult", "TextStream", "Timings"]

Source = Literal["local", "remote"]


@dataclass(frozen=True, kw_only=True)
class Raw:
    """What one backend call observed: its output and the facts every figure of a result is derived from.

    Backends record facts only; ``Timings.from_raw`` turns them into latencies, the same way for all of them.
    """

    #: The task's output as its codec holds it: the text, or a ``supervision.Detections``.
    output: Any
    #: The caller's wall time of the call on the backend, from its start (a model load it did included).
    elapsed_ms: float
    #: The part of ``elapsed_ms`` spent loading the model: here, or on the server (its ``load`` timing).
    load_ms: float | None = None
    #: The server's ``Server-Timing`` entries in ms (``inference``, ``queue``, ``load``); empty for local calls.
    server_timing: Mapping[str, float] = field(default_factory=dict)
    #: For streams: ms from the call's start to its first piece of text.
    first_piece_ms: float | None = None
    #: Facts about the output (finish_reason, prompt_tokens, generated_tokens, endpoint, ...), kept as received.
    details: Mapping[str, Any] = field(default_factory=dict)
    #: HTTP attempts the call took (1 = no retry); 1 for local calls.
    attempts: int = 1
    #: Bytes of the request body sent to a remote endpoint.
    bytes_sent: int | None = None
    #: What the caller should know about how the request ran, e.g. that its image was not used.
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Timings:
    """Where the time of one call went, in milliseconds.

    ``total_ms`` is the caller's wall time of the call. ``load_ms`` is set only on the call that loaded
    the model and is never part of ``total_ms``. ``server_ms`` / ``network_ms`` are set for remote calls
    (network = total - server); ``ttft_ms``, ``tokens`` and ``tokens_per_s`` for text generation.
    """

    total_ms: float
    server_ms: float | None = None
    network_ms: float | None = None
    load_ms: float | None = None
    queue_ms: float | None = None
    #: A batched request's wait for its batch to close, on the server (part of ``server_ms``).
    batch_ms: float | None = None
    ttft_ms: float | None = None
    tokens: int | None = None
    tokens_per_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}

    @classmethod
    def from_raw(cls, raw: Raw, *, earlier_load_ms: float | None = None) -> Timings:
        """Every figure of one call, derived from what its backend observed.

        A model load is reported as ``load_ms`` and kept out of every latency: ``total_ms`` is the wall time less
        the load, and so is TTFT. ``server_ms`` is the server's inference, queue and batch time, ``network_ms`` the rest
        of ``total_ms``. Tokens per second are over the whole call (prefill included), for every backend alike.
        ``earlier_load_ms``: a load that happened before the call (``load_model`` loads at once), reported once.
        """
        load = raw.load_ms or 0.0
        total = max(0.0, raw.elapsed_ms - load)
        server = raw.server_timing
        server_ms = network_ms = None
        if "inference" in server:
            server_ms = server["inference"] + server.get("queue", 0.0) + server.get("batch", 0.0)
            network_ms = max(0.0, total - server_ms)
        tokens = raw.details.get("generated_tokens")
        tokens = tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else None
        return cls(
            total_ms=total,
            server_ms=server_ms,
            network_ms=network_ms,
            load_ms=raw.load_ms if raw.load_ms is not None else earlier_load_ms,
            queue_ms=server.get("queue"),
            batch_ms=server.get("batch"),
            ttft_ms=None if raw.first_piece_ms is None else max(0.0, raw.first_piece_ms - load),
            tokens=tokens,
            tokens_per_s=round(tokens / (total / 1000), 2) if tokens is not None and total > 0 else None,
        )


@dataclass(frozen=True, kw_only=True)
class _ResultBase:
    model_id: str
    task: str
    source: Source
    timings: Timings
    #: Why this backend was chosen (set by backend="auto").
    backend_reason: str | None = None
    #: HTTP attempts a remote call took (1 = no retry); 1 for local calls.
    attempts: int = 1
    #: Bytes of the request body sent to a remote endpoint.
    bytes_sent: int | None = None
    #: Extra facts from the backend (finish_reason, prompt_tokens, endpoint, ...), kept as received.
    details: dict[str, Any] = field(default_factory=dict)
    #: What the caller should know about how the request ran, e.g. that its image was not used.
    warnings: tuple[str, ...] = ()

    def _common_dict(self) -> dict[str, Any]:
        out = {
            "model_id": self.model_id,
            "task": self.task,
            "source": self.source,
            "timings": self.timings.to_dict(),
            "attempts": self.attempts,
        }
        if self.backend_reason is not None:
            out["backend_reason"] = self.backend_reason
        if self.bytes_sent is not None:
            out["bytes_sent"] = self.bytes_sent
        out["details"] = dict(self.details)
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out


@dataclass(frozen=True, kw_only=True)
class TextResult(_ResultBase):
    """The answer of text-generation, image-to-text or image-text-to-text."""

    text: str

    @property
    def brief(self) -> str:
        """The answer in a few words, for a history table."""
        return self.text[:120]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the result."""
        return {"text": self.text, **self._common_dict()}


@dataclass(frozen=True, kw_only=True, eq=False)
class DetectionResult(_ResultBase):
    """The answer of object detection: a ``supervision.Detections`` in the input image's pixels."""

    detections: sv.Detections
    #: (width, height) of the image the boxes refer to.
    image_size: tuple[int, int]

    @property
    def brief(self) -> str:
        """The answer in a few words, for a history table."""
        return f"{len(self.detections)} detections"

    @property
    def class_names(self) -> list[str]:
        """The label of each detection, in order."""
        names = self.detections.data.get("class_name")
        return [] if names is None else [str(name) for name in names]

    def annotate(self, image: Any, **options: Any) -> Image.Image:
        """Draw the boxes, labels and confidences on ``image`` (any accepted input) with supervision.

        Returns a new ``PIL.Image``; the input is left as it was.
        """
        from .annotate import annotate_detections

        return annotate_detections(image, self.detections, **options)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; each detection in the wire protocol's shape (label, score, box)."""
        from .annotate import detections_to_list

        return {
            "detections": detections_to_list(self.detections),
            "image_size": list(self.image_size),
            **self._common_dict(),
        }


Result = TextResult | DetectionResult


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model is and where it runs."""

    model_id: str
    task: str
    backend: Source
    device: str | None = None
    dtype: str | None = None
    #: Class names of a detector, in class-id order.
    classes: tuple[str, ...] = ()
    memory_bytes: int | None = None
    load_ms: float | None = None
    #: Why the backend was chosen (backend="auto").
    backend_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TextStream(Iterator[str]):
    """Text pieces as they are generated; ``result`` holds the full ``TextResult`` once it is exhausted.

    Example:
        >>> stream = gen.stream("Tell me a joke")
        >>> for piece in stream:
        ...     print(piece, end="")
        >>> stream.result.timings.ttft_ms
    """

    def __init__(self, pieces: Iterator[str], finish: Callable[[str], TextResult], cancel: Callable[[], None]):
        self._pieces = pieces
        self._finish = finish
        self._cancel = cancel
        self._parts: list[str] = []
        self._result: TextResult | None = None
        self._lock = threading.Lock()

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        if self._result is not None:
            raise StopIteration
        try:
            piece = next(self._pieces)
        except StopIteration:
            self._result = self._finish("".join(self._parts))
            raise
        except BaseException:
            self.close()
            raise
        self._parts.append(piece)
        return piece

    @property
    def text(self) -> str:
        """The text received so far."""
        return "".join(self._parts)

    @property
    def result(self) -> TextResult:
        """The complete result. Reading it before the stream is exhausted consumes the rest."""
        if self._result is None:
            for _ in self:
                pass
        assert self._result is not None
        return self._result

    def close(self) -> None:
        """Stop generating (e.g. the reader went away); safe to call more than once."""
        with self._lock:
            self._cancel()

    def __enter__(self) -> TextStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass
