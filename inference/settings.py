"""Configuration: environment variables, a mapping such as ``st.secrets``, or explicit values, to ``Settings``.

One pydantic-settings model: whichever way a value comes (``REMOTE_INFERENCE_TIMEOUT=30`` in the environment,
the same key in ``.streamlit/secrets.toml``, or ``Settings(remote_timeout=30)``), it goes through the same
validation, and a bad one is an ``InvalidInput`` that names the variable. Tokens are ``SecretStr``: no repr,
log line or error message shows them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .errors import InvalidInput

__all__ = ["Settings", "endpoint_host", "parse_bytes", "parse_flag"]

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
        raise ValueError(f"cannot read {value!r} as a size: use bytes or a unit such as 512MB, 8GB or 4GiB")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def parse_flag(value: Any) -> bool:
    """``True``/``False``, or the words people write for them (``"true"``, ``"1"``, ``"yes"``, ``"off"``, ...).

    Raises:
        ValueError: anything else.
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("is not a boolean: use true or false")


def _list(value: Any) -> Any:
    """A comma-separated string (as the environment holds it) to a tuple; a list or tuple stays as it is."""
    if value is None:
        return ()
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return tuple(item.strip() if isinstance(item, str) else item
                 for item in items if not isinstance(item, str) or item.strip())


def _env(name: str, variable: str) -> Any:
    """A field read from ``variable`` (the environment, a secrets mapping) or given by its ``name``."""
    return AliasChoices(name, variable)


