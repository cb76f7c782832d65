"""Configuration: environment variables, a mapping such as ``st.secrets``, or explicit values, to ``Settings``.

One pydantic-settings model: whichever way a value comes (``REMOTE_INFERENCE_TIMEOUT=30`` in the environment,
the same key in ``.streamlit/secrets.toml``, or ``Settings(remote_timeout=30)``), it goes through the same
validation, and a bad one is an ``InvalidInput`` that names the variable. Tokens are ``SecretStr``: no repr,
log line or error message shows them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .errors import InvalidInput, RemoteNotConfigured

__all__ = ["DEFAULT_ENDPOINT", "PROTOCOLS", "Endpoint", "IceServer", "Settings", "endpoint_host", "parse_bytes", "parse_flag"]

#: What an endpoint speaks: the studio's multipart protocol, the OpenAI-compatible API (vLLM, TGI, SGLang, ...),
#: Hugging Face's (TGI's generate routes and the Inference Endpoints task API, one model per URL), or ``auto``
#: (probed on first use, remembered, and said: ``Model.backend_reason``).
PROTOCOLS = ("studio", "openai", "hf", "auto")
#: The name of the endpoint the ``REMOTE_INFERENCE_*`` variables describe (``backend="remote"``).
DEFAULT_ENDPOINT = "remote"

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


#: A list of strings that may also be written comma-separated, as the environment holds it.
_StringList = Annotated[tuple[str, ...], BeforeValidator(_list)]


def _check_url(url: str, where: str) -> str:
    url = url.strip()
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise ValueError(f"must not carry credentials in the URL: put the token in {where} instead")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{_redact_url(url)!r} is not an http(s) URL: use a full URL such as "
                         "https://gpu-box:8000/inference (studio) or http://vllm-host:8000/v1 (openai)")
    return url


class Endpoint(BaseModel):
    """One remote endpoint: where it is (one URL, or several for failover), what it speaks, its token, and the
    names it serves our models under.

    Example:
        >>> Endpoint(name="vllm", url="http://vllm-host:8000/v1", protocol="openai",
        ...          models={"HuggingFaceTB/SmolLM2-135M-Instruct": "smollm2"})
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    name: str
    # NOTE: left out of the repr: a URL's query may hold a key (what is shown of an endpoint is ``hosts``).
    urls: _StringList = Field(min_length=1, validation_alias=AliasChoices("urls", "url"), repr=False)
    protocol: Literal["studio", "openai", "hf", "auto"] = "studio"
    token: SecretStr | None = None
    #: Our model id → the server's name for it (vLLM's ``--served-model-name``); others keep their id.
    models: tuple[tuple[str, str], ...] = ()

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
            raise ValueError("use up to 64 letters, digits, '-', '_' or '.' (it appears in share links)")
        return name

    @field_validator("urls")
    @classmethod
    def _valid_urls(cls, urls: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_url(url, "the endpoint's token") for url in urls)

    @field_validator("token", mode="before")
    @classmethod
    def _blank_token(cls, value: Any) -> Any:
        return (value.strip() or None) if isinstance(value, str) else value

    @field_validator("models", mode="before")
    @classmethod
    def _model_names(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return tuple((str(ours), str(theirs)) for ours, theirs in value.items())
        return value

    def served_name(self, model_id: str) -> str:
        """The name the endpoint serves ``model_id`` under."""
        return dict(self.models).get(model_id, model_id)

    @property
    def hosts(self) -> tuple[str, ...]:
        """What may be shown of the endpoint: host:port of each URL (never a path, query or token)."""
        return tuple(endpoint_host(url) for url in self.urls)

    @property
    def url_setting(self) -> str:
        """Where a user sets the URL, for error messages."""
        return "REMOTE_INFERENCE_ENDPOINT" if self.name == DEFAULT_ENDPOINT else f"endpoints.{self.name}.url"

    @property
    def token_setting(self) -> str:
        """Where a user sets the token, for error messages."""
        return "REMOTE_INFERENCE_TOKEN" if self.name == DEFAULT_ENDPOINT else f"endpoints.{self.name}.token"


def _endpoints(value: Any) -> Any:
    """``INFERENCE_ENDPOINTS`` (JSON) or ``[endpoints.NAME]`` tables (a mapping) to a tuple of ``Endpoint``."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError('is not JSON: write {"NAME": {"url": "...", "protocol": "openai", "token": "..."}}') \
                from None
    if isinstance(value, Mapping):
        value = [{"name": name, **fields} if isinstance(fields, Mapping) else fields for name, fields in value.items()]
    if not isinstance(value, (list, tuple)):
        raise ValueError("must be a table per endpoint: [endpoints.NAME] with url, protocol, token and models")
    endpoints = []
    for fields in value:
        if isinstance(fields, Endpoint):
            endpoints.append(fields)
            continue
        if not isinstance(fields, Mapping):
            raise ValueError("must be a table per endpoint: [endpoints.NAME] with url, protocol, token and models")
        name = str(fields.get("name", "?"))[:40]
        try:
            endpoints.append(Endpoint(**fields))
        except ValidationError as exc:  # named by endpoint and field; a token's value never shown
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc'] if not isinstance(part, int)) or 'endpoint'}: "
                f"{error['msg'].removeprefix('Value error, ')}" for error in exc.errors())
            raise ValueError(f"endpoint {name!r}: {problems}") from None
    return tuple(endpoints)


class IceServer(BaseModel):
    """A STUN or TURN server for the Live camera's WebRTC connection (the browser's ``RTCIceServer``).

    Example:
        >>> IceServer(urls="turn:turn.example.org:3478", username="studio", credential="...")
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    # ``url`` is the older spelling some providers' JSON still carries (Twilio's tokens).
    urls: _StringList = Field(min_length=1, validation_alias=AliasChoices("urls", "url"))
    username: str | None = None
    credential: SecretStr | None = None
    credentialType: Literal["password"] | None = Field(None, exclude=True)  # noqa: N815 (the browser's name)

    @field_validator("urls")
    @classmethod
    def _ice_urls(cls, urls: tuple[str, ...]) -> tuple[str, ...]:
        for url in urls:
            if url.split(":", 1)[0] not in ("stun", "stuns", "turn", "turns"):
                raise ValueError(f"{_redact_url(url)[:60]!r} is not a stun:, stuns:, turn: or turns: URL")
        return urls

    @model_validator(mode="after")
    def _turn_needs_credentials(self) -> IceServer:
        if any(url.startswith(("turn:", "turns:")) for url in self.urls) and \
                (self.username is None or self.credential is None):
            raise ValueError("a turn: server needs a username and a credential (browsers refuse it without)")
        return self

    def browser(self) -> dict[str, Any]:
        """As ``RTCPeerConnection`` takes it (a TURN credential has to reach the browser to be used)."""
        server: dict[str, Any] = {"urls": list(self.urls)}
        if self.username is not None:
            server["username"] = self.username
        if self.credential is not None:
            server["credential"] = self.credential.get_secret_value()
        return server


