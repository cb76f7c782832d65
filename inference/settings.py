"""Configuration: environment variables (or a mapping such as ``st.secrets``) to a frozen ``Settings``."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

from .errors import InvalidInput

__all__ = ["Settings", "parse_bytes"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(value: str | int) -> int:
    """Parse a size such as ``"8GB"``, ``"512 MiB"`` or ``"1048576"`` into bytes.

    >>> parse_bytes("1.5GiB")
    1610612736
    """
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _UNITS:
        raise InvalidInput(f"cannot read {value!r} as a size: use bytes or a unit such as 512MB, 8GB or 4GiB")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def _bool(name: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidInput(f"{name}={raw!r} is not a boolean: use true or false")


def _list(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    items = raw if isinstance(raw, (list, tuple)) else str(raw).split(",")
    return tuple(item.strip() for item in items if item and item.strip())


def _positive(name: str, raw: Any, kind: type = float) -> Any:
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        raise InvalidInput(f"{name}={raw!r} is not a number") from None
    if value <= 0:
        raise InvalidInput(f"{name} must be greater than 0, got {raw!r}")
    return value


# Each field: (environment variable, parser). The environment variable is also the key in st.secrets.
_SOURCES: dict[str, tuple[str, Any]] = {
    "remote_enabled": ("REMOTE_INFERENCE_ENABLED", lambda raw: _bool("REMOTE_INFERENCE_ENABLED", raw)),
    "remote_endpoints": ("REMOTE_INFERENCE_ENDPOINT", _list),
    "remote_token": ("REMOTE_INFERENCE_TOKEN", lambda raw: str(raw).strip() or None),
    "remote_timeout": ("REMOTE_INFERENCE_TIMEOUT", lambda raw: _positive("REMOTE_INFERENCE_TIMEOUT", raw)),
    "upload_max_edge": ("REMOTE_INFERENCE_MAX_EDGE", lambda raw: _positive("REMOTE_INFERENCE_MAX_EDGE", raw, int)),
    "max_response_bytes": ("REMOTE_INFERENCE_MAX_RESPONSE_BYTES",
                           lambda raw: _positive("REMOTE_INFERENCE_MAX_RESPONSE_BYTES", parse_bytes(raw), int)),
    "server_tokens": ("INFERENCE_SERVER_TOKEN", _list),
    "max_model_memory": ("INFERENCE_MAX_MODEL_MEMORY", lambda raw: parse_bytes(raw) if str(raw).strip() else None),
    "max_image_pixels": ("INFERENCE_MAX_IMAGE_PIXELS", lambda raw: _positive("INFERENCE_MAX_IMAGE_PIXELS", raw, int)),
    "device": ("INFERENCE_DEVICE", lambda raw: str(raw).strip().lower() or "auto"),
    "dtype": ("INFERENCE_DTYPE", lambda raw: str(raw).strip().lower() or "auto"),
}

_DEVICES = ("auto", "cpu", "cuda", "mps")
_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Settings:
    """Everything the engine, the remote client and the server are configured by.

    ``Settings()`` reads the environment; any field can be passed explicitly, and
    ``Settings.from_mapping(st.secrets)`` lets a mapping (same keys as the variables) win over it.
    The token fields are left out of ``repr`` so a logged ``Settings`` never shows a secret.

    Example:
        >>> Settings(remote_enabled=True, remote_endpoints=("http://127.0.0.1:8000/inference",))
    """

    remote_enabled: bool = field(default_factory=lambda: _from_env("remote_enabled", False))
    remote_endpoints: tuple[str, ...] = field(default_factory=lambda: _from_env("remote_endpoints", ()))
    remote_token: str | None = field(default_factory=lambda: _from_env("remote_token", None), repr=False)
    remote_timeout: float = field(default_factory=lambda: _from_env("remote_timeout", 120.0))
    upload_max_edge: int = field(default_factory=lambda: _from_env("upload_max_edge", 1024))
    #: Most bytes read of one remote answer (decoded): a body, an event stream or a model list. Past it: BadResponse.
    max_response_bytes: int = field(default_factory=lambda: _from_env("max_response_bytes", 32 * 2**20))
    server_tokens: tuple[str, ...] = field(default_factory=lambda: _from_env("server_tokens", ()), repr=False)
    #: Budget for all locally loaded models together; None = half of the machine's (or GPU's) memory.
    max_model_memory: int | None = field(default_factory=lambda: _from_env("max_model_memory", None))
    #: Largest image accepted, in pixels (width x height); guards against decompression bombs.
    max_image_pixels: int = field(default_factory=lambda: _from_env("max_image_pixels", 40_000_000))
    device: str = field(default_factory=lambda: _from_env("device", "auto"))
    dtype: str = field(default_factory=lambda: _from_env("dtype", "auto"))

    def __post_init__(self) -> None:
        if isinstance(self.remote_endpoints, str):  # be kind to Settings(remote_endpoints="http://...")
            object.__setattr__(self, "remote_endpoints", _list(self.remote_endpoints))
        if isinstance(self.server_tokens, str):
            object.__setattr__(self, "server_tokens", _list(self.server_tokens))
        for endpoint in self.remote_endpoints:
            parts = urlsplit(endpoint)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise InvalidInput(
                    f"REMOTE_INFERENCE_ENDPOINT {_redact_url(endpoint)!r} is not an http(s) URL: "
                    "use the full URL of the /inference endpoint, e.g. https://gpu-box:8000/inference"
                )
            if parts.username or parts.password:
                raise InvalidInput(
                    "REMOTE_INFERENCE_ENDPOINT must not carry credentials in the URL: "
                    "put the token in REMOTE_INFERENCE_TOKEN instead"
                )
        if self.device not in _DEVICES:
            raise InvalidInput(f"device {self.device!r} is not one of {', '.join(_DEVICES)}")
        if self.dtype not in _DTYPES:
            raise InvalidInput(f"dtype {self.dtype!r} is not one of {', '.join(_DTYPES)}")
        if self.remote_timeout <= 0:
            raise InvalidInput(f"remote_timeout must be greater than 0, got {self.remote_timeout!r}")

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None = None, /, **overrides: Any) -> Settings:
        """Settings from ``mapping`` (keys as the environment variables), then the environment.

        Args:
            mapping: e.g. ``st.secrets``; a key present there wins over the environment.
            overrides: field values that win over both.
        """
        values: dict[str, Any] = {}
        mapping = mapping or {}
        for name, (variable, parse) in _SOURCES.items():
            if variable in mapping:
                values[name] = parse(mapping[variable])
        values.update(overrides)
        return cls(**values)

    @property
    def remote_configured(self) -> bool:
        """True when the remote backend is enabled and has an endpoint."""
        return self.remote_enabled and bool(self.remote_endpoints)

    def public_dict(self) -> dict[str, Any]:
        """The settings as a dict without secrets, for status pages and logs."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.repr}
        out["remote_endpoints"] = [_redact_url(url) for url in self.remote_endpoints]
        out["remote_token_set"] = self.remote_token is not None
        out["server_tokens_set"] = len(self.server_tokens)
        return out


def _from_env(name: str, default: Any) -> Any:
    variable, parse = _SOURCES[name]
    raw = os.environ.get(variable)
    return default if raw is None else parse(raw)


def _redact_url(url: str) -> str:
    """The URL without user info or query string (either may hold a secret)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    if parts.scheme:
        return f"{parts.scheme}://{host}{parts.path}"
    return url.split("?")[0].rsplit("@", 1)[-1]
