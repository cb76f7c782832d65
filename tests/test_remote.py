"""The remote backend against the real reference server on loopback: same results, remote timings."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import requests

from conftest import TOKEN, serve, wait_loaded
from inference import (
    Engine,
    InvalidInput,
    ModelLoadError,
    RemoteNotConfigured,
    Settings,
    load_model,
)
from inference.server import create_app


@pytest.fixture(scope="module")
def engine(remote_settings):
    with Engine(remote_settings) as engine:
        yield engine


def _pair(demo_dir, engine, remote_settings, task, served_id):
    local = load_model(demo_dir[task], task=task, backend="local", engine=engine)
    remote = load_model(served_id, task=task, backend="remote", engine=engine, settings=remote_settings)
    return local, remote


@pytest.mark.parametrize(
    ("task", "served_id", "call"),
    [
        ("text-generation", "tg", lambda m, photo: m("Tell me a joke", max_new_tokens=8)),
        ("image-to-text", "cap", lambda m, photo: m(photo, max_new_tokens=8)),
        ("image-to-text", "cap", lambda m, photo: m(photo, prompt="a photo of", max_new_tokens=8)),
        ("image-text-to-text", "vlm", lambda m, photo: m(photo, prompt="What is it?", max_new_tokens=8)),
    ],
)
def test_remote_text_matches_local(demo_dir, engine, remote_settings, photo, task, served_id, call):
    local, remote = _pair(demo_dir, engine, remote_settings, task, served_id)
    here, there = call(local, photo), call(remote, photo)
    assert there.source == "remote" and here.source == "local"
    assert there.text == here.text
    assert there.timings.tokens == here.timings.tokens
    assert there.details["server_source"] == "local"  # where the server ran it


def test_remote_detection_matches_local(demo_dir, engine, remote_settings, photo):
    local, remote = _pair(demo_dir, engine, remote_settings, "object-detection", "det")
    here, there = local(photo, threshold=0.3), remote(photo, threshold=0.3)
    assert there.class_names == here.class_names
    np.testing.assert_allclose(there.detections.xyxy, here.detections.xyxy, atol=0.006)  # lossless PNG; 2 decimals on the wire
    np.testing.assert_allclose(there.detections.confidence, here.detections.confidence, atol=1e-3)
    np.testing.assert_array_equal(there.detections.class_id, here.detections.class_id)  # same class ids
    assert there.image_size == photo.size
    assert remote.info.classes == local.info.classes  # from GET /models


def test_remote_timings_split_server_and_network(demo_dir, engine, remote_settings, photo):
    remote = load_model("det", task="object-detection", backend="remote", engine=engine, settings=remote_settings)
    result = remote(photo)
    timings = result.timings
    assert timings.server_ms is not None and 0 < timings.server_ms < timings.total_ms
    assert timings.network_ms == pytest.approx(timings.total_ms - timings.server_ms)
    assert timings.queue_ms is not None
    assert result.attempts == 1
    assert 1000 < result.bytes_sent < 500_000
    assert result.to_dict()["source"] == "remote"


def test_remote_stream(engine, remote_settings, demo_dir):
    remote = load_model("tg", task="text-generation", backend="remote", engine=engine, settings=remote_settings)
    local = load_model(demo_dir["text-generation"], task="text-generation", engine=engine)
    stream = remote.stream("Write a haiku", max_new_tokens=10)
    pieces = list(stream)
    result = stream.result
    assert len(pieces) > 1 and "".join(pieces) == result.text == local("Write a haiku", max_new_tokens=10).text
    assert 0 < result.timings.ttft_ms <= result.timings.total_ms
    assert result.timings.tokens == 10 and result.timings.server_ms > 0
    assert result.source == "remote"


def test_large_photo_is_downscaled_before_upload(demo_dir, engine, remote_settings, make_photo):
    big = make_photo(4000, 3000)  # 12 megapixels
    remote = load_model("det", task="object-detection", backend="remote", engine=engine, settings=remote_settings)
    local = load_model(demo_dir["object-detection"], task="object-detection", engine=engine)
    result = remote(big, threshold=0.3)
    assert result.bytes_sent < 500_000
    assert result.image_size == (4000, 3000)
    # Boxes come back in the original photo's pixels: compare with the local run on the full photo.
    reference = local(big, threshold=0.3)
    assert result.class_names[:3] == reference.class_names[:3]
    np.testing.assert_allclose(result.detections.xyxy[:3], reference.detections.xyxy[:3], atol=4000 * 0.03)


def test_plain_requests_multipart_call(server_url, photo_png):
    """A client written against DESIGN.md with nothing but requests."""
    spec = {"model_id": "det", "task": "object-detection", "payload": {"inputs": None, "parameters": {"threshold": 0.5}}}
    response = requests.post(
        f"{server_url}/inference",
        headers={"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"},
        files={"spec": (None, json.dumps(spec), "application/json"), "image": ("photo.png", photo_png, "image/png")},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    first = response.json()[0]
    assert set(first) == {"label", "score", "box"} and set(first["box"]) == {"xmin", "ymin", "xmax", "ymax"}
    assert response.headers["X-Inference-Source"] == "local"
    assert response.headers["Server-Timing"].startswith("inference;dur=")

    text_spec = {"model_id": "tg", "task": "text-generation", "payload": {"inputs": "hello", "parameters": {}}}
    response = requests.post(f"{server_url}/inference", headers={"Authorization": f"Bearer {TOKEN}"},
                             files={"spec": (None, json.dumps(text_spec), "application/json")}, timeout=30)
    assert response.status_code == 200 and response.json()["generated_text"]


# ------------------------------------------------------------------ backend selection (DESIGN.md table)


def test_auto_with_remote_disabled_runs_locally(demo_dir, engine):
    model = load_model(demo_dir["text-generation"], task="text-generation", backend="auto", engine=engine,
                       settings=Settings(remote_enabled=False))
    result = model("hi", max_new_tokens=2)
    assert result.source == "local" and "remote inference is disabled" in result.backend_reason


def test_auto_runs_locally_when_the_model_loads_here(demo_dir, engine, remote_settings):
    model = load_model(demo_dir["text-generation"], task="text-generation", backend="auto", engine=engine,
                       settings=remote_settings)
    result = model("hi", max_new_tokens=2)
    assert result.source == "local" and "loads on this machine" in result.backend_reason


def test_auto_falls_back_to_remote_when_the_model_cannot_run_here(engine, remote_settings, photo):
    model = load_model("det", task="object-detection", backend="auto", engine=engine, settings=remote_settings)
    result = model(photo)
    assert result.source == "remote"
    assert "cannot run here" in result.backend_reason and "not reachable offline" in result.backend_reason
    assert len(result.detections) > 0


def test_manual_local_with_remote_enabled_stays_local(demo_dir, engine, remote_settings):
    model = load_model(demo_dir["text-generation"], task="text-generation", backend="local", engine=engine,
                       settings=remote_settings)
    assert model("hi", max_new_tokens=2).source == "local"


def test_manual_remote_with_remote_disabled_says_what_to_set(remote_settings):
    disabled = Settings(remote_enabled=False, remote_endpoints=remote_settings.remote_endpoints)
    with pytest.raises(RemoteNotConfigured, match="REMOTE_INFERENCE_ENABLED=true"):
        load_model("tg", task="text-generation", backend="remote", settings=disabled)


def test_remote_errors_are_typed(engine, remote_settings, photo):
    with pytest.raises(ModelLoadError, match="not served here"):
        load_model("nope", task="object-detection", backend="remote", engine=engine, settings=remote_settings)(photo)
    det = load_model("det", task="object-detection", backend="remote", engine=engine, settings=remote_settings)
    with pytest.raises(InvalidInput, match="between 0 and 1"):
        det(photo, threshold=1.5)  # caught before anything is sent
    wrong_task = load_model("tg", task="object-detection", backend="remote", engine=engine, settings=remote_settings)
    with pytest.raises(InvalidInput, match="not object-detection"):
        wrong_task(photo)


def test_failover_to_the_next_endpoint(engine, remote_settings, photo, unused_port):
    settings = Settings(remote_enabled=True, remote_token=TOKEN,
                        remote_endpoints=(f"http://127.0.0.1:{unused_port}/inference", *remote_settings.remote_endpoints))
    det = load_model("det", task="object-detection", backend="remote", engine=engine, settings=settings)
    first = det(photo)
    assert first.details["endpoint"] != f"127.0.0.1:{unused_port}"
    assert first.attempts == 1  # the failover happened inside the first attempt
    assert det(photo).details["endpoint"] == first.details["endpoint"]  # and the good endpoint is now preferred


# ------------------------------------------------------------------ gateway mode


def test_gateway_forwards_to_its_own_remote(demo_dir, server_url, photo):
    upstream = Settings(remote_enabled=True, remote_endpoints=(f"{server_url}/inference",), remote_token=TOKEN)
    gateway_app = create_app({}, settings=upstream)
    with serve(gateway_app) as gateway_url, Engine() as engine:
        wait_loaded(gateway_url, 0)
        client = Settings(remote_enabled=True, remote_endpoints=(f"{gateway_url}/inference",))
        det = load_model("det", task="object-detection", backend="remote", engine=engine, settings=client,
                         use_remote=True)
        result = det(photo)
        assert result.details["server_source"] == "remote"  # the gateway did not run it itself
        assert len(result.detections) > 0
        gen = load_model("tg", task="text-generation", backend="remote", engine=engine, settings=client,
                         use_remote=True)
        stream = gen.stream("hello", max_new_tokens=4)
        assert "".join(stream) == stream.result.text and stream.result.timings.tokens == 4
        # Without use_remote the gateway serves nothing itself.
        direct = load_model("det", task="object-detection", backend="remote", engine=engine, settings=client)
        with pytest.raises(ModelLoadError):
            direct(photo)


def test_gateway_without_remote_configured(server_url, photo, engine):
    client = Settings(remote_enabled=True, remote_endpoints=(f"{server_url}/inference",), remote_token=TOKEN)
    det = load_model("det", task="object-detection", backend="remote", engine=engine, settings=client, use_remote=True)
    with pytest.raises(RemoteNotConfigured, match="no remote endpoint"):  # wire.ERRORS: remote_not_configured
        det(photo)


def test_exif_rotated_photo_gives_the_same_boxes_locally_and_remotely(demo_dir, engine, remote_settings, make_photo):
    import io

    picture = make_photo(320, 200)
    exif = picture.getexif()
    exif[0x0112] = 6  # shown turned a quarter: 200 wide, 320 high
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", exif=exif, quality=95)
    local, remote = _pair(demo_dir, engine, remote_settings, "object-detection", "det")
    here, there = local(buffer.getvalue(), threshold=0.3), remote(buffer.getvalue(), threshold=0.3)
    assert here.image_size == there.image_size == (200, 320)
    assert there.class_names == here.class_names
    np.testing.assert_allclose(there.detections.xyxy, here.detections.xyxy, atol=0.006)


@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "in-one-piece"])
def test_a_load_on_the_server_is_load_ms_not_latency(demo_dir, streamed):
    # A server that loads on first request (no preload): that request reports the load once, as load_ms;
    # total, TTFT and network time leave it out, and the next request reports none.
    app = create_app({"tg": demo_dir["text-generation"]}, settings=Settings(), preload=False)
    with serve(app) as url, Engine(Settings(remote_enabled=True, remote_endpoints=(f"{url}/inference",))) as engine:
        gen = load_model("tg", task="text-generation", backend="remote", engine=engine)
        results = []
        for _ in range(2):
            started = time.perf_counter()
            if streamed:
                stream = gen.stream("hello", max_new_tokens=4)
                "".join(stream)
                result = stream.result
            else:
                result = gen("hello", max_new_tokens=4)
            results.append((result.timings, (time.perf_counter() - started) * 1000))
    (first, first_wall), (second, _) = results
    assert first.load_ms is not None and first.load_ms > 0
    assert first.total_ms <= first_wall - first.load_ms + 50  # the load is not in the latency
    assert first.network_ms is not None and first.network_ms < first.load_ms
    if streamed:
        assert first.ttft_ms is not None and first.ttft_ms <= first.total_ms
    assert second.load_ms is None


def test_a_text_model_given_an_image_runs_the_text_and_says_so(demo_dir, engine, photo):
    # The protocol allows an image on a text request: our client sends it rather than refusing it.
    remote = load_model("tg", task="text-generation", backend="remote", engine=engine)
    result = remote("Describe the image.", image=photo, max_new_tokens=4)
    assert result.text and len(result.warnings) == 1 and "image was not used" in result.warnings[0]
    assert "'tg'" in result.warnings[0]  # the served id: the server's paths stay on the server
    streamed = remote.stream("Describe the image.", image=photo, max_new_tokens=4)
    assert "".join(streamed) and streamed.result.warnings == result.warnings
    local = load_model(demo_dir["text-generation"], task="text-generation", backend="local", engine=engine)
    assert "image was not used" in local("Describe the image.", image=photo, max_new_tokens=4).warnings[0]


def test_a_vision_model_asked_for_text_generation_with_an_image_answers_about_it(engine, photo):
    result = load_model("vlm", task="text-generation", backend="remote", engine=engine)("What is it?", image=photo,
                                                                                         max_new_tokens=4)
    assert result.text and result.warnings == ()
