"""Hugging Face's protocol, both ways: the reference server driven by ``huggingface_hub.InferenceClient`` (TGI's
routes and the task API), and our ``hf`` backend against that server. Answers equal the local model's."""

from __future__ import annotations

import io

import numpy as np
import pytest
from huggingface_hub import InferenceClient, constants

from conftest import TOKEN
from inference import InvalidInput, Settings, load_model

PROMPT = "Once upon a time"


@pytest.fixture
def base_url(server_url):
    """The session's reference server (conftest's ``server_url``: the four demo models, token-protected)."""
    return server_url


@pytest.fixture
def online(monkeypatch):
    # NOTE: with HF_HUB_OFFLINE=1, InferenceClient refuses every URL, loopback included; the models are loaded.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture(scope="module")
def local(demo_dir, session_engine):
    return {task: load_model(demo_dir[task], task=task, backend="local", engine=session_engine)
            for task in ("text-generation", "image-to-text", "object-detection")}


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------- the server, with InferenceClient


def test_text_generation_on_tgi_routes_and_the_task_api_equals_the_local_raw_prompt(base_url, online, local):
    expected = local["text-generation"](PROMPT, max_new_tokens=6, use_chat_template=False).text
    for model in (base_url, f"{base_url}/models/tg"):
        client = InferenceClient(model=model, token=TOKEN)
        assert client.text_generation(PROMPT, max_new_tokens=6) == expected
        assert "".join(client.text_generation(PROMPT, max_new_tokens=6, stream=True)) == expected
        detailed = client.text_generation(PROMPT, max_new_tokens=6, details=True)
        assert detailed.generated_text == expected and detailed.details.generated_tokens >= 1
        assert detailed.details.finish_reason in ("length", "eos_token")


def test_object_detection_and_captions_on_the_task_api_equal_the_local_model(base_url, online, local, photo):
    client = InferenceClient(token=TOKEN)
    expected = local["object-detection"](photo, threshold=0.2)
    found = client.object_detection(_png(photo), model=f"{base_url}/models/det", threshold=0.2)  # JSON + base64
    assert [item.label for item in found] == expected.class_names
    boxes = np.array([[item.box.xmin, item.box.ymin, item.box.xmax, item.box.ymax] for item in found])
    np.testing.assert_allclose(boxes, expected.detections.xyxy, atol=0.01)  # the wire carries 2 decimals
    raw = client.object_detection(_png(photo), model=f"{base_url}/models/det")  # the image bytes alone
    assert [item.label for item in raw] == local["object-detection"](photo).class_names
    caption = client.image_to_text(_png(photo), model=f"{base_url}/models/cap")
    assert caption.generated_text == local["image-to-text"](photo).text


def test_chat_completion_through_inference_client(base_url, online, demo_dir, session_engine):
    local = load_model(demo_dir["text-generation"], task="text-generation", backend="local", engine=session_engine)
    expected = local("Say something", max_new_tokens=6).text
    client = InferenceClient(model=base_url, token=TOKEN)  # the server's URL: InferenceClient adds /v1/chat/completions
    answer = client.chat_completion([{"role": "user", "content": "Say something"}], max_tokens=6, temperature=0)
    assert answer.choices[0].message.content == expected
    streamed = client.chat_completion([{"role": "user", "content": "Say something"}], max_tokens=6, temperature=0,
                                      stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices) == expected