def _ice_servers(value: Any) -> Any:
    """``INFERENCE_ICE_SERVERS``: comma-separated URLs, JSON (a list of URLs or of {urls, username, credential}) or
    the same as a TOML list in secrets.toml."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        text = value.strip()
        try:
            value = json.loads(text) if text.startswith(("[", "{")) else _list(text)
        except ValueError:
            raise ValueError('is not JSON: write stun:host:3478 or [{"urls": "turn:host:3478", "username": "...", '
                             '"credential": "..."}]') from None
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ValueError("must be a list of stun:/turn: URLs or of {urls, username, credential} tables")
    return tuple({"urls": item} if isinstance(item, str) else item for item in value)


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
    #: Largest video accepted (file size) and its longest length, in seconds (detection on video).
    max_video_bytes: int = Field(200 * 2**20, gt=0, validation_alias=_env(
        "max_video_bytes", "INFERENCE_MAX_VIDEO_BYTES"))
    max_video_seconds: float = Field(600.0, gt=0, validation_alias=_env(
        "max_video_seconds", "INFERENCE_MAX_VIDEO_SECONDS"))
    #: STUN/TURN servers for the Live camera's WebRTC connection. None by default: one machine and a LAN need none,
    #: and no outside server learns of the stream.
    ice_servers: Annotated[tuple[IceServer, ...], NoDecode] = Field(
        (), validation_alias=_env("ice_servers", "INFERENCE_ICE_SERVERS"))
    #: Named endpoints besides the default one: ``[endpoints.NAME]`` tables in secrets.toml, or JSON in the variable.
    endpoints: Annotated[tuple[Endpoint, ...], NoDecode] = Field(
        (), validation_alias=_env("endpoints", "INFERENCE_ENDPOINTS"))

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
        return tuple(_check_url(endpoint, "REMOTE_INFERENCE_TOKEN") for endpoint in endpoints)

    @field_validator("endpoints", mode="before")
    @classmethod
    def _endpoint_tables(cls, value: Any) -> Any:
        return _endpoints(value)

    @field_validator("ice_servers", mode="before")
    @classmethod
    def _ice_list(cls, value: Any) -> Any:
        return _ice_servers(value)

    @field_validator("endpoints")
    @classmethod
    def _unique_names(cls, endpoints: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
        names = [endpoint.name for endpoint in endpoints]
        for reserved, meaning in ((DEFAULT_ENDPOINT, "the REMOTE_INFERENCE_* one"), ("local", "this machine"),
                                  ("auto", "the backend-selection rule")):
            if reserved in names:
                raise ValueError(f"names an endpoint {reserved!r}, which is {meaning}: pick another name")
        if len(set(names)) != len(names):
            raise ValueError("names an endpoint twice")
        return endpoints

    @field_validator("remote_token", mode="before")
    @classmethod
    def _token(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value.strip() or None
        return value

    @field_validator("max_model_memory", "max_response_bytes", "max_video_bytes", mode="before")
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
        values = {key: value for key, value in (mapping or {}).items() if key in _VARIABLES or key == "endpoints"}
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

    @property
    def default_endpoint(self) -> Endpoint | None:
        """The endpoint of the ``REMOTE_INFERENCE_*`` variables (the studio protocol), when they name a URL."""
        if not self.remote_endpoints:
            return None
        return Endpoint(name=DEFAULT_ENDPOINT, urls=self.remote_endpoints, protocol="studio", token=self.remote_token)

    def all_endpoints(self) -> tuple[Endpoint, ...]:
        """The endpoints a user may pick: the default one (when remote inference is configured), then the named ones."""
        default = self.default_endpoint if self.remote_configured else None
        return ((default,) if default else ()) + self.endpoints

    def endpoint(self, name: str) -> Endpoint:
        """The endpoint called ``name`` (``"remote"``: the ``REMOTE_INFERENCE_*`` one).

        Raises:
            RemoteNotConfigured: no such endpoint; the message says what to set, or lists the configured ones.
        """
        if name == DEFAULT_ENDPOINT:
            if self.default_endpoint is None:
                raise RemoteNotConfigured("no remote endpoint configured: set REMOTE_INFERENCE_ENDPOINT")
            return self.default_endpoint
        for endpoint in self.endpoints:
            if endpoint.name == name:
                return endpoint
        known = ", ".join(endpoint.name for endpoint in self.all_endpoints()) or "none"
        raise RemoteNotConfigured(f"no endpoint named {name!r} is configured (configured: {known}): add an "
                                  f"[endpoints.{name}] table to .streamlit/secrets.toml or INFERENCE_ENDPOINTS")


#: Field → the variable that sets it (the key in the environment and in st.secrets).
_VARIABLES = {field.validation_alias.choices[1]: name for name, field in Settings.model_fields.items()}
_FIELD_VARIABLES = {name: variable for variable, name in _VARIABLES.items()}
_SECRETS = {"remote_token", "server_tokens", "endpoints", "ice_servers"}


def _explain(exc: ValidationError) -> str:
    """A pydantic error as people read it: the variable, what is wrong, never a token."""
    problems = []
    for error in exc.errors():
        where = str(error["loc"][0]) if error["loc"] else ""
        name = _VARIABLES.get(where, where)
        variable = _FIELD_VARIABLES.get(name, name)
        inner = ".".join(str(part) for part in error["loc"][1:] if not isinstance(part, int))
        if inner:  # a key inside a table (an ICE server's), named
            variable = f"{variable} ({inner})"
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
