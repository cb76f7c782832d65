"""The wire protocol's schemas (pydantic), shared by the remote client and the reference server.

Requests are validated strictly (a server must say what is wrong); responses are parsed tolerantly
(unknown keys allowed, both the ``{...}`` and ``[{...}]`` text shapes accepted), as clients of real
engines must be.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from typing_extensions import TypedDict

__all__ = [
    "DetectionItem",
    "ErrorBody",
    "Payload",
    "Spec",
    "TextOutput",
    "error_body",
    "parse_detections",
    "parse_server_timing",
    "parse_text",
]

#: Status of each error code the server sends (and the client maps back).
ERROR_STATUS = {
    "invalid_spec": 400,
    "malformed_request": 400,
    "unauthorized": 401,
    "model_not_found": 404,
    "payload_too_large": 413,
    "image_too_large": 413,
    "unsupported_media_type": 415,
    "invalid_input": 422,
    "unsupported_task": 422,
    "rate_limited": 429,
    "busy": 503,
    "model_loading": 503,
    "upstream_error": 502,
    "upstream_timeout": 504,
}


class Payload(BaseModel):
    """``spec.payload``: the prompt (or null) and the task parameters."""

    model_config = ConfigDict(extra="forbid")

    inputs: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)


class Spec(BaseModel):
    """The ``spec`` part of a request."""

    model_config = ConfigDict(extra="forbid")

    model_id: str = Field(min_length=1, max_length=512)
    task: str
    payload: Payload = Field(default_factory=Payload)


class _Tolerant(BaseModel):
    model_config = ConfigDict(extra="allow")


class Box(TypedDict):
    xmin: float
    ymin: float
    xmax: float
    ymax: float


class DetectionItem(TypedDict):
    """One detection as the wire carries it (a plain dict: parsing many of them stays cheap)."""

    label: str
    score: float
    box: Box


class TextOutput(_Tolerant):
    generated_text: str
    details: dict[str, Any] | None = None


class ErrorDetail(_Tolerant):
    code: str = "error"
    message: str = ""


class ErrorBody(_Tolerant):
    error: ErrorDetail


_DETECTIONS = TypeAdapter(list[DetectionItem])
_TEXT = TypeAdapter(TextOutput | list[TextOutput])


def error_body(code: str, message: str) -> dict[str, Any]:
    """``{"error": {"code": ..., "message": ...}}``."""
    return {"error": {"code": code, "message": message}}


def parse_text(data: Any) -> TextOutput:
    """A text answer from either shape. Raises ``ValidationError`` / ``ValueError`` on anything else."""
    parsed = _TEXT.validate_python(data)
    if isinstance(parsed, list):
        if len(parsed) != 1:
            raise ValueError(f"expected one generated_text, got {len(parsed)}")
        parsed = parsed[0]
    return parsed


def parse_detections(data: Any) -> list[DetectionItem]:
    """A detection answer: a list of ``{label, score, box}`` (unknown keys dropped)."""
    return _DETECTIONS.validate_python(data)


def parse_error(data: Any) -> ErrorDetail | None:
    """The error detail of an error body, or None when the body is not in the protocol's shape."""
    try:
        return ErrorBody.model_validate(data).error
    except ValidationError:
        return None


_TIMING = re.compile(r"\s*([!#$%&'*+\-.^_`|~0-9A-Za-z]+)((?:\s*;\s*[^,;]+)*)")


def parse_server_timing(header: str | None) -> dict[str, float]:
    """``"inference;dur=12.5, queue;dur=0.3"`` → ``{"inference": 12.5, "queue": 0.3}`` (entries without dur skipped)."""
    timings: dict[str, float] = {}
    for entry in (header or "").split(","):
        match = _TIMING.match(entry)
        if not match:
            continue
        for param in match.group(2).split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "dur":
                try:
                    timings[match.group(1)] = float(value.strip().strip('"'))
                except ValueError:
                    pass
    return timings


def dumps(data: Any) -> str:
    """Compact JSON, as sent on the wire."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)
