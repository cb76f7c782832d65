"""Dynamic batching: batched answers equal unbatched ones, the batcher's time bound, failure isolation, clients that
leave while queued, overload (503, never 500) and the batch metrics."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import TOKEN, _photo, serve, served_demo_models, wait_loaded
from inference import Settings
from inference.backends.local import LocalBackend
from inference.errors import InvalidInput
from inference.request import make_request
from inference.server import create_app
from inference.server.batching import Batcher
from inference.server.gate import Gate
from inference.tasks import get_task
from inference.wire import parse_server_timing

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _request(task: str, inputs, parameters=None, prompt=None):
    return make_request(get_task(task), inputs, prompt, parameters or {}, max_pixels=10**8)


# --------------------------------------------------------------------------- the local backend's batches


def test_a_detection_batch_equals_each_image_alone(demo_dir, session_engine):
    backend = LocalBackend(session_engine, demo_dir["object-detection"], get_task("object-detection"))
    # Two sizes (two forwards), two thresholds, and a repeated image.
    images = [_photo(320, 240, seed=1), _photo(320, 240, seed=2), _photo(200, 200, seed=3), _photo(320, 240, seed=1)]
    requests = [_request("object-detection", image, {"threshold": threshold})
                for image, threshold in zip(images, (0.5, 0.2, 0.3, 0.5))]
    batched = backend.run_batch(requests)
    for request, together in zip(requests, batched):
        alone = backend.run(request).output
        assert len(together.output) == len(alone) > 0
        np.testing.assert_allclose(together.output.xyxy, alone.xyxy, atol=1e-3)
        np.testing.assert_allclose(together.output.confidence, alone.confidence, atol=1e-3)
        assert list(together.output.data["class_name"]) == list(alone.data["class_name"])
    assert len({raw.elapsed_ms for raw in batched}) == 1  # every request waited for the whole batch


def test_a_text_batch_pads_on_the_left_groups_compatible_parameters_and_equals_each_alone(demo_dir, session_engine):
    backend = LocalBackend(session_engine, demo_dir["text-generation"], get_task("text-generation"))
    requests = [
        _request("text-generation", "hi", {"max_new_tokens": 12}),
        _request("text-generation", "a much longer prompt about cats, dogs and the sea", {"max_new_tokens": 12}),
        _request("text-generation", "x", {"max_new_tokens": 5}),  # other parameters: another group
        _request("text-generation", "tell me", {"max_new_tokens": 12, "temperature": 0.8, "seed": 7}),  # alone
        _request("text-generation", "hi", {"max_new_tokens": 12, "use_chat_template": False}),
    ]
    batched = backend.run_batch(requests)
    for request, together in zip(requests, batched):
        alone = backend.run(request)
        assert (together.output, dict(together.details)) == (alone.output, dict(alone.details))


def test_a_caption_batch_equals_each_image_alone(demo_dir, session_engine):
    backend = LocalBackend(session_engine, demo_dir["image-to-text"], get_task("image-to-text"))
    requests = [_request("image-to-text", _photo(320, 240, seed=seed)) for seed in (1, 2)]
    requests.append(_request("image-to-text", _photo(64, 64, seed=3), {"max_new_tokens": 8}))
    for request, together in zip(requests, backend.run_batch(requests)):
        alone = backend.run(request)
        assert (together.output, dict(together.details)) == (alone.output, dict(alone.details))


def test_one_bad_request_of_a_batch_fails_alone(demo_dir, session_engine):
    backend = LocalBackend(session_engine, demo_dir["text-generation"], get_task("text-generation"))
    too_long = "word " * 2000  # past the demo model's context
    requests = [_request("text-generation", prompt, {"max_new_tokens": 6}) for prompt in ("hi", too_long, "hello")]
    outcomes = backend.run_batch(requests)
    assert isinstance(outcomes[1], InvalidInput) and "context" in str(outcomes[1])
    assert outcomes[0].output == backend.run(requests[0]).output
    assert outcomes[2].output == backend.run(requests[2]).output


# --------------------------------------------------------------------------- the batcher


class _Recorder:
    """A batch function that records the batches it is given (and fails the calls named 'bad')."""

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list] = []
        self.delay = delay

    def __call__(self, calls: list) -> list:
        self.batches.append(list(calls))
        time.sleep(self.delay)
        return [ValueError(f"{call} failed") if call == "bad" else f"answer to {call}" for call in calls]


async def _submit(batcher: Batcher, gate: Gate, call):
    return batcher.submit(call, gate.admit())


def test_the_batcher_never_waits_past_max_wait_with_a_partial_batch():
    async def scenario():
        gate, recorder = Gate("m", 1, 16, 8), _Recorder()
        batcher = Batcher("m", gate, recorder, max_batch_size=8, max_wait_ms=300)
        started = time.perf_counter()
        first = await _submit(batcher, gate, "a")
        await asyncio.sleep(0.05)
        second = await _submit(batcher, gate, "b")
        answers = await asyncio.gather(first.future, second.future)
        waited = time.perf_counter() - started
        await batcher.aclose()
        return answers, waited, recorder.batches

    answers, waited, batches = asyncio.run(scenario())
    assert batches == [["a", "b"]]
    assert [answer.outcome for answer in answers] == ["answer to a", "answer to b"]
    assert all(answer.size == 2 for answer in answers)
    assert 0.29 <= waited < 1.5  # it waited for the first request's 300 ms, not for a full batch
    assert answers[0].batch_ms >= 290 and answers[1].batch_ms < answers[0].batch_ms


def test_a_full_batch_runs_at_once_and_the_rest_wait_for_the_next():
    async def scenario():
        gate, recorder = Gate("m", 1, 16, 4), _Recorder()
        batcher = Batcher("m", gate, recorder, max_batch_size=4, max_wait_ms=1000)
        started = time.perf_counter()
        queued = [await _submit(batcher, gate, str(index)) for index in range(6)]
        first_four = await asyncio.gather(*(item.future for item in queued[:4]))
        full_after = time.perf_counter() - started
        rest = await asyncio.gather(*(item.future for item in queued[4:]))
        await batcher.aclose()
        return first_four, rest, full_after, recorder.batches

    first_four, rest, full_after, batches = asyncio.run(scenario())
    assert batches[0] == ["0", "1", "2", "3"] and full_after < 0.9  # full: no waiting for max_wait
    assert batches[1] == ["4", "5"]
    assert {answer.size for answer in first_four} == {4} and {answer.size for answer in rest} == {2}


def test_a_failure_in_a_batch_is_that_requests_alone():
    async def scenario():
        gate = Gate("m", 1, 16, 8)
        batcher = Batcher("m", gate, _Recorder(), max_batch_size=8, max_wait_ms=20)
        queued = [await _submit(batcher, gate, call) for call in ("a", "bad", "c")]
        outcomes = await asyncio.gather(*(item.future for item in queued), return_exceptions=True)
        await batcher.aclose()
        return outcomes

    good, bad, other = asyncio.run(scenario())
    assert isinstance(bad, ValueError)
    assert (good.outcome, other.outcome) == ("answer to a", "answer to c")


def test_a_batch_takes_the_oldest_requests_key_and_the_others_keep_their_places():
    async def scenario():
        gate, recorder = Gate("m", 1, 16, 8), _Recorder(delay=0.05)
        batcher = Batcher("m", gate, recorder, max_batch_size=8, max_wait_ms=0, key=lambda call: call[0])
        running = await _submit(batcher, gate, "x0")
        await asyncio.sleep(0.01)  # queue behind the running batch
        queued = [await _submit(batcher, gate, call) for call in ("a1", "b1", "a2", "b2", "a3")]
        await asyncio.gather(running.future, *(item.future for item in queued))
        await batcher.aclose()
        return recorder.batches

    assert asyncio.run(scenario()) == [["x0"], ["a1", "a2", "a3"], ["b1", "b2"]]


def test_a_request_that_leaves_while_queued_is_not_run():
    async def scenario():
        gate, recorder = Gate("m", 1, 16, 8), _Recorder(delay=0.1)
        batcher = Batcher("m", gate, recorder, max_batch_size=8, max_wait_ms=0)
        running = await _submit(batcher, gate, "first")
        await asyncio.sleep(0.02)  # the first batch runs: the next requests queue behind it
        leaving, staying = await _submit(batcher, gate, "leaving"), await _submit(batcher, gate, "staying")
        assert batcher.leave(leaving)
        assert len(batcher) == 1  # gone from the queue: what it holds (its image) is let go at once
        await asyncio.gather(running.future, staying.future)
        assert not batcher.leave(running)  # too late: it ran
        await batcher.aclose()
        return recorder.batches

    assert asyncio.run(scenario()) == [["first"], ["staying"]]


# --------------------------------------------------------------------------- the server


@contextlib.contextmanager
def batching_server(demo_dir, size: int, wait_ms: float = 10_000):
    """The demo models behind a server whose batches close when ``size`` requests have come (or after ``wait_ms``):
    batches of a known make-up, however slow the machine."""
    app = create_app(served_demo_models(demo_dir), settings=Settings(server_tokens=(TOKEN,)), max_batch_size=size,
                     max_wait_ms=wait_ms, queue_size=8)
    with serve(app) as url:
        wait_loaded(url, 4)
        yield url


@pytest.fixture(scope="module")
def batched_url(demo_dir):
    """A batching server as the command line runs it: batches of up to 8 of what queued (no wait)."""
    app = create_app(served_demo_models(demo_dir), settings=Settings(server_tokens=(TOKEN,)), max_batch_size=8,
                     max_wait_ms=0)
    with serve(app) as url:
        wait_loaded(url, 4)
        yield url


def _detect(url: str, image_bytes: bytes, timeout: float = 30.0, **parameters) -> httpx.Response:
    spec = json.dumps({"model_id": "det", "task": "object-detection", "payload": {"parameters": parameters}})
    return httpx.post(f"{url}/inference", headers=AUTH, timeout=timeout,
                      files={"spec": (None, spec, "application/json"), "image": ("x.png", image_bytes, "image/png")})


def test_concurrent_requests_run_as_one_batch_and_say_so(demo_dir, session_engine):
    images = [_photo(320, 240, seed=seed) for seed in range(4)]
    with batching_server(demo_dir, 4) as url, ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda image: _detect(url, _png(image), threshold=0.3), images))
    backend = LocalBackend(session_engine, demo_dir["object-detection"], get_task("object-detection"))
    for image, response in zip(images, responses):
        assert response.status_code == 200, response.text
        timing = parse_server_timing(response.headers["server-timing"])
        assert {"inference", "queue", "batch"} <= timing.keys()
        assert 'desc="4 requests"' in response.headers["server-timing"]
        alone = backend.run(_request("object-detection", image, {"threshold": 0.3})).output
        boxes = [detection["box"] for detection in response.json()]
        np.testing.assert_allclose([[box["xmin"], box["ymin"], box["xmax"], box["ymax"]] for box in boxes],
                                   alone.xyxy, atol=1e-2)  # the wire rounds to 0.01 px


def test_a_bad_image_beside_good_ones_fails_alone(demo_dir):
    good = _png(_photo(320, 240, seed=5))
    with batching_server(demo_dir, 3) as url, ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda body: _detect(url, body), [good, b"not an image", good, good]))
    assert [response.status_code for response in responses] == [200, 415, 200, 200]
    assert "image" in responses[1].json()["error"]["message"]
    assert 'desc="3 requests"' in responses[0].headers["server-timing"]


def _generate(url: str, prompt: str, **parameters) -> httpx.Response:
    spec = json.dumps({"model_id": "tg", "task": "text-generation",
                       "payload": {"inputs": prompt, "parameters": parameters}})
    return httpx.post(f"{url}/inference", headers=AUTH, files={"spec": (None, spec, "application/json")}, timeout=30)


def test_a_prompt_too_long_for_the_model_fails_alone_in_its_batch(demo_dir, batched_url):
    prompts = ["hi", "word " * 2000, "hello there"]
    with batching_server(demo_dir, 3) as url, ThreadPoolExecutor(3) as pool:
        responses = list(pool.map(lambda prompt: _generate(url, prompt, max_new_tokens=6), prompts))
    assert [response.status_code for response in responses] == [200, 422, 200]
    assert "context" in responses[1].json()["error"]["message"]
    assert 'desc="3 requests"' in responses[0].headers["server-timing"]
    assert responses[0].json() == _generate(batched_url, "hi", max_new_tokens=6).json()


def test_a_streamed_request_does_not_wait_for_a_batch(batched_url):
    spec = json.dumps({"model_id": "tg", "task": "text-generation",
                       "payload": {"inputs": "hi", "parameters": {"max_new_tokens": 4}}})
    started = time.perf_counter()
    response = httpx.post(f"{batched_url}/inference", headers={**AUTH, "Accept": "text/event-stream"},
                          files={"spec": (None, spec, "application/json")}, timeout=30)
    assert response.status_code == 200 and "batch" not in response.headers["server-timing"]
    assert time.perf_counter() - started < 5


def _metric(url: str, name: str, **labels) -> float:
    text = httpx.get(f"{url}/metrics", headers=AUTH, timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items()))


def test_a_client_that_leaves_while_queued_leaves_the_batch(demo_dir):
    image = _png(_photo(320, 240, seed=6))
    with batching_server(demo_dir, 3, wait_ms=3000) as url, ThreadPoolExecutor(2) as pool:
        staying = pool.submit(_detect, url, image)
        time.sleep(0.3)
        with pytest.raises(httpx.ReadTimeout):
            _detect(url, image, timeout=1.0)  # gives up (and disconnects) while its batch waits for a third
        response = staying.result()
        assert response.status_code == 200
        assert 'desc="1 request"' in response.headers["server-timing"]  # the batch closed without it
        assert _metric(url, "inference_studio_batch_size_count", model="det") == 1
        deadline = time.monotonic() + 5
        while _metric(url, "inference_studio_requests_total", model="det", status="499") < 1:
            assert time.monotonic() < deadline, "the request that left was not logged as 499"
            time.sleep(0.05)
        assert _metric(url, "inference_studio_requests_waiting", model="det") == 0


def test_64_clients_past_the_queue_get_503_with_retry_after_never_500(demo_dir):
    # One batch of 4 runs, 4 more wait: 8 places, and 64 clients at once.
    app = create_app({"det": demo_dir["object-detection"]}, settings=Settings(server_tokens=(TOKEN,)),
                     max_batch_size=4, max_wait_ms=20, queue_size=4)
    image = _png(_photo(320, 240, seed=7))
    with serve(app) as url:
        wait_loaded(url, 1)
        with ThreadPoolExecutor(64) as pool:
            responses = list(pool.map(lambda _: _detect(url, image, timeout=60), range(64)))
        statuses = [response.status_code for response in responses]
        assert set(statuses) <= {200, 503} and statuses.count(200) >= 8 and 503 in statuses
        for response in responses:
            if response.status_code == 503:
                assert response.json()["error"]["code"] == "busy" and int(response.headers["retry-after"]) >= 1
        # Every answered request ran in a batch, and the histogram counted each once.
        assert _metric(url, "inference_studio_batch_size_sum", model="det") == statuses.count(200)
        assert _metric(url, "inference_studio_requests_total", model="det", status="503") == statuses.count(503)
        assert _metric(url, "inference_studio_requests_running", model="det") == 0