class Settings(BaseSettings):
    """Everything the engine, the remote client and the server are configured by.

    ``Settings()`` reads the environment; any field can be passed explicitly, and
    ``Settings.from_mapping(st.secrets)`` lets a mapping (same keys as the variables) win over it.

    Example:
        >>> Settings(remote_enabled=True, remote_endpoints=("http://127.0.0.1:8000/inference",))
    """

    # NOTE: extra="forbid" makes a misspelt keyword an error (the environment is only asked for known fields).
    model_config = SettingsConfigDict(frozen=True, extra="forbid", env_ignore_empty=True, validate_default=True)

    remote_enabled: bool = Field(False, validation_alias=_env("remote_enabled", "REMOTE_INFERENCE_ENABLED"))
    remote_endpoints: Annotated[tuple[str, ...], NoDecode] = Field(
        (), validation_alias=_env("remote_endpoints", "REMOTE_INFERENCE_ENDPOINT"))
    remote_token: SecretStr | None = Field(None, validation_alias=_env("remote_token", "REMOTE_INFERENCE_TOKEN"))
    remote_timeout: float = Field(120.0, gt=0, validation_alias=_env("remote_timeout", "REMOTE_INFERENCE_TIMEOUT"))
    upload_max_edge: int = Field(1024, gt=0, validation_alias=_env("upload_max_edge", "REMOTE_INFERENCE_MAX_EDGE"))
    #: Most bytes read of one remote answer (decoded): a body, an event stream or a model list. Past it: BadResponse.
    max_response_bytes: int = Field(32 * 2**20, gt=0, validation_alias=_env(
        "max_response_bytes", "REMOTE_INFERENCE_MAX_RESPONSE_BYTES"))
    server_tokens: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        (), validation_alias=_env("server_tokens", "INFERENCE_SERVER_TOKEN"))
    #: Budget for all locally loaded models together; None = half of the machine's RAM (90% of a GPU's memory).
    max_model_memory: int | None = Field(None, gt=0, validation_alias=_env(
        "max_model_memory", "INFERENCE_MAX_MODEL_MEMORY"))
    #: Largest image accepted, in pixels (width x height); guards against decompression bombs.
    max_image_pixels: int = Field(40_000_000, gt=0, validation_alias=_env(
        "max_image_pixels", "INFERENCE_MAX_IMAGE_PIXELS"))
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", validation_alias=_env("device", "INFERENCE_DEVICE"))
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", validation_alias=_env("dtype", "INFERENCE_DTYPE"))

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise InvalidInput(_explain(exc)) from None

    # ------------------------------------------------------------------ parsing (the same for every source)

    @field_validator("remote_enabled", mode="before")
    @classmethod
    def _flag(cls, value: Any) -> bool:
        return parse_flag(value)

    @field_validator("remote_endpoints", "server_tokens", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        return _list(value)

    @field_validator("remote_endpoints")
    @classmethod
    def _urls(cls, endpoints: tuple[str, ...]) -> tuple[str, ...]:
        endpoints = tuple(endpoint.strip() for endpoint in endpoints)
        for endpoint in endpoints:
            parts = urlsplit(endpoint)
            if parts.username or parts.password:
                raise ValueError("must not carry credentials in the URL: put the token in REMOTE_INFERENCE_TOKEN "
                                 "instead")
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{_redact_url(endpoint)!r} is not an http(s) URL: use the full URL of the "
                                 "/inference endpoint, e.g. https://gpu-box:8000/inference")
        return endpoints

    @field_validator("remote_token", mode="before")
    @classmethod
    def _token(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value.strip() or None
        return value

    @field_validator("max_model_memory", "max_response_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_bytes(value) if value.strip() else None
        return value

    @field_validator("device", "dtype", mode="before")
    @classmethod
    def _choice(cls, value: Any) -> Any:
        return (value.strip().lower() or "auto") if isinstance(value, str) else value

    # ------------------------------------------------------------------ other sources

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None = None, /, **overrides: Any) -> Settings:
        """Settings from ``mapping`` (keys as the environment variables), then the environment.

        Args:
            mapping: e.g. ``st.secrets``; a key present there wins over the environment. Other keys are ignored.
            overrides: field values that win over both.
        """
        values = {key: value for key, value in (mapping or {}).items() if key in _VARIABLES}
        return cls(**values, **overrides)

    @classmethod
    def defaults(cls) -> Settings:
        """The defaults alone, read from nowhere (e.g. when the environment itself is not valid)."""
        return cls.model_construct()

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed, validated like any other value."""
        return type(self)(**{**self.model_dump(), **changes})

    # ------------------------------------------------------------------ use

    @property
    def remote_configured(self) -> bool:
        """True when the remote backend is enabled and has an endpoint."""
        return self.remote_enabled and bool(self.remote_endpoints)


#: Field → the variable that sets it (the key in the environment and in st.secrets).
_VARIABLES = {field.validation_alias.choices[1]: name for name, field in Settings.model_fields.items()}
_FIELD_VARIABLES = {name: variable for variable, name in _VARIABLES.items()}
_SECRETS = {"remote_token", "server_tokens"}


def _explain(exc: ValidationError) -> str:
    """A pydantic error as people read it: the variable, what is wrong, never a token."""
    problems = []
    for error in exc.errors():
        where = str(error["loc"][0]) if error["loc"] else ""
        name = _VARIABLES.get(where, where)
        variable = _FIELD_VARIABLES.get(name, name)
        secret = name in _SECRETS
        shown = "" if secret or error["type"] == "value_error" else f"={repr(error.get('input'))[:80]}"
        kind = error["type"]
        if kind in ("float_parsing", "int_parsing", "float_type", "int_type", "int_from_float"):
            reason = "is not a number"
        elif kind == "literal_error":
            reason = f"is not one of {error['ctx']['expected']}"
        elif kind == "greater_than":
            reason = f"must be greater than {error['ctx']['gt']}"
        else:
            reason = error["msg"].removeprefix("Value error, ")
        problems.append(f"{variable}{shown} {reason}")
    return "invalid configuration: " + "; ".join(problems)


def _redact_url(url: str) -> str:
    """The URL without user info or query string (either may hold a secret)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    if parts.scheme:
        return f"{parts.scheme}://{host}{parts.path}"
    return url.split("?")[0].rsplit("@", 1)[-1]


def endpoint_host(url: str) -> str:
    """``"https://gpu-box:8000/inference"`` → ``"gpu-box:8000"``: what we show and log of an endpoint."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else (parts.hostname or "?")
