"""Our OpenAI backend against vLLM's own OpenAI server, and parity: vLLM's greedy answers equal local transformers'
for the same weights (the bundled SmolLM2), through ``inference.compare``."""

from __future__ import annotations

import pytest

from .conftest import SERVED_NAME, VLLM_TOKEN
from inference import AuthenticationError, InvalidInput, ModelLoadError, Settings, load_model
from inference.bundled import BUNDLED_SMOLLM2
from inference.compare import run_both, text_parity

PROMPTS = ["What is the capital of France?", "Name three colours of the rainbow.", "Write one sentence about the sea."]


@pytest.fixture(scope="module")
def settings(vllm_url) -> Settings:
    return Settings(remote_timeout=60, endpoints={
        "vllm": {"url": vllm_url, "protocol": "openai", "token": VLLM_TOKEN, "models": {BUNDLED_SMOLLM2: SERVED_NAME}},
        "vllm-auto": {"url": vllm_url, "protocol": "auto", "token": VLLM_TOKEN,
                      "models": {BUNDLED_SMOLLM2: SERVED_NAME}},
        "vllm-badtoken": {"url": vllm_url, "protocol": "openai", "token": "wrong-token-0000",
                          "models": {BUNDLED_SMOLLM2: SERVED_NAME}},
    })


@pytest.fixture(scope="module")
def local(bundled_dir, session_engine):
    return load_model(BUNDLED_SMOLLM2, task="text-generation", backend="local", engine=session_engine)


@pytest.fixture(scope="module")
def vllm(settings, session_engine):
    return load_model(BUNDLED_SMOLLM2, task="text-generation", backend="vllm", settings=settings, engine=session_engine)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_vllm_and_local_transformers_give_the_same_greedy_answer(local, vllm, prompt):
    outcomes = run_both({"local": lambda: local(prompt, max_new_tokens=24),
                         "vllm": lambda: vllm(prompt, max_new_tokens=24)})
    assert outcomes["local"].ok and outcomes["vllm"].ok, (outcomes["local"].error, outcomes["vllm"].error)
    parity = text_parity(outcomes["local"].result.text, outcomes["vllm"].result.text)
    assert parity.equal, parity.ops
    assert outcomes["vllm"].result.details["generated_tokens"] == outcomes["local"].result.details["generated_tokens"]


def test_the_capital_of_france(vllm):
    assert "Paris" in vllm(PROMPTS[0], max_new_tokens=16).text


def test_streamed_raw_and_usage_from_vllm(local, vllm):
    expected = local(PROMPTS[0], max_new_tokens=16)
    stream = vllm.stream(PROMPTS[0], max_new_tokens=16)
    assert "".join(stream) == expected.text
    result = stream.result
    assert result.timings.ttft_ms is not None and result.timings.ttft_ms <= result.timings.total_ms
    assert result.details["generated_tokens"] == expected.details["generated_tokens"]
    assert result.details["prompt_tokens"] == expected.details["prompt_tokens"]  # the same chat template
    raw = vllm("Once upon a time", max_new_tokens=12, use_chat_template=False).text  # /v1/completions
    assert raw == local("Once upon a time", max_new_tokens=12, use_chat_template=False).text


def test_vllm_errors_are_typed_and_name_the_endpoint(settings, vllm, session_engine):
    unknown = load_model("nope", task="text-generation", backend="vllm", settings=settings, engine=session_engine)
    with pytest.raises(ModelLoadError, match="does not serve this model"):
        unknown("hi", max_new_tokens=2)
    with pytest.raises(InvalidInput, match="max_model_len"):
        vllm("hi", max_new_tokens=2000)
    wrong = load_model(BUNDLED_SMOLLM2, task="text-generation", backend="vllm-badtoken", settings=settings,
                       engine=session_engine)
    with pytest.raises(AuthenticationError) as refused:
        wrong("hi", max_new_tokens=2)
    assert "wrong-token-0000" not in str(refused.value) and VLLM_TOKEN not in str(refused.value)


def test_auto_finds_that_vllm_speaks_openai(settings, session_engine):
    model = load_model(BUNDLED_SMOLLM2, task="text-generation", backend="vllm-auto", settings=settings,
                       engine=session_engine)
    assert model.backend_reason == "endpoint 'vllm-auto' speaks the openai protocol (found by probing)"
