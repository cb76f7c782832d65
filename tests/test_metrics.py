"""Prometheus metrics at /metrics: they parse, need the token, and count what was sent."""

from __future__ import annotations

import io
import json

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def url(server_url):
    """The session's reference server (conftest's ``server_url``: the four demo models, token-protected)."""
    return server_url


def _samples(base: str) -> dict[str, list]:
    response = httpx.get(f"{base}/metrics", headers=AUTH, timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    families = {}
    for family in text_string_to_metric_families(response.text):
        families.setdefault(family.name, []).extend(family.samples)
    return families


def _count(samples, **labels) -> float:
    return sum(sample.value for sample in samples["inference_studio_requests"]
               if sample.name == "inference_studio_requests_total"
               and all(sample.labels.get(key) == value for key, value in labels.items()))


def test_metrics_parse_and_count_what_was_sent(url, photo):
    before = _samples(url)
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    spec = json.dumps({"model_id": "det", "task": "object-detection", "payload": {}})
    for _ in range(3):
        response = httpx.post(f"{url}/inference", files={"spec": (None, spec, "application/json"),
                                                         "image": ("x.png", buffer.getvalue(), "image/png")},
                              headers=AUTH, timeout=30)
        assert response.status_code == 200
    unknown = json.dumps({"model_id": "zzz-random-name", "task": "text-generation", "payload": {"inputs": "hi"}})
    assert httpx.post(f"{url}/inference", files={"spec": (None, unknown, "application/json")}, headers=AUTH,
                      timeout=30).status_code == 404
    chat = {"model": "tg", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert httpx.post(f"{url}/v1/chat/completions", json=chat, headers=AUTH, timeout=30).status_code == 200
    assert httpx.post(f"{url}/v1/chat/completions", json={**chat, "model": "nope"}, headers=AUTH,
                      timeout=30).status_code == 404
    after = _samples(url)
    assert _count(after, model="det", task="object-detection", route="/inference", status="200") - _count(
        before, model="det", task="object-detection", route="/inference", status="200") == 3
    assert _count(after, model="tg", route="/v1/chat/completions", status="200") - _count(
        before, model="tg", route="/v1/chat/completions", status="200") == 1
    assert _count(after, route="/v1/chat/completions", status="404") - _count(
        before, route="/v1/chat/completions", status="404") == 1
    # what a client names is no label: an unknown model is "other", however many names are sent
    assert not [s for s in after["inference_studio_requests"] if s.labels.get("model") in ("nope", "zzz-random-name")]
    assert _count(after, model="other", route="/inference", status="404") >= 1
    inference = {sample.labels["model"]: sample.value for sample in after["inference_studio_request_inference_duration_seconds"]
                 if sample.name.endswith("_count")}
    assert inference["det"] >= 3 and inference["tg"] >= 1
    states = {(s.labels["model"], s.labels["state"]): s.value for s in after["inference_studio_model_state"]}
    assert states[("det", "loaded")] == 1.0 and states[("det", "error")] == 0.0
    assert {s.labels["model"] for s in after["inference_studio_requests_running"]} == {"tg", "cap", "vlm", "det"}
    assert all(s.value >= 0 for s in after["inference_studio_model_load_duration_seconds"])


def test_metrics_need_the_token_and_never_hold_it(url):
    assert httpx.get(f"{url}/metrics", timeout=10).status_code == 401
    response = httpx.get(f"{url}/metrics", headers=AUTH, timeout=10)
    assert TOKEN not in response.text and "/nothing/here" not in response.text
    httpx.get(f"{url}/nothing/here", headers=AUTH, timeout=10)  # a client's path is no label value
    assert "/nothing/here" not in httpx.get(f"{url}/metrics", headers=AUTH, timeout=10).text