@pytest.mark.parametrize(("route", "body", "status", "says"), [
    ("/generate", {"inputs": "hi", "parameters": {"stop": ["\n"]}}, 422, "does not support stop"),
    ("/generate", {"inputs": "hi", "parameters": {"max_new_tokens": 0}}, 422, "max_new_tokens"),
    ("/generate", {"input": "hi"}, 422, "inputs"),
    ("/models/det", {"inputs": "not base64!"}, 422, "base64"),
    ("/models/nope", {"inputs": "hi"}, 404, "not served here"),
])
def test_bad_hf_requests_are_the_protocols_errors(base_url, route, body, status, says):
    import httpx

    response = httpx.post(f"{base_url}{route}", json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert response.status_code == status and says in response.json()["error"]["message"], response.text


def test_hf_routes_need_the_token(base_url):
    import httpx

    assert httpx.post(f"{base_url}/generate", json={"inputs": "hi"}, timeout=30).status_code == 401
    assert httpx.post(f"{base_url}/models/det", content=b"x", timeout=30).status_code == 401


# --------------------------------------------------------------------------- our hf backend


def _settings(base_url: str) -> Settings:
    return Settings(endpoints={name: {"url": f"{base_url}/models/{served}", "protocol": "hf", "token": TOKEN}
                               for name, served in (("tgi", "tg"), ("det", "det"), ("cap", "cap"))})


def test_our_hf_backend_equals_the_local_model(base_url, local, photo, session_engine):
    settings = _settings(base_url)
    gen = load_model("tiny-llm", task="text-generation", backend="tgi", settings=settings, engine=session_engine)
    expected = local["text-generation"](PROMPT, max_new_tokens=6, use_chat_template=False)
    answer = gen(PROMPT, max_new_tokens=6)
    assert answer.text == expected.text and answer.details["finish_reason"] == expected.details["finish_reason"]
    assert answer.timings.server_ms is not None  # our server sends Server-Timing
    stream = gen.stream(PROMPT, max_new_tokens=6)
    assert "".join(stream) == expected.text and stream.result.details["generated_tokens"] >= 1
    with pytest.raises(InvalidInput, match="OpenAI route"):
        gen(PROMPT, use_chat_template=True)

    det = load_model("detector", task="object-detection", backend="det", settings=settings, engine=session_engine)
    found, wanted = det(photo, threshold=0.2), local["object-detection"](photo, threshold=0.2)
    assert found.class_names == wanted.class_names
    np.testing.assert_allclose(found.detections.xyxy, wanted.detections.xyxy, atol=0.01)
    cap = load_model("captioner", task="image-to-text", backend="cap", settings=settings, engine=session_engine)
    assert cap(photo).text == local["image-to-text"](photo).text
    with pytest.raises(InvalidInput, match="takes no prompt"):
        cap(photo, prompt="a photo of")


# --------------------------------------------------------------------------- protocol = "auto"


def test_auto_finds_each_protocol_once_and_says_which(base_url, local, session_engine):
    settings = Settings(endpoints={
        "a-studio": {"url": f"{base_url}/inference", "protocol": "auto", "token": TOKEN,
                     "models": {"tiny-llm": "tg"}},
        "a-openai": {"url": f"{base_url}/v1", "protocol": "auto", "token": TOKEN, "models": {"tiny-llm": "tg"}},
        "a-tgi": {"url": base_url, "protocol": "auto", "token": TOKEN},
        "a-none": {"url": f"{base_url}/nothing/here", "protocol": "auto", "token": TOKEN},
    })
    expected = local["text-generation"](PROMPT, max_new_tokens=4, use_chat_template=False).text
    for name, protocol in (("a-studio", "studio"), ("a-openai", "openai"), ("a-tgi", "hf")):
        model = load_model("tiny-llm", task="text-generation", backend=name, settings=settings, engine=session_engine)
        assert model.backend_reason == f"endpoint {name!r} speaks the {protocol} protocol (found by probing)"
        assert model(PROMPT, max_new_tokens=4, use_chat_template=False).text == expected
        assert session_engine.remote_client(settings, name).protocol == protocol  # remembered
    from inference import BadResponse

    with pytest.raises(BadResponse, match="set its protocol") as refused:
        load_model("tiny-llm", task="text-generation", backend="a-none", settings=settings, engine=session_engine)
    assert TOKEN not in str(refused.value)


def test_a_tgi_stream_cut_before_its_last_event_is_an_error(session_engine):
    from inference import BadResponse
    from test_remote_faults import fault_server

    cut = b'data: {"index": 1, "token": {"id": 5, "text": "Par", "special": false}, "generated_text": null}\n\n'
    with fault_server([(200, {"Content-Type": "text/event-stream"}, cut)]) as server:
        settings = Settings(remote_timeout=10, endpoints={"tgi": {"url": f"http://127.0.0.1:{server.server_address[1]}",
                                                                  "protocol": "hf"}})
        model = load_model("m", task="text-generation", backend="tgi", settings=settings, engine=session_engine)
        with pytest.raises(BadResponse, match="before its last event"):
            "".join(model.stream("hi", max_new_tokens=4))
