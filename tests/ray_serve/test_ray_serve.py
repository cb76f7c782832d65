"""The reference server on Ray Serve: two replicas both serve, the protocol's request answers as it does on uvicorn,
a replica killed under load loses no request the client can retry, and the proxy's own failures are the protocol's
errors (never a 500)."""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
from PIL import Image

from conftest import TOKEN, serve, wait_loaded
from inference import Settings, load_model
from inference.engine import Engine
from inference.server import create_app

from .conftest import ray_python

AUTH = {"Authorization": f"Bearer {TOKEN}"}

KILL_REPLICA = """
import sys, ray
ray.init(logging_level="ERROR")
names = [actor for actor in ray.util.list_named_actors(all_namespaces=True)
         if actor["name"].startswith("SERVE_REPLICA::") and actor["name"].endswith("#" + sys.argv[1])]
assert names, "no such replica"
ray.kill(ray.get_actor(names[0]["name"], namespace=names[0]["namespace"]), no_restart=True)
print(names[0]["name"])
"""


def _png(color=(40, 120, 200), size=(320, 240)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _protocol_request(url: str, spec: dict, image: bytes | None = None, **headers) -> httpx.Response:
    files = {"spec": (None, json.dumps(spec), "application/json")}
    if image is not None:
        files["image"] = ("x.png", image, "image/png")
    return httpx.post(f"{url}/inference", files=files, headers={**AUTH, **headers}, timeout=60)


def test_two_replicas_both_serve_and_each_answer_names_its_replica(ray_url):
    spec = {"model_id": "det", "task": "object-detection", "payload": {}}
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: _protocol_request(ray_url, spec, _png()), range(32)))
    assert {response.status_code for response in responses} == {200}
    assert len({response.headers["x-inference-replica"] for response in responses}) == 2


def test_the_protocols_request_answers_through_ray_as_through_uvicorn(ray_url, demo_dir):
    # The protocol's own example: a text-generation request that carries an image, on a text-only model.
    text = {"model_id": "tg", "task": "text-generation",
            "payload": {"inputs": "Describe the image", "parameters": {"max_new_tokens": 12}}}
    detection = {"model_id": "det", "task": "object-detection", "payload": {"parameters": {"threshold": 0.3}}}
    app = create_app({"det": demo_dir["object-detection"], "tg": demo_dir["text-generation"]},
                     settings=Settings(server_tokens=(TOKEN,)))
    with serve(app) as uvicorn_url:
        wait_loaded(uvicorn_url, 2)
        for spec in (text, detection):
            on_ray, on_uvicorn = (_protocol_request(url, spec, _png()) for url in (ray_url, uvicorn_url))
            assert on_ray.status_code == on_uvicorn.status_code == 200
            assert on_ray.json() == on_uvicorn.json()
            for header in ("x-inference-source", "x-inference-warning"):
                assert on_ray.headers.get(header) == on_uvicorn.headers.get(header)
            assert "inference;dur=" in on_ray.headers["server-timing"]
        streamed = _protocol_request(ray_url, text, Accept="text/event-stream")
        assert streamed.headers["content-type"].startswith("text/event-stream")
        last = json.loads(streamed.text.strip().split("\n\n")[-1].removeprefix("data: "))
        assert last["generated_text"] == _protocol_request(uvicorn_url, text).json()["generated_text"]
    # Auth and the protocol's errors are the replica's own.
    assert httpx.get(f"{ray_url}/models", timeout=10).status_code == 401
    unknown = _protocol_request(ray_url, {**detection, "model_id": "nope"}, _png())
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


def test_a_replica_killed_under_load_loses_no_request_and_the_deployment_recovers(ray_url):
    settings = Settings(remote_enabled=True, remote_endpoints=(f"{ray_url}/inference",), remote_token=TOKEN,
                        remote_timeout=60)
    victim = httpx.get(f"{ray_url}/health", timeout=10).headers["x-inference-replica"]
    results, replicas = Counter(), Counter()
    stop_at = time.monotonic() + 12

    def client(index: int) -> None:
        with Engine(settings) as engine:
            model = load_model("det", task="object-detection", backend="remote", engine=engine)
            while time.monotonic() < stop_at:
                result = model(Image.new("RGB", (320, 240), (index * 30, 80, 160)))  # raises if a request is lost
                results[result.attempts] += 1

    with ThreadPoolExecutor(6) as pool:
        running = [pool.submit(client, index) for index in range(6)]
        time.sleep(3)
        assert victim in ray_python(KILL_REPLICA, victim)
        for future in running:
            future.result()
    assert sum(results.values()) > 50  # answers kept coming; every request got one (retried where it had to)
    # Ray Serve starts a replacement: two replicas answer again, the killed one not among them.
    deadline = time.monotonic() + 90
    while True:
        for _ in range(16):
            response = httpx.get(f"{ray_url}/health", timeout=10)
            if response.json()["loaded"] == 2:
                replicas[response.headers["x-inference-replica"]] += 1
        if len(replicas.keys() - {victim}) >= 2:
            break
        assert time.monotonic() < deadline, f"the deployment did not recover: {replicas}"
        replicas.clear()
        time.sleep(2)


def test_more_clients_than_the_replicas_and_queue_hold_get_503_with_retry_after_never_500(ray_url):
    spec = {"model_id": "det", "task": "object-detection", "payload": {}}
    image = _png()
    with ThreadPoolExecutor(160) as pool:
        responses = list(pool.map(lambda _: _protocol_request(ray_url, spec, image), range(160)))
    statuses = Counter(response.status_code for response in responses)
    assert set(statuses) <= {200, 503} and statuses[200] >= 8, statuses
    for response in responses:
        if response.status_code == 503:
            assert response.json()["error"]["code"] == "busy" and int(response.headers["retry-after"]) >= 1


def test_each_replica_has_its_own_metrics(ray_url):
    response = httpx.get(f"{ray_url}/metrics", headers=AUTH, timeout=10)
    assert response.status_code == 200 and "inference_studio_batch_size" in response.text
    assert response.headers["x-inference-replica"]
