"""Task codecs: what a task's output is, and how it travels and becomes a result.

Every ``TaskSpec`` carries one codec. The local backend produces the codec's output (``Raw.output``); the server
writes it to the wire with ``to_wire``; the remote client reads an answer back with ``from_wire``; ``Model`` turns
it into the typed result with ``result``. No other module asks which kind of output a task has: adding a task whose
output is text or detections is one registry entry in ``tasks.py``; a new kind of output is one codec here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from .types import DetectionResult, Raw, Result, TextResult
from .wire import parse_detections, parse_text

__all__ = ["DETECTIONS", "TEXT", "Codec", "DetectionCodec", "TextCodec"]


class Codec(Protocol):
    """How one kind of output travels and becomes a result."""

    #: The kind of output: ``"text"`` or ``"detections"``.
    name: str
    #: The output can be streamed piece by piece (text).
    streams: bool
    #: An answer names classes by label only: reading it back needs the model's class list for stable class ids.
    needs_classes: bool

    def to_wire(self, output: Any, details: Mapping[str, Any]) -> Any:
        """The protocol's JSON answer body for ``output``."""

    def from_wire(self, data: Any, *, classes: Callable[[], tuple[str, ...]], scale: float) -> tuple[Any, dict[str, Any]]:
        """(output, details) of an answer body. ``scale`` maps pixels of an image sent downscaled back to the
        original. Raises ``ValueError`` (pydantic's ``ValidationError`` is one) on an answer of the wrong shape."""

    def result(self, raw: Raw, *, image_size: tuple[int, int] | None, **common: Any) -> Result:
        """The typed result of ``raw``; ``image_size`` is the request's image's (width, height), ``common`` holds the
        fields every result has."""


class TextCodec:
    """Text answers: ``{"generated_text", "details"}`` on the wire, ``TextResult`` in Python."""

    name = "text"
    streams = True
    needs_classes = False

    def to_wire(self, output: str, details: Mapping[str, Any]) -> dict[str, Any]:
        return {"generated_text": output, "details": dict(details)}

    def from_wire(self, data: Any, *, classes: Callable[[], tuple[str, ...]], scale: float) -> tuple[str, dict[str, Any]]:
        text = parse_text(data)
        return text.generated_text, dict(text.details or {})

    def result(self, raw: Raw, *, image_size: tuple[int, int] | None, **common: Any) -> TextResult:
        return TextResult(text=raw.output, **common)


class DetectionCodec:
    """Detections: ``[{"label", "score", "box"}]`` on the wire, ``DetectionResult`` (supervision) in Python."""

    name = "detections"
    streams = False
    needs_classes = True

    def to_wire(self, output: Any, details: Mapping[str, Any]) -> list[dict[str, Any]]:
        from .annotate import detections_to_list

        return detections_to_list(output)

    def from_wire(self, data: Any, *, classes: Callable[[], tuple[str, ...]], scale: float) -> tuple[Any, dict[str, Any]]:
        from .annotate import detections_from_list

        items = parse_detections(data)
        if any(before["score"] < after["score"] for before, after in zip(items, items[1:])):
            items = sorted(items, key=lambda item: item["score"], reverse=True)  # best first, like local results
        detections = detections_from_list(items, classes())
        if scale != 1.0 and len(detections):
            # NOTE: the server reports pixels of the image as sent (downscaled), so map back to the original.
            detections.xyxy = detections.xyxy * scale
        return detections, {}

    def result(self, raw: Raw, *, image_size: tuple[int, int] | None, **common: Any) -> DetectionResult:
        assert image_size is not None  # a detection request always has its image
        return DetectionResult(detections=raw.output, image_size=image_size, **common)


TEXT = TextCodec()
DETECTIONS = DetectionCodec()
