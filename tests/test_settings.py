"""Configuration from the environment or a secrets mapping, validated, and never showing a token."""

from __future__ import annotations

import re

import pytest

from inference import InvalidInput, Settings, load_model
from inference.settings import parse_bytes

TOKEN = "sk-test-7f3a9c1e5d"


def test_defaults(monkeypatch):
    settings = Settings()
    assert settings.remote_enabled is False
    assert settings.remote_endpoints == ()
    assert settings.remote_timeout == 120
    assert settings.remote_configured is False
    assert settings.device == "auto" and settings.dtype == "auto"


def test_environment_is_read(monkeypatch):
    monkeypatch.setenv("REMOTE_INFERENCE_ENABLED", "TRUE")
    monkeypatch.setenv("REMOTE_INFERENCE_ENDPOINT", "http://a:8000/inference, http://b:8000/inference")
    monkeypatch.setenv("REMOTE_INFERENCE_TOKEN", TOKEN)
    monkeypatch.setenv("REMOTE_INFERENCE_TIMEOUT", "7.5")
    monkeypatch.setenv("INFERENCE_MAX_MODEL_MEMORY", "512MB")
    settings = Settings()
    assert settings.remote_configured
    assert settings.remote_endpoints == ("http://a:8000/inference", "http://b:8000/inference")
    assert settings.remote_token.get_secret_value() == TOKEN
    assert settings.remote_timeout == 7.5
    assert settings.max_model_memory == 512_000_000


def test_mapping_wins_over_environment(monkeypatch):
    monkeypatch.setenv("REMOTE_INFERENCE_TIMEOUT", "30")
    settings = Settings.from_mapping({"REMOTE_INFERENCE_TIMEOUT": 5, "REMOTE_INFERENCE_ENABLED": True})
    assert settings.remote_timeout == 5 and settings.remote_enabled is True
    assert Settings.from_mapping({}, remote_timeout=9).remote_timeout == 9


