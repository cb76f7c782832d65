"""The wire protocol's schemas (pydantic), shared by the remote client and the reference server.

Requests are validated strictly (a server must say what is wrong); responses are parsed tolerantly
(unknown keys allowed, both the ``{...}`` and ``[{...}]`` text shapes accepted), as clients of real
engines must be.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator
from typing_extensions import TypedDict

from .errors import (
    AuthenticationError,
    BadResponse,
    InferenceError,
    InferenceTimeout,
    InvalidInput,
    ModelLoadError,
    RateLimited,
    RemoteNotConfigured,
    RemoteUnavailable,
    UnsupportedTask,
)

__all__ = [
    "ERRORS",
    "DetectionItem",
    "ErrorBody",
    "Payload",
    "Spec",
    "TextOutput",
    "WireError",
    "code_of_answer",
    "code_of_error",
    "error_body",
    "parse_detections",
    "parse_server_timing",
    "parse_text",
]

@dataclass(frozen=True)
class WireError:
    """How one error code travels: the HTTP status it is sent with and the exception a client raises for it."""

    status: int
    exception: type[InferenceError]
    #: A client may send the same request again (after ``Retry-After``): the failure is the server's state.
    retry: bool = False


#: The one table of the protocol's errors: code → status and exception. The server answers with it, every
#: client maps answers back with it, and a gateway passes an upstream's code through unchanged.
ERRORS: dict[str, WireError] = {
    "malformed_request": WireError(400, InvalidInput),  # not multipart, or parts that cannot be read
    "malformed_spec": WireError(400, InvalidInput),  # no spec part, or one that is not a JSON object
    "invalid_spec": WireError(422, InvalidInput),  # a JSON object with missing, unknown or wrong fields
    "remote_not_configured": WireError(400, RemoteNotConfigured),
    "unauthorized": WireError(401, AuthenticationError),
    "model_not_found": WireError(404, ModelLoadError),
    "not_found": WireError(404, BadResponse),  # no such route: the endpoint URL is wrong
    "method_not_allowed": WireError(405, BadResponse),
    "request_timeout": WireError(408, InferenceTimeout, retry=True),  # the request was sent too slowly
    "payload_too_large": WireError(413, InvalidInput),
    "image_too_large": WireError(413, InvalidInput),
    "unsupported_media_type": WireError(415, InvalidInput),
    "invalid_input": WireError(422, InvalidInput),
    "unsupported_task": WireError(422, UnsupportedTask),
    "rate_limited": WireError(429, RateLimited, retry=True),
    "internal_error": WireError(500, RemoteUnavailable),  # a bug: sending it again would not help
    "upstream_error": WireError(502, RemoteUnavailable, retry=True),
    "busy": WireError(503, RemoteUnavailable, retry=True),
    "model_loading": WireError(503, RemoteUnavailable, retry=True),
    "model_load_failed": WireError(503, ModelLoadError),  # tried again on a later request, not at once
    "upstream_timeout": WireError(504, InferenceTimeout, retry=True),
}

#: The code of an error answer whose body names none of ours (a proxy's page, another server), by status.
_STATUS_CODES = {
    400: "malformed_request", 401: "unauthorized", 403: "unauthorized", 404: "model_not_found",
    405: "method_not_allowed", 408: "request_timeout", 413: "payload_too_large", 415: "unsupported_media_type",
    422: "invalid_input", 429: "rate_limited", 500: "internal_error", 502: "upstream_error", 503: "busy",
    504: "upstream_timeout",
}

#: Codes of the client-side causes (no answer, or an answer that is not ours), as a gateway reports them.
_CAUSE_CODES: tuple[tuple[type[InferenceError], str], ...] = (
    (UnsupportedTask, "unsupported_task"),
    (InvalidInput, "invalid_input"),
    (ModelLoadError, "model_load_failed"),
    (InferenceTimeout, "upstream_timeout"),
    (RateLimited, "rate_limited"),
    (RemoteNotConfigured, "remote_not_configured"),
    (AuthenticationError, "upstream_error"),
    (RemoteUnavailable, "upstream_error"),
    (BadResponse, "upstream_error"),
)


def code_of_answer(status: int, code: str | None) -> str | None:
    """The table's code for an error answer: the code its body names when it fits the status, else the status's.

    None for a status the protocol does not use (the caller reports it as unexpected).
    """
    if code in ERRORS and ERRORS[code].status == status:
        return code
    return _STATUS_CODES.get(status)


#: Upstream answers a gateway does not pass on: they are about the gateway's own link to the upstream (its
#: token, its URL) or the upstream's bug, not about the caller's request. They become 502 ``upstream_error``.
_GATEWAY_OWN = frozenset({"unauthorized", "not_found", "method_not_allowed", "internal_error"})


def code_of_error(exc: InferenceError) -> str:
    """The code a server answers ``exc`` with: its own when the table has it, else the one of its cause.

    A gateway passes an upstream's code through (status and Retry-After follow), except the ``_GATEWAY_OWN``
    ones: a 401 from the upstream means the gateway's token is wrong, which a 401 to the caller would misstate.
    """
    if exc.code in ERRORS and exc.code not in _GATEWAY_OWN:
        return exc.code
    for kind, code in _CAUSE_CODES:
        if isinstance(exc, kind):
            return code
    return "internal_error"


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

    @field_validator("code", mode="before")
    @classmethod
    def _any_code(cls, value: Any) -> Any:
        return value if isinstance(value, str) else "error"  # OpenAI sends null, vLLM a number

    @field_validator("message", mode="before")
    @classmethod
    def _any_message(cls, value: Any) -> Any:
        return value if isinstance(value, str) else ""


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
