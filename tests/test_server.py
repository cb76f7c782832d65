"""The reference server's limits, errors, auth, concurrency and logs, over real HTTP on loopback."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import struct
import threading
import time
import zlib

import httpx
import pytest
import requests
from PIL import Image

from conftest import TOKEN, serve, wait_loaded
from inference import Settings, load_model
from inference.server import create_app, main

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _spec(model_id="det", task="object-detection", inputs=None, **parameters) -> str:
    return json.dumps({"model_id": model_id, "task": task, "payload": {"inputs": inputs, "parameters": parameters}})


def _png(width=64, height=48) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


def _bomb() -> bytes:
    small = _png(1, 1)
    ihdr = b"IHDR" + struct.pack(">II", 60_000, 60_000) + small[24:29]
    return small[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + small[33:]


def _post(url, *, spec=None, image=None, headers=AUTH, **kwargs):
    files = {}
    if spec is not None:
        files["spec"] = (None, spec, "application/json")
    if image is not None:
        files["image"] = ("image.png", image, "image/png")
    return httpx.post(f"{url}/inference", files=files or None, headers=headers, timeout=30, **kwargs)


BAD_REQUESTS = [
    # (kwargs for _post, status, error code, message fragment)
    ({"headers": {}}, 401, "unauthorized", "bearer token"),  # no token
    ({"headers": {"Authorization": "Bearer wrong-token"}}, 401, "unauthorized", "bearer token"),  # wrong token
    ({"headers": {"Authorization": TOKEN}}, 401, "unauthorized", "bearer token"),  # token without the scheme
    ({"spec": "{not json"}, 400, "malformed_spec", "not valid JSON"),  # spec is not JSON
    ({"spec": "[1, 2]"}, 400, "malformed_spec", "JSON object"),  # spec is not an object
    ({"spec": json.dumps({"task": "object-detection"})}, 422, "invalid_spec", "model_id"),  # missing field
    ({"spec": json.dumps({"model_id": "det", "task": "object-detection", "extra": 1})}, 422, "invalid_spec",
     "extra"),  # unknown field
    ({}, 400, "malformed_request", "multipart/form-data"),  # no body at all
    ({"image": _png()}, 400, "malformed_spec", "no 'spec' part"),  # image without spec
    ({"spec": _spec(), "image": _png(), "data": {"use_remote": "perhaps"}}, 400, "malformed_request",
     "use_remote"),  # a flag that is neither true nor false
    ({"spec": _spec(), "image": b"GIF89a-not-really"}, 415, "unsupported_media_type", "not an image"),  # bad image
    ({"spec": _spec(), "image": _png()[:60]}, 415, "unsupported_media_type", "truncated"),  # cut-off image
    ({"spec": _spec(), "image": _bomb()}, 413, "image_too_large", "too large"),  # decompression bomb
    ({"spec": _spec()}, 422, "invalid_input", "needs an 'image' part"),  # image task without image
    ({"spec": _spec(model_id="nope"), "image": _png()}, 404, "model_not_found", "served models: cap, det"),
    ({"spec": _spec(threshold=1.5), "image": _png()}, 422, "invalid_input", "between 0 and 1"),  # out of range
    ({"spec": _spec(threshold="high"), "image": _png()}, 422, "invalid_input", "threshold"),  # not a number
    ({"spec": _spec(task="image-segmentation"), "image": _png()}, 422, "unsupported_task", "Supported tasks"),
    ({"spec": _spec(model_id="tg", task="object-detection"), "image": _png()}, 422, "invalid_input",
     "not object-detection"),  # the model does another task
    ({"spec": _spec(model_id="tg", task="text-generation", inputs="  ")}, 422, "invalid_input", "prompt is empty"),
    ({"spec": _spec(model_id="tg", task="text-generation", inputs="hi", max_new_tokens=0)}, 422, "invalid_input",
     "max_new_tokens"),  # zero tokens
]


@pytest.mark.parametrize(("kwargs", "status", "code", "fragment"), BAD_REQUESTS,
                         ids=[f"bad{index}" for index in range(len(BAD_REQUESTS))])
def test_bad_requests_get_json_errors(server_url, kwargs, status, code, fragment):
    response = _post(server_url, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert fragment in error["message"]
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"\x00\x01garbage" * 100, "multipart/form-data; boundary=xyz"),  # garbage under a multipart header
        (b"--xyz\r\nContent-Disposition: form-data; name=\"spec\"\r\n\r\n{}", "multipart/form-data; boundary=xyz"),
        (b"\xff" * 1000, "multipart/form-data"),  # no boundary at all
        (b'{"model_id": "det"}', "application/json"),  # JSON instead of multipart
        (b"random bytes", "application/octet-stream"),  # anything else
    ],
)
def test_malformed_bodies_are_4xx_never_500(server_url, content, content_type):
    response = httpx.post(f"{server_url}/inference", content=content,
                          headers={**AUTH, "Content-Type": content_type}, timeout=10)
    assert 400 <= response.status_code < 500, response.text
    assert "error" in response.json()


def test_body_over_the_limit_is_413(server_url):
    response = _post(server_url, spec=_spec(), image=b"\0" * (21 * 1024 * 1024))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert "20 MB" in response.json()["error"]["message"]


def test_unknown_route_and_method_are_json(server_url):
    assert httpx.get(f"{server_url}/nowhere").json()["error"]["code"] == "not_found"
    response = httpx.get(f"{server_url}/inference", headers=AUTH)
    assert response.status_code == 405 and response.json()["error"]["code"] == "method_not_allowed"


def test_success_headers(server_url):
    response = _post(server_url, spec=_spec(), image=_png())
    assert response.status_code == 200
    assert response.headers["X-Inference-Source"] == "local"
    timing = response.headers["Server-Timing"]
    assert timing.startswith("inference;dur=") and "queue;dur=" in timing
    assert "load;dur" not in timing  # the model was loaded at startup, not by this request


def test_health_and_models(server_url):
    health = httpx.get(f"{server_url}/health").json()
    assert health == {"status": "ok", "served": 4, "loaded": 4, "auth": "bearer"}
    assert httpx.get(f"{server_url}/models").status_code == 401
    models = {m["id"]: m for m in httpx.get(f"{server_url}/models", headers=AUTH).json()["models"]}
    assert set(models) == {"tg", "cap", "vlm", "det"}
    assert models["det"]["task"] == "object-detection" and models["det"]["classes"][:2] == ["person", "bicycle"]
    assert models["cap"]["tasks"] == ["image-to-text", "image-text-to-text"]
    assert all(m["status"] == "loaded" and m["device"] == "cpu" for m in models.values())


def test_streaming_over_sse(server_url):
    spec = _spec(model_id="tg", task="text-generation", inputs="hello", max_new_tokens=6)
    with httpx.stream("POST", f"{server_url}/inference", files={"spec": (None, spec, "application/json")},
                      headers={**AUTH, "Accept": "text/event-stream"}, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    tokens = [event["token"] for event in events[:-1]]
    assert len(tokens) >= 2 and "".join(tokens) == events[-1]["generated_text"]
    assert events[-1]["details"]["generated_tokens"] == 6


def test_stream_of_detection_is_refused(server_url):
    response = _post(server_url, spec=_spec(), image=_png(), headers={**AUTH, "Accept": "text/event-stream"})
    assert response.status_code == 422 and "no text to stream" in response.json()["error"]["message"]


@pytest.fixture(scope="module")
def busy_server(demo_dir):
    """One model, one request at a time, one waiting: the third concurrent request is refused."""
    app = create_app({"tg": demo_dir["text-generation"]}, settings=Settings(), concurrency=1, queue_size=1)
    with serve(app) as url:
        wait_loaded(url, 1)
        yield url


def test_queue_full_answers_503_with_retry_after(busy_server):
    spec = _spec(model_id="tg", task="text-generation", inputs="a long story", max_new_tokens=600,
                 use_chat_template=False)
    statuses, retry_after = [], []

    def call():
        response = _post(busy_server, spec=spec, headers={})
        statuses.append(response.status_code)
        if response.status_code == 503:
            retry_after.append(response.headers.get("Retry-After"))
            assert response.json()["error"]["code"] == "busy"

    threads = [threading.Thread(target=call) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(set(statuses)) == [200, 503]
    assert statuses.count(200) >= 2 and 500 not in statuses
    assert retry_after and all(value == "1" for value in retry_after)


def test_health_stays_responsive_while_a_model_works(busy_server):
    spec = _spec(model_id="tg", task="text-generation", inputs="a long story", max_new_tokens=900,
                 use_chat_template=False)
    worker = threading.Thread(target=lambda: _post(busy_server, spec=spec, headers={}))
    worker.start()
    time.sleep(0.3)  # the model is generating now
    started = time.perf_counter()
    assert httpx.get(f"{busy_server}/health", timeout=5).status_code == 200
    health_ms = (time.perf_counter() - started) * 1000
    worker.join()
    assert health_ms < 500


def test_one_log_line_per_request_without_secrets(server_url, caplog):
    caplog.set_level(logging.DEBUG)
    _post(server_url, spec=_spec(), image=_png())
    _post(server_url, spec=_spec(), image=_png(), headers={"Authorization": "Bearer not-the-token"})
    lines = [r.getMessage() for r in caplog.records if r.name == "inference.server"]
    assert any(line.startswith("POST /inference 200 model=det") for line in lines)
    assert any(line.startswith("POST /inference 401") for line in lines)
    assert TOKEN not in caplog.text and "not-the-token" not in caplog.text
    assert "\x89PNG" not in caplog.text


def test_no_token_means_loopback_only(capsys):
    assert main(["--host", "0.0.0.0", "--model", "x=/nonexistent"]) == 2
    assert "INFERENCE_SERVER_TOKEN" in capsys.readouterr().err


def test_unavailable_model_is_reported_not_fatal(demo_dir):
    app = create_app({"ok": demo_dir["object-detection"], "gone": "/no/such/model"}, settings=Settings())
    with serve(app) as url:
        wait_loaded(url, 1)
        time.sleep(0.2)
        models = {m["id"]: m for m in httpx.get(f"{url}/models").json()["models"]}
        assert models["ok"]["status"] == "loaded"
        assert models["gone"]["status"] == "error" and "no such directory" in models["gone"]["error"]
        response = _post(url, spec=_spec(model_id="gone"), image=_png(), headers={})
        # Served but not loadable: the server's failure (503, come back later), not an unknown model (404).
        assert response.status_code == 503 and "no such directory" in response.json()["error"]["message"]
        assert response.json()["error"]["code"] == "model_load_failed" and response.headers["Retry-After"] == "10"


def test_chunked_body_over_the_limit_is_413(demo_dir):
    app = create_app({"det": demo_dir["object-detection"]}, settings=Settings(), max_body_bytes=100_000,
                     preload=False)

    def chunks():
        boundary = b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n\r\n"
        yield boundary
        for _ in range(50):
            yield b"\0" * 10_000  # no Content-Length: the server must count

    with serve(app) as url:
        response = httpx.post(f"{url}/inference", content=chunks(), timeout=10,
                              headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_gateway_without_upstream_is_400_streamed_or_not(server_url):
    spec = _spec(model_id="tg", task="text-generation", inputs="hi")
    for accept in ("application/json", "text/event-stream"):
        response = httpx.post(f"{server_url}/inference", headers={**AUTH, "Accept": accept}, timeout=30,
                              files={"spec": (None, spec, "application/json")}, data={"use_remote": "true"})
        assert response.status_code == 400, (accept, response.text)
        assert response.json()["error"]["code"] == "remote_not_configured"


# --------------------------------------------------------------------------- the protocol's own example


def test_the_protocol_example_runs_a_text_model_and_says_the_image_was_not_used(server_url, photo_png):
    # Byte for byte the request the protocol's reference client sends: a text LLM, a prompt, and an image.
    spec = {"model_id": "tg", "task": "text-generation", "payload": {"inputs": "Describe the image."}}
    files = {"spec": (None, json.dumps(spec), "application/json"),
             "image": ("image.jpg", io.BytesIO(_jpeg()), "image/jpeg")}
    with requests.Session() as session:
        session.headers.update({"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"})
        response = session.post(f"{server_url}/inference", files=files, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["generated_text"]
    assert "image was not used" in response.headers["X-Inference-Warning"]
    assert "'tg'" in response.headers["X-Inference-Warning"]  # the served id, never the model's path


def test_a_text_request_with_an_image_runs_image_text_to_text_on_a_model_that_takes_images(server_url):
    response = _post(server_url, spec=_spec(model_id="vlm", task="text-generation", inputs="What is it?"),
                     image=_png())
    assert response.status_code == 200, response.text
    assert response.json()["generated_text"] and "X-Inference-Warning" not in response.headers


def test_a_streamed_text_request_with_an_image_warns_in_its_headers(server_url):
    response = _post(server_url, spec=_spec(model_id="tg", task="text-generation", inputs="hi", max_new_tokens=3),
                     image=_png(), headers={**AUTH, "Accept": "text/event-stream"})
    assert response.status_code == 200 and "generated_text" in response.text
    assert "image was not used" in response.headers["X-Inference-Warning"]


def test_a_spec_sent_as_a_file_part_is_accepted_beside_an_image(server_url):
    # curl -F spec=@spec.json -F image=@x.png
    files = {"spec": ("spec.json", _spec().encode(), "application/json"), "image": ("x.png", _png(), "image/png")}
    response = httpx.post(f"{server_url}/inference", files=files, headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    assert isinstance(response.json(), list)


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 120, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _encoded(format_: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 120, 200)).save(buffer, format=format_)
    return buffer.getvalue()


# --------------------------------------------------------------------------- no 500 for a client's input

NESTED = '{"model_id": "tg", "task": "text-generation", "payload": {"inputs": "hi", "parameters": {"x": ' + \
    "[" * 100_000 + "]" * 100_000 + "}}}"
SURROGATE = '{"model_id": "tg", "task": "text-generation", "payload": {"inputs": "hi \\ud800 there"}}'
CLIENT_INPUTS = [
    # (spec, image, accept, status, code, fragment)
    (NESTED, None, "application/json", 400, "malformed_spec", "nested too deeply"),  # deeply nested JSON
    ('{"a":' * 10_000 + "1" + "}" * 10_000, None, "application/json", 400, "malformed_spec", "nested"),  # deeper
    (_spec(model_id="tg", task="text-generation", inputs="hi", temperature=1e-300), None, "application/json", 422,
     "invalid_input", "at least 0.01"),  # a temperature that divides the scores into infinities
    (_spec(model_id="tg", task="text-generation", inputs="hi", temperature=0.7, repetition_penalty=1e-300), None,
     "application/json", 422, "invalid_input", "repetition_penalty"),  # a penalty that does the same
    (SURROGATE, None, "application/json", 400, "malformed_spec", "lone surrogate"),  # JSON path
    (SURROGATE, None, "text/event-stream", 400, "malformed_spec", "lone surrogate"),  # SSE path
    (_spec(model_id="tg", task="text-generation", inputs="hi", max_new_tokens=True), None, "application/json", 422,
     "invalid_input", "valid integer"),  # true is not 1
    (_spec(model_id="tg", task="text-generation", inputs="hi", max_new_tokens="5"), None, "application/json", 422,
     "invalid_input", "valid integer"),  # "5" is not 5
    (_spec(model_id="tg", task="text-generation", inputs="hi", use_chat_template=1), None, "application/json", 422,
     "invalid_input", "true or false"),  # 1 is not true
    (_spec(), _encoded("GIF"), "application/json", 415, "unsupported_media_type", "GIF image"),  # protocol: no GIF
    (_spec(), _encoded("TIFF"), "application/json", 415, "unsupported_media_type", "TIFF image"),  # nor TIFF
    (_spec(), _encoded("BMP"), "application/json", 415, "unsupported_media_type", "BMP image"),  # nor BMP
]


@pytest.mark.parametrize(("spec", "image", "accept", "status", "code", "fragment"), CLIENT_INPUTS,
                         ids=[f"input{index}" for index in range(len(CLIENT_INPUTS))])
def test_a_clients_input_is_never_a_500(server_url, spec, image, accept, status, code, fragment, caplog):
    files = {"spec": (None, spec, "application/json")}
    if image is not None:
        files["image"] = ("x.img", image, "application/octet-stream")
    response = httpx.post(f"{server_url}/inference", files=files, headers={**AUTH, "Accept": accept}, timeout=30)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code and fragment in response.json()["error"]["message"]
    assert "unexpected error" not in caplog.text


@pytest.mark.parametrize("word", ["cat", "a", "hello"])
def test_a_one_word_question_to_a_captioner_runs(server_url, word):
    response = _post(server_url, spec=_spec(model_id="cap", task="image-text-to-text", inputs=word, max_new_tokens=4),
                     image=_png())
    assert response.status_code == 200, response.text


def test_an_error_echoes_only_an_excerpt_of_a_huge_value(server_url):
    response = _post(server_url, spec=_spec(model_id="tg", task="text-generation", inputs="hi",
                                            max_new_tokens="9" * 500_000))
    assert response.status_code == 422
    assert len(response.content) < 2_000 and "500,002 characters" in response.json()["error"]["message"]


def test_a_500_closes_its_connection_and_is_logged_once(demo_dir, caplog):
    app = create_app({}, settings=Settings())

    @app.get("/boom")
    async def boom():
        raise RuntimeError("a bug")

    caplog.set_level(logging.INFO)
    with serve(app) as url, httpx.Client() as client:
        for _ in range(5):  # keep-alive: a request after a 500 must not land on the closed connection
            response = client.get(f"{url}/boom")
            assert response.status_code == 500 and response.headers["Connection"] == "close"
            assert response.json()["error"]["code"] == "internal_error"
            assert client.get(f"{url}/health").status_code == 200
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 5 and all(record.getMessage().startswith("unexpected error") for record in errors)


# --------------------------------------------------------------------------- what a slow client may cost


@pytest.fixture
def quick_limits(monkeypatch):
    from inference.server import http

    monkeypatch.setattr(http, "HEADER_TIMEOUT", 0.5)
    monkeypatch.setattr(http, "BODY_TIMEOUT", 0.5)


def _raw_connection(url: str):
    import socket

    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=5)


@pytest.mark.parametrize("sent", [b"", b"POST /inference HTTP/1.1\r\nHost: x\r\nX-Slow: "])
def test_headers_that_never_end_are_cut_off(quick_limits, sent):
    with serve(create_app({}, settings=Settings())) as url, _raw_connection(url) as sock:
        sock.sendall(sent)
        started = time.monotonic()
        assert sock.recv(1024) == b""  # the server closed the connection
        assert time.monotonic() - started < 3


def test_a_body_that_stops_coming_is_408(quick_limits):
    with serve(create_app({}, settings=Settings())) as url, _raw_connection(url) as sock:
        sock.sendall(b"POST /inference HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 100000\r\n\r\n--b\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and b"connection: close" in head.lower()
    assert json.loads(body)["error"]["code"] == "request_timeout"


# --------------------------------------------------------------------------- the schema and its pages


def test_docs_and_schema_are_off_when_a_token_is_set(server_url):
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(f"{server_url}{path}", headers=AUTH).status_code == 404


def test_the_schema_describes_the_multipart_body(demo_dir):
    with serve(create_app({}, settings=Settings(), preload=False)) as url:
        schema = httpx.get(f"{url}/openapi.json").json()
    body = schema["paths"]["/inference"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["required"] == ["spec"] and set(body["properties"]) == {"spec", "image", "use_remote"}
    spec = schema["components"]["schemas"]["Spec"]
    assert {"model_id", "task", "payload"} <= set(spec["properties"])


# --------------------------------------------------------------------------- a model whose load fails


def test_a_failed_load_is_503_and_the_next_request_loads_again(demo_dir, tmp_path):
    import shutil

    source = tmp_path / "detector"  # not there yet
    with serve(create_app({"det": str(source)}, settings=Settings())) as url:
        response = _post(url, spec=_spec(), image=_png(), headers={})
        assert response.status_code == 503 and response.json()["error"]["code"] == "model_load_failed"
        assert int(response.headers["Retry-After"]) > 0
        shutil.copytree(demo_dir["object-detection"], source)  # the operator fixes it
        response = _post(url, spec=_spec(), image=_png(), headers={})
        assert response.status_code == 200, response.text
        (model,) = httpx.get(f"{url}/models").json()["models"]
        assert model["status"] == "loaded" and model["task"] == "object-detection"


# --------------------------------------------------------------------------- clients that hang up mid-stream


@pytest.fixture(scope="module")
def endless_tg(demo_dir, tmp_path_factory) -> str:
    """The demo text model without an end-of-sequence token: it generates until max_new_tokens (seconds)."""
    import shutil

    path = tmp_path_factory.mktemp("endless") / "tg"
    shutil.copytree(demo_dir["text-generation"], path)
    for name in ("config.json", "generation_config.json"):
        config = json.loads((path / name).read_text())
        config["eos_token_id"] = None
        (path / name).write_text(json.dumps(config))
    return str(path)


def _generate_threads() -> int:
    return sum(thread.name == "inference-generate" and thread.is_alive() for thread in threading.enumerate())


def test_clients_that_hang_up_mid_stream_free_the_model_at_once(endless_tg):
    import random

    app = create_app({"tg": endless_tg}, settings=Settings(), concurrency=2, queue_size=16)
    spec = _spec(model_id="tg", task="text-generation", inputs="a long story", max_new_tokens=1000,
                 use_chat_template=False)
    rng = random.Random(7)
    with serve(app) as url:
        wait_loaded(url, 1)

        def hang_up_after(events: int) -> None:
            with httpx.stream("POST", f"{url}/inference", files={"spec": (None, spec, "application/json")},
                              headers={"Accept": "text/event-stream"}, timeout=30) as response:
                assert response.status_code == 200
                for index, _ in enumerate(response.iter_lines()):
                    if index >= events:
                        break  # closes the connection mid-stream

        for _ in range(3):  # rounds of concurrent streams, each hanging up at a random point
            threads = [threading.Thread(target=hang_up_after, args=(rng.randint(0, 12),)) for _ in range(6)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        deadline = time.monotonic() + 5
        while _generate_threads() and time.monotonic() < deadline:  # each stops within a token of its hang-up
            time.sleep(0.05)
        assert _generate_threads() == 0
        (model,) = httpx.get(f"{url}/models").json()["models"]
        assert model["in_flight"] == 0  # every gate place given back, by code
        started = time.monotonic()
        response = _post(url, spec=_spec(model_id="tg", task="text-generation", inputs="hi", max_new_tokens=2),
                         headers={})
        assert response.status_code == 200 and time.monotonic() - started < 5


def test_sigterm_ends_the_server_within_seconds_with_streams_open(endless_tg, unused_port):
    import subprocess
    import sys

    from inference.server import SHUTDOWN_GRACE

    process = subprocess.Popen(
        [sys.executable, "-m", "inference.server", "--port", str(unused_port), "--log-level", "warning",
         "--model", f"tg={endless_tg}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{unused_port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).json()["loaded"] == 1:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and process.poll() is None, "the server did not start"
            time.sleep(0.2)
        spec = _spec(model_id="tg", task="text-generation", inputs="a long story", max_new_tokens=1000,
                     use_chat_template=False)
        with contextlib.ExitStack() as streams:
            for _ in range(2):  # two open streams that nobody reads
                response = streams.enter_context(httpx.stream(
                    "POST", f"{url}/inference", files={"spec": (None, spec, "application/json")},
                    headers={"Accept": "text/event-stream"}, timeout=30))
                assert response.status_code == 200
            started = time.monotonic()
            process.terminate()
            process.wait(timeout=SHUTDOWN_GRACE + 5)
            assert time.monotonic() - started < SHUTDOWN_GRACE + 5
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_remote_stream_closed_before_it_is_read_frees_the_server(endless_tg, engine):
    # The client's stream is open (headers in) but never read: closing it must close the connection, so the
    # server stops generating and gives the model's place back, not at max_new_tokens.
    app = create_app({"tg": endless_tg}, settings=Settings(server_tokens=(TOKEN,)), concurrency=1, queue_size=0)
    with serve(app) as url:
        wait_loaded(url, 1)
        settings = Settings(remote_enabled=True, remote_endpoints=(f"{url}/inference",), remote_token=TOKEN)
        remote = load_model("tg", task="text-generation", backend="remote", settings=settings, engine=engine)
        kept = []  # held, so that the garbage collector cannot close what close() left open
        for _ in range(3):
            stream = remote.stream("a long story", max_new_tokens=1000, use_chat_template=False)
            stream.close()
            kept.append(stream)
            deadline = time.monotonic() + 1  # generating all 1000 tokens takes longer
            while time.monotonic() < deadline:
                (model,) = httpx.get(f"{url}/models", headers={"Authorization": f"Bearer {TOKEN}"}).json()["models"]
                if model["in_flight"] == 0:
                    break
                time.sleep(0.05)
            assert model["in_flight"] == 0
        assert remote("hi", max_new_tokens=2).text is not None  # the one place is free: no 503