def test_token_never_in_repr(monkeypatch):
    settings = Settings(remote_token=TOKEN, server_tokens=(TOKEN,))
    assert TOKEN not in repr(settings) and TOKEN not in str(settings)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("REMOTE_INFERENCE_ENABLED", "maybe", "not a boolean"),  # not a boolean
        ("REMOTE_INFERENCE_TIMEOUT", "0", "greater than 0"),  # zero deadline
        ("REMOTE_INFERENCE_TIMEOUT", "soon", "not a number"),  # not a number
        ("REMOTE_INFERENCE_ENDPOINT", "gpu-box:8000", "not an http(s) URL"),  # no scheme
        ("REMOTE_INFERENCE_ENDPOINT", f"https://user:{TOKEN}@gpu/inference", "must not carry credentials"),  # creds
        ("INFERENCE_MAX_MODEL_MEMORY", "lots", "cannot read"),  # not a size
        ("INFERENCE_DEVICE", "tpu", "not one of"),  # unknown device
    ],
)
def test_bad_configuration_is_explained(monkeypatch, variable, value, message):
    monkeypatch.setenv(variable, value)
    with pytest.raises(InvalidInput) as caught:
        Settings()
    assert message in str(caught.value)
    assert TOKEN not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1024", 1024), ("1.5GiB", 1610612736), ("8 GB", 8 * 10**9), ("512mib", 512 * 2**20)],
)
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"max_image_pixels": 0}, "INFERENCE_MAX_IMAGE_PIXELS=0 must be greater than 0"),  # explicit, not env
        ({"upload_max_edge": -5}, "REMOTE_INFERENCE_MAX_EDGE=-5 must be greater than 0"),
        ({"remote_timeout": "soon"}, "REMOTE_INFERENCE_TIMEOUT='soon' is not a number"),
        ({"remote_enabled": "maybe"}, "REMOTE_INFERENCE_ENABLED is not a boolean"),
        ({"device": "tpu"}, "INFERENCE_DEVICE='tpu' is not one of"),
        ({"max_response_bytes": "lots"}, "cannot read 'lots' as a size"),
        ({"remote_timout": 5}, "remote_timout"),  # a misspelt keyword is an error, not a silent default
    ],
)
def test_explicit_values_are_validated_like_the_environment(values, message):
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(")):
        Settings(**values)


def test_a_secrets_mapping_is_validated_and_never_echoes_a_token():
    with pytest.raises(InvalidInput, match="REMOTE_INFERENCE_MAX_EDGE") as caught:
        Settings.from_mapping({"REMOTE_INFERENCE_MAX_EDGE": 0, "REMOTE_INFERENCE_TOKEN": TOKEN,
                               "endpoints": {"gpu": {"url": "http://x"}}})  # other tables are not ours: ignored
    assert TOKEN not in str(caught.value)
    with pytest.raises(InvalidInput) as caught:
        Settings(remote_endpoints=(f"https://user:{TOKEN}@gpu/inference",), server_tokens=TOKEN)
    assert "must not carry credentials" in str(caught.value) and TOKEN not in str(caught.value)


def test_tokens_are_secrets_everywhere():
    settings = Settings(remote_token=f" {TOKEN} ", server_tokens=f"{TOKEN}, other-token")
    assert settings.remote_token.get_secret_value() == TOKEN
    assert [token.get_secret_value() for token in settings.server_tokens] == [TOKEN, "other-token"]
    assert TOKEN not in repr(settings) and TOKEN not in str(settings) and TOKEN not in str(settings.model_dump())


def test_defaults_read_nothing_and_replace_validates(monkeypatch):
    monkeypatch.setenv("REMOTE_INFERENCE_TIMEOUT", "soon")
    with pytest.raises(InvalidInput):
        Settings()
    assert Settings.defaults().remote_timeout == 120.0  # what the app falls back to when the environment is bad
    monkeypatch.delenv("REMOTE_INFERENCE_TIMEOUT")
    changed = Settings().replace(remote_enabled=True, remote_endpoints=("http://127.0.0.1:9/inference",))
    assert changed.remote_configured and changed == Settings(remote_enabled=True,
                                                             remote_endpoints="http://127.0.0.1:9/inference")
    with pytest.raises(InvalidInput):
        Settings().replace(remote_timeout=0)
    assert hash(changed) == hash(Settings(remote_enabled=True, remote_endpoints="http://127.0.0.1:9/inference"))


# --------------------------------------------------------------------------- named endpoints


def test_named_endpoints_come_from_secrets_tables_or_json_and_hide_their_tokens(monkeypatch):
    tables = {"endpoints": {"vllm": {"url": "http://vllm-host:8000/v1", "protocol": "openai", "token": TOKEN,
                                     "models": {"HuggingFaceTB/SmolLM2-135M-Instruct": "smollm2"}},
                            "gpu-box": {"url": "https://a:8000/inference, https://b:8000/inference"}}}
    settings = Settings.from_mapping(tables)
    vllm, box = settings.endpoints
    assert (vllm.name, vllm.protocol, vllm.hosts) == ("vllm", "openai", ("vllm-host:8000",))
    assert vllm.served_name("HuggingFaceTB/SmolLM2-135M-Instruct") == "smollm2" and vllm.served_name("x") == "x"
    assert box.protocol == "studio" and box.hosts == ("a:8000", "b:8000")
    assert TOKEN not in repr(settings) and TOKEN not in str(settings.model_dump())
    monkeypatch.setenv("INFERENCE_ENDPOINTS", '{"vllm": {"url": "http://vllm-host:8000/v1", "protocol": "openai"}}')
    assert Settings().endpoint("vllm").urls == ("http://vllm-host:8000/v1",)


def test_the_remote_variables_are_the_default_endpoint():
    settings = Settings(remote_enabled=True, remote_endpoints=("http://a:8000/inference",), remote_token=TOKEN)
    (default,) = settings.all_endpoints()
    assert (default.name, default.protocol, default.token_setting) == ("remote", "studio", "REMOTE_INFERENCE_TOKEN")
    assert settings.endpoint("remote") == default


@pytest.mark.parametrize(("tables", "says"), [
    ({"bad name": {"url": "http://x/v1"}}, "endpoint 'bad name': name: use up to 64 letters"),
    ({"x": {"url": "ftp://x"}}, "endpoint 'x': url: 'ftp://x' is not an http(s) URL"),
    ({"x": {"url": "http://user:pw@x/v1"}}, "must not carry credentials"),
    ({"x": {"url": "http://x/v1", "protocol": "grpc"}}, "protocol: Input should be 'studio', 'openai', 'hf' or 'auto'"),
    ({"x": {"url": "http://x/v1", "tokn": TOKEN}}, "tokn: Extra inputs are not permitted"),
    ({"x": {"protocol": "openai"}}, "endpoint 'x': url"),
    ({"remote": {"url": "http://x/v1"}}, "which is the REMOTE_INFERENCE_* one"),
    ({"local": {"url": "http://x/v1"}}, "which is this machine"),
    ("{not json", "is not JSON"),
])
def test_a_bad_endpoint_says_which_and_what_to_fix(tables, says):
    with pytest.raises(InvalidInput, match=re.escape(says)) as refused:
        Settings(endpoints=tables)
    assert TOKEN not in str(refused.value)


def test_an_unknown_endpoint_name_lists_the_configured_ones():
    settings = Settings(endpoints={"vllm": {"url": "http://x/v1", "protocol": "openai"}})
    with pytest.raises(InvalidInput, match=r"backend 'vlm' is not one of .*configured: vllm"):
        load_model("m", task="text-generation", backend="vlm", settings=settings)


def test_video_limits_and_ice_servers(monkeypatch):
    settings = Settings(max_video_bytes="50MB", max_video_seconds="30")
    assert (settings.max_video_bytes, settings.max_video_seconds) == (50_000_000, 30.0)
    assert Settings().ice_servers == ()  # none by default: no outside server learns of a stream
    monkeypatch.setenv("INFERENCE_ICE_SERVERS", "stun:stun.example.org:3478, stun:stun2.example.org:3478")
    assert [server.urls for server in Settings().ice_servers] == [("stun:stun.example.org:3478",),
                                                                  ("stun:stun2.example.org:3478",)]
    secret = "turn-password-123"
    monkeypatch.setenv("INFERENCE_ICE_SERVERS",
                       f'[{{"urls": ["turn:turn.example.org:3478"], "username": "studio", "credential": "{secret}"}}]')
    (server,) = Settings().ice_servers
    assert secret not in repr(Settings()) and secret not in repr(server)
    assert server.browser() == {"urls": ["turn:turn.example.org:3478"], "username": "studio", "credential": secret}
    # secrets.toml's tables work as well.
    (table,) = Settings.from_mapping({"INFERENCE_ICE_SERVERS": [
        {"url": "turns:turn.example.org:5349", "username": "u", "credential": "c", "credentialType": "password"}]}
    ).ice_servers  # Twilio's JSON still says "url" and "credentialType"
    assert table.urls == ("turns:turn.example.org:5349",) and "credentialType" not in table.browser()


@pytest.mark.parametrize(("value", "fragment"), [
    ("http://turn.example.org", "is not a stun:, stuns:, turn: or turns: URL"),
    ("https://user:hunter2@turn.example.org", "'https://turn.example.org' is not a stun:"),  # user info redacted
    ("turn:turn.example.org:3478", "a turn: server needs a username and a credential"),
    ('[{"urls": "stun:x", "password": "hunter2"}]', r"INFERENCE_ICE_SERVERS \(password\) Extra inputs"),
    ('[{"urls": "turn:x", "credential": "hunter2"', "is not JSON"),
    ('[{"urls": "turn:x", "credential": "hunter2", "password": "hunter2"}]', "INFERENCE_ICE_SERVERS"),
    ("5", "stun:"),
])
def test_bad_ice_servers_say_what_to_write_and_never_show_a_credential(monkeypatch, value, fragment):
    monkeypatch.setenv("INFERENCE_ICE_SERVERS", value)
    with pytest.raises(InvalidInput, match=fragment) as caught:
        Settings()
    assert "hunter2" not in str(caught.value)


def test_bad_video_limits_name_their_variable(monkeypatch):
    monkeypatch.setenv("INFERENCE_MAX_VIDEO_SECONDS", "0")
    with pytest.raises(InvalidInput, match="INFERENCE_MAX_VIDEO_SECONDS=.0. must be greater than 0"):
        Settings()
    monkeypatch.setenv("INFERENCE_MAX_VIDEO_SECONDS", "60")
    monkeypatch.setenv("INFERENCE_MAX_VIDEO_BYTES", "lots")
    with pytest.raises(InvalidInput, match="INFERENCE_MAX_VIDEO_BYTES"):
        Settings()
