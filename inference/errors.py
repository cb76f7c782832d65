"""The one exception tree of the package.

Every failure a caller can act on is an ``InferenceError``; the subclass names the cause and the
message says what to do about it. Lower-level errors (httpx, transformers, Pillow) are mapped at the
boundary where they happen and chained with ``raise ... from exc``.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "BadResponse",
    "InferenceError",
    "InferenceTimeout",
    "InvalidInput",
    "ModelLoadError",
    "RateLimited",
    "RemoteNotConfigured",
    "RemoteUnavailable",
    "UnsupportedTask",
]


class InferenceError(Exception):
    """Base class of every error this package raises on purpose."""

    #: A stable machine-readable code, used as ``error.code`` on the wire (``wire.ERRORS`` maps it to a status).
    code = "inference_error"

    def __init__(self, message: str = "", *, code: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code  # a finer cause, e.g. "image_too_large" for an InvalidInput
        #: Seconds the endpoint asked us to wait before trying again (its ``Retry-After``), when it said.
        self.retry_after = retry_after


class InvalidInput(InferenceError, ValueError):
    """The caller passed something unusable: a bad image, prompt or parameter."""

    code = "invalid_input"


class UnsupportedTask(InvalidInput):
    """The task name is not one this package knows."""

    code = "unsupported_task"


class ModelLoadError(InferenceError):
    """A model could not be loaded: not found, not reachable offline, or wrong for the task."""

    code = "model_load_failed"


class RemoteNotConfigured(InferenceError):
    """The remote backend was asked for but the configuration does not allow or describe it."""

    code = "remote_not_configured"


class RemoteUnavailable(InferenceError):
    """The remote endpoint could not be reached or failed on its side."""

    code = "remote_unavailable"


class InferenceTimeout(InferenceError, TimeoutError):
    """The call did not finish within its deadline."""

    code = "timeout"


class AuthenticationError(InferenceError):
    """The remote endpoint refused the bearer token."""

    code = "authentication_error"


class RateLimited(InferenceError):
    """The remote endpoint is busy and asked us to come back later."""

    code = "rate_limited"


class BadResponse(InferenceError):
    """The remote endpoint answered, but not with something the protocol allows."""

    code = "bad_response"
