"""The OpenAI-compatible API, both ways: the reference server driven by the ``openai`` SDK, and our OpenAI backend
(``[endpoints.NAME] protocol = "openai"``) against that server. Greedy answers equal the local model's."""

from __future__ import annotations

import base64
import io
import re

import openai
import pytest

from conftest import TOKEN, serve, served_demo_models, wait_loaded
from inference import InvalidInput, ModelLoadError, Settings, UnsupportedTask, load_model
from inference.server import create_app

QUESTION = "Say something about the sea"


@pytest.fixture(scope="module")
def v1_url(demo_dir):
    app = create_app(served_demo_models(demo_dir), settings=Settings(server_tokens=(TOKEN,)), concurrency=2)
    with serve(app) as url:
        wait_loaded(url, 4)
        yield f"{url}/v1"


@pytest.fixture(scope="module")
def sdk(v1_url):
    client = openai.OpenAI(base_url=v1_url, api_key=TOKEN, max_retries=0, timeout=30)
    yield client
    client.close()


@pytest.fixture(scope="module")
def local_tg(demo_dir, session_engine):
    return load_model(demo_dir["text-generation"], task="text-generation", backend="local", engine=session_engine)


def _data_uri(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# --------------------------------------------------------------------------- the server, with the openai SDK


def test_chat_completion_equals_the_local_model(sdk, local_tg):
    expected = local_tg(QUESTION, max_new_tokens=8)
    answer = sdk.chat.completions.create(model="tg", messages=[{"role": "user", "content": QUESTION}],
                                         max_tokens=8, temperature=0)
    assert answer.choices[0].message.content == expected.text
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage.completion_tokens == expected.details["generated_tokens"]
    assert answer.usage.prompt_tokens == expected.details["prompt_tokens"]


def test_streamed_chat_completion_adds_up_to_the_same_answer(sdk, local_tg):
    expected = local_tg(QUESTION, max_new_tokens=8)
    stream = sdk.chat.completions.create(model="tg", messages=[{"role": "user", "content": QUESTION}],
                                         max_tokens=8, temperature=0, stream=True,
                                         stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == expected.text
    assert chunks[-1].usage.completion_tokens == expected.details["generated_tokens"]


def test_a_conversation_goes_through_the_chat_template(sdk, demo_dir, session_engine):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"}, {"role": "user", "content": QUESTION}]
    answer = sdk.chat.completions.create(model="tg", messages=messages, max_tokens=6, temperature=0)
    single = sdk.chat.completions.create(model="tg", messages=messages[-1:], max_tokens=6, temperature=0)
    assert answer.usage.prompt_tokens > single.usage.prompt_tokens  # the whole conversation was the prompt


def test_completion_is_the_raw_prompt(sdk, local_tg):
    expected = local_tg("Once upon a time", max_new_tokens=6, use_chat_template=False)
    answer = sdk.completions.create(model="tg", prompt="Once upon a time", max_tokens=6, temperature=0)
    assert answer.choices[0].text == expected.text
    streamed = "".join(chunk.choices[0].text for chunk in sdk.completions.create(
        model="tg", prompt="Once upon a time", max_tokens=6, temperature=0, stream=True) if chunk.choices)
    assert streamed == expected.text


def test_models_are_listed(sdk):
    assert {model.id for model in sdk.models.list()} == {"tg", "cap", "vlm", "det"}


def test_an_image_goes_to_a_vision_model_and_is_refused_by_a_text_model(sdk, photo, demo_dir, session_engine):
    local = load_model(demo_dir["image-text-to-text"], task="image-text-to-text", backend="local",
                       engine=session_engine)
    expected = local(photo, prompt="What is this?", max_new_tokens=6)
    content = [{"type": "image_url", "image_url": {"url": _data_uri(photo)}}, {"type": "text", "text": "What is this?"}]
    answer = sdk.chat.completions.create(model="vlm", messages=[{"role": "user", "content": content}],
                                         max_tokens=6, temperature=0)
    assert answer.choices[0].message.content == expected.text
    with pytest.raises(openai.UnprocessableEntityError, match="takes no images"):
        sdk.chat.completions.create(model="tg", messages=[{"role": "user", "content": content}], max_tokens=4)


@pytest.mark.parametrize(("call", "error", "says"), [
    (dict(model="nope", messages=[{"role": "user", "content": "hi"}]), openai.NotFoundError, "not served here"),
    (dict(model="tg", messages=[{"role": "user", "content": "hi"}], temperature=9), openai.UnprocessableEntityError,
     "temperature"),
    (dict(model="tg", messages=[{"role": "user", "content": "hi"}], n=2), openai.UnprocessableEntityError, "n=2"),
    (dict(model="tg", messages=[{"role": "assistant", "content": "hi"}]), openai.UnprocessableEntityError,
     "last message"),
    (dict(model="det", messages=[{"role": "user", "content": "hi"}]), openai.UnprocessableEntityError,
     "object-detection"),
    (dict(model="tg", messages=[]), openai.UnprocessableEntityError, "messages"),
])
def test_bad_requests_are_openai_errors_that_say_what_is_wrong(sdk, call, error, says):
    with pytest.raises(error, match=says):
        sdk.chat.completions.create(max_tokens=4, **call)


def test_the_token_is_required(v1_url):
    with openai.OpenAI(base_url=v1_url, api_key="wrong", max_retries=0) as client, \
            pytest.raises(openai.AuthenticationError):
        client.models.list()


# --------------------------------------------------------------------------- our OpenAI backend


@pytest.fixture(scope="module")
def oai_settings(v1_url) -> Settings:
    return Settings(endpoints={"oai": {"url": v1_url, "protocol": "openai", "token": TOKEN,
                                       "models": {"my-org/tiny-llm": "tg"}}})


def test_our_openai_backend_equals_the_local_model(oai_settings, local_tg, session_engine):
    remote = load_model("my-org/tiny-llm", task="text-generation", backend="oai", settings=oai_settings,
                        engine=session_engine)
    expected = local_tg(QUESTION, max_new_tokens=8)
    answer = remote(QUESTION, max_new_tokens=8)
    assert answer.text == expected.text and answer.source == "remote"
    assert answer.details["generated_tokens"] == expected.details["generated_tokens"]
    assert answer.timings.tokens_per_s and answer.timings.server_ms is not None  # our server sends Server-Timing
    stream = remote.stream(QUESTION, max_new_tokens=8)
    assert "".join(stream) == expected.text
    assert stream.result.timings.ttft_ms is not None and stream.result.details["finish_reason"] in ("stop", "length")
    raw = remote("Once upon a time", max_new_tokens=6, use_chat_template=False)
    assert raw.text == local_tg("Once upon a time", max_new_tokens=6, use_chat_template=False).text


def test_our_openai_backend_reports_what_the_server_refused(oai_settings, session_engine, photo):
    unknown = load_model("nope", task="text-generation", backend="oai", settings=oai_settings, engine=session_engine)
    with pytest.raises(ModelLoadError, match="does not serve this model") as refused:
        unknown("hi", max_new_tokens=2)
    assert TOKEN not in str(refused.value)
    text_only = load_model("my-org/tiny-llm", task="text-generation", backend="oai", settings=oai_settings,
                           engine=session_engine)
    with pytest.raises(InvalidInput, match="takes no images"):
        text_only("What is this?", image=photo, max_new_tokens=2)
    with pytest.raises(UnsupportedTask, match="OpenAI API"):
        load_model("det", task="object-detection", backend="oai", settings=oai_settings, engine=session_engine)
    vision = load_model("vlm", task="image-text-to-text", backend="oai", settings=oai_settings, engine=session_engine)
    assert isinstance(vision(photo, prompt="What is this?", max_new_tokens=4).text, str)


# --------------------------------------------------------------------------- what other OpenAI servers may send


def _fault_settings(server) -> Settings:
    return Settings(remote_timeout=10, endpoints={"oai": {"url": f"http://127.0.0.1:{server.server_address[1]}/v1",
                                                          "protocol": "openai", "token": TOKEN}})


CHUNK = b'data: {"choices": [{"index": 0, "delta": {"content": "Par"}, "finish_reason": null}]}\n\n'


@pytest.mark.parametrize(("answer", "error", "says"), [
    # a stream cut short: no [DONE]
    ((200, {"Content-Type": "text/event-stream"}, CHUNK), "BadResponse", "without [DONE]"),
    # vLLM's flat error body
    ((404, {"Content-Type": "application/json"},
      b'{"object": "error", "message": "The model `m` does not exist.", "type": "NotFoundError", "code": 404}'),
     "ModelLoadError", "The model `m` does not exist"),
    # OpenAI's error body, code null
    ((400, {"Content-Type": "application/json"},
      b'{"error": {"message": "max_tokens is too large", "type": "invalid_request_error", "code": null}}'),
     "InvalidInput", "max_tokens is too large"),
    # something that is not an OpenAI server at all
    ((200, {"Content-Type": "application/json"}, b'{"generated_text": "hi"}'), "BadResponse", "not an OpenAI"),
])
def test_what_other_servers_send_is_a_typed_error_naming_the_endpoint(answer, error, says, session_engine):
    import inference
    from test_remote_faults import fault_server

    with fault_server([answer]) as server:
        model = load_model("m", task="text-generation", backend="oai", settings=_fault_settings(server),
                           engine=session_engine)
        with pytest.raises(getattr(inference, error), match=re.escape(says)) as raised:
            if "event-stream" in answer[1]["Content-Type"]:
                "".join(model.stream("hi", max_new_tokens=4))
            else:
                model("hi", max_new_tokens=4)
    assert f"127.0.0.1:{server.server_address[1]}" in str(raised.value) and TOKEN not in str(raised.value)


def test_an_answer_without_usage_is_still_a_result(session_engine):
    from test_remote_faults import fault_server

    body = b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris"}, "finish_reason": "stop"}]}'
    with fault_server([(200, {"Content-Type": "application/json"}, body)]) as server:
        model = load_model("m", task="text-generation", backend="oai", settings=_fault_settings(server),
                           engine=session_engine)
        result = model("hi", max_new_tokens=4)
    assert result.text == "Paris" and result.details["finish_reason"] == "stop"
    assert "generated_tokens" not in result.details and result.timings.tokens is None  # not guessed


# --------------------------------------------------------------------------- what a client may cost, and refusals


@pytest.fixture(scope="module")
def strict_template_url(demo_dir, tmp_path_factory):
    """The demo text model with a chat template that refuses a system role (as Gemma's does)."""
    import shutil

    path = tmp_path_factory.mktemp("strict") / "tg"
    shutil.copytree(demo_dir["text-generation"], path)
    original = (path / "chat_template.jinja").read_text()
    (path / "chat_template.jinja").write_text(
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        + original)
    with serve(create_app({"strict": str(path)}, settings=Settings(server_tokens=(TOKEN,)))) as url:
        wait_loaded(url, 1)
        yield f"{url}/v1"


def test_a_conversation_the_template_refuses_is_422_not_500(strict_template_url):
    with openai.OpenAI(base_url=strict_template_url, api_key=TOKEN, max_retries=0) as client:
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
        for stream in (False, True):
            with pytest.raises(openai.UnprocessableEntityError, match="System role not supported"):
                result = client.chat.completions.create(model="strict", messages=messages, max_tokens=2, stream=stream)
                if stream:
                    list(result)
        answer = client.chat.completions.create(model="strict", messages=messages[1:], max_tokens=2)
        assert answer.choices[0].message.content is not None  # the server is fine


@pytest.mark.parametrize(("extra", "says"), [
    ({"stop": ["\n"]}, "does not support stop"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "does not support tools"),
    ({"response_format": {"type": "json_object"}}, "does not support response_format"),
])
def test_openai_parameters_this_server_cannot_honour_are_refused(sdk, extra, says):
    with pytest.raises(openai.UnprocessableEntityError, match=says):
        sdk.chat.completions.create(model="tg", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                    extra_body=extra)


def test_text_bodies_are_bounded(v1_url):
    import httpx

    big = {"model": "tg", "prompt": "a" * (3 * 2**20), "max_tokens": 2}
    response = httpx.post(f"{v1_url}/completions", json=big, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert response.status_code == 413 and "larger than 2 MB" in response.json()["error"]["message"]
    many = {"model": "tg", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}] * 100}]}
    response = httpx.post(f"{v1_url}/chat/completions", json=many, headers={"Authorization": f"Bearer {TOKEN}"},
                          timeout=30)
    assert response.status_code == 422 and "content" in response.json()["error"]["message"]
