"""Every error code of wire.ERRORS through a gateway: the upstream's code, status and Retry-After reach the
caller unchanged, except the answers that are about the gateway's own link to its upstream (502)."""

from __future__ import annotations

import json

import httpx
import pytest

from conftest import TOKEN, serve
from inference import Settings
from inference.errors import InferenceError
from inference.server import create_app
from inference.wire import ERRORS, code_of_answer, code_of_error
from test_remote_faults import fault_server

#: What a gateway answers instead, for the upstream answers about its own link (token, URL) or the upstream's bug.
GATEWAY_OWN = {"unauthorized": "upstream_error", "not_found": "upstream_error", "method_not_allowed": "upstream_error",
               "internal_error": "upstream_error"}


@pytest.mark.parametrize("code", sorted(ERRORS))
def test_every_code_passes_through_a_gateway(code):
    status = ERRORS[code].status
    headers = {"Content-Type": "application/json", "Retry-After": "0"}
    body = json.dumps({"error": {"code": code, "message": f"upstream says {code}"}}).encode()
    with fault_server([(status, headers, body)]) as upstream:
        settings = Settings(remote_enabled=True, remote_token=TOKEN, remote_timeout=10,
                            remote_endpoints=(f"http://127.0.0.1:{upstream.server_address[1]}/inference",))
        with serve(create_app({}, settings=settings, preload=False)) as gateway:
            spec = json.dumps({"model_id": "m", "task": "text-generation", "payload": {"inputs": "hi"}})
            response = httpx.post(f"{gateway}/inference", files={"spec": (None, spec, "application/json")},
                                  data={"use_remote": "true"}, timeout=30)
    expected = GATEWAY_OWN.get(code, code)
    assert response.json()["error"]["code"] == expected, response.text
    assert response.status_code == ERRORS[expected].status
    if code not in GATEWAY_OWN:
        assert f"upstream says {code}" in response.json()["error"]["message"]
        if ERRORS[code].retry:
            assert response.headers.get("Retry-After") == "0"
    assert TOKEN not in response.text


@pytest.mark.parametrize("code", sorted(ERRORS))
def test_the_table_maps_each_code_both_ways(code):
    entry = ERRORS[code]
    assert code_of_answer(entry.status, code) == code  # a client reads the code the server wrote
    error = entry.exception("x", code=code)
    assert isinstance(error, InferenceError)
    assert code_of_error(error) == GATEWAY_OWN.get(code, code)  # and a server writes it back


def test_an_unknown_code_falls_back_to_its_status():
    assert code_of_answer(503, "something_new") == "busy"
    assert code_of_answer(404, "busy") == "model_not_found"  # a known code with the wrong status is not trusted
    assert code_of_answer(418, None) is None


def test_a_blank_model_id_is_refused_by_the_gateway_not_forwarded():
    with fault_server([]) as upstream:  # answers nothing: a request that reached it would fail differently
        settings = Settings(remote_enabled=True, remote_token=TOKEN, remote_timeout=10,
                            remote_endpoints=(f"http://127.0.0.1:{upstream.server_address[1]}/inference",))
        with serve(create_app({}, settings=settings, preload=False)) as gateway:
            spec = json.dumps({"model_id": "   ", "task": "text-generation", "payload": {"inputs": "hi"}})
            response = httpx.post(f"{gateway}/inference", files={"spec": (None, spec, "application/json")},
                                  data={"use_remote": "true"}, timeout=30)
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_input"
    assert "model_id is empty" in response.json()["error"]["message"]
