"""The app's Compare in Chromium: local transformers against vLLM on the real bundled SmolLM2, "identical"."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest

from .conftest import SERVED_NAME, VLLM_TOKEN

test_browser = pytest.importorskip("test_browser")  # skips without Chromium, as the browser tests do


def test_compare_local_against_vllm_in_the_browser(vllm_url, bundled_dir):
    from inference.bundled import BUNDLED_SMOLLM2

    endpoints = {"vllm": {"url": vllm_url, "protocol": "openai", "token": VLLM_TOKEN,
                          "models": {BUNDLED_SMOLLM2: SERVED_NAME}}}
    query = urlencode({"mode": "compare", "columns": "local,vllm", "model": BUNDLED_SMOLLM2,
                       "prompt": "What is the capital of France?", "max_new_tokens": 24})
    env = {"INFERENCE_ENDPOINTS": json.dumps(endpoints), "INFERENCE_OFFLINE_MODELS": "bundled"}
    with test_browser.fresh_server(env) as url:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(test_browser.CHROMIUM), headless=True,
                                                 args=test_browser.CHROMIUM_ARGS)
            page = test_browser._open(browser, f"{url}/text_generation?{query}")
            page.get_by_role("button", name="Generate").wait_for(timeout=120_000)
            try:
                test_browser._run(page, "Generate", "Local and vllm answers are identical.", timeout=120_000)
            except Exception:
                test_browser._shot(page, "compare-vllm-failed")  # what the page showed instead
                raise
            body = page.inner_text("body")
            assert "Paris" in body and VLLM_TOKEN not in body
            assert "vllm · openai · 127.0.0.1:" in body  # the sidebar: name, protocol, host
            test_browser._shot(page, "compare-vllm")
            browser.close()
