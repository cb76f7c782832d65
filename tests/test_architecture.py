"""What the architecture promises: one rule for timings, codecs that round-trip, a gate that keeps its counts,
and a task added by one registry entry that runs locally, on the server and through the client unchanged."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest
import supervision as sv
from conftest import TOKEN, serve, wait_loaded

from inference import Settings, load_model, tasks
from inference.codecs import DETECTIONS, TEXT
from inference.server import create_app
from inference.server.gate import Gate
from inference.server.http import ApiError
from inference.types import Raw, Timings

# --------------------------------------------------------------------------- Timings.from_raw


def test_a_load_is_never_latency_and_ttft_starts_after_it():
    raw = Raw(output="x", elapsed_ms=1500.0, load_ms=1000.0, first_piece_ms=1100.0)
    timings = Timings.from_raw(raw)
    assert (timings.total_ms, timings.load_ms, timings.ttft_ms) == (500.0, 1000.0, 100.0)


def test_server_time_is_inference_plus_queue_and_the_rest_is_network():
    raw = Raw(output="x", elapsed_ms=40.0, server_timing={"inference": 25.0, "queue": 5.0})
    timings = Timings.from_raw(raw)
    assert (timings.server_ms, timings.network_ms, timings.queue_ms) == (30.0, 10.0, 5.0)
    local = Timings.from_raw(Raw(output="x", elapsed_ms=40.0))
    assert local.server_ms is None and local.network_ms is None  # no server: nothing to split


def test_tokens_per_second_come_from_the_generated_tokens_and_a_load_before_the_call_is_reported_once():
    raw = Raw(output="x", elapsed_ms=500.0, details={"generated_tokens": 10})
    timings = Timings.from_raw(raw, earlier_load_ms=80.0)
    assert (timings.tokens, timings.tokens_per_s, timings.load_ms, timings.total_ms) == (10, 20.0, 80.0, 500.0)
    assert Timings.from_raw(Raw(output="x", elapsed_ms=5.0, details={"generated_tokens": True})).tokens is None


# --------------------------------------------------------------------------- codecs


def test_text_codec_round_trips():
    body = TEXT.to_wire("a cat", {"finish_reason": "stop"})
    assert TEXT.from_wire(body, classes=lambda: (), scale=1.0) == ("a cat", {"finish_reason": "stop"})


def test_detection_codec_round_trips_with_stable_class_ids_and_scales_back():
    detections = sv.Detections(xyxy=np.array([[1.0, 2.0, 30.0, 40.0], [5.0, 5.0, 9.0, 9.0]]),
                               confidence=np.array([0.9, 0.6]), class_id=np.array([1, 0]),
                               data={"class_name": np.array(["dog", "cat"])})
    body = DETECTIONS.to_wire(detections, {})
    back, details = DETECTIONS.from_wire(body, classes=lambda: ("cat", "dog"), scale=2.0)
    assert details == {}
    np.testing.assert_allclose(back.xyxy, detections.xyxy * 2.0)
    assert back.class_id.tolist() == [1, 0] and back.data["class_name"].tolist() == ["dog", "cat"]


def test_codecs_refuse_answers_of_the_wrong_shape():
    with pytest.raises(ValueError):
        TEXT.from_wire([{"label": "cat"}], classes=lambda: (), scale=1.0)
    with pytest.raises(ValueError):
        DETECTIONS.from_wire({"generated_text": "a cat"}, classes=lambda: (), scale=1.0)


# --------------------------------------------------------------------------- the gate


def test_the_gate_admits_runs_queues_refuses_and_releases_once():
    async def scenario():
        gate = Gate("m", concurrency=1, queue_size=1)
        first, second = gate.admit(), gate.admit()
        with pytest.raises(ApiError) as refused:
            gate.admit()
        assert refused.value.code == "busy" and gate.in_flight == 2
        await gate.wait(first)
        waiting = asyncio.ensure_future(gate.wait(second))
        await asyncio.sleep(0.01)
        assert not waiting.done()  # one slot, taken
        gate.release(first)
        gate.release(first)  # an event stream may end twice: counted once
        assert await asyncio.wait_for(waiting, 1) >= 0 and gate.in_flight == 1
        gate.release(second)
        assert gate.in_flight == 0
        third = gate.admit()
        gate.release(third)  # released before it ever ran: no slot to give back
        await asyncio.wait_for(gate.wait(gate.admit()), 1)  # the slot is still there

    asyncio.run(scenario())


# --------------------------------------------------------------------------- a task is one registry entry


@pytest.fixture
def continuation_task(monkeypatch):
    """A new task, added the way the registry says: one TaskSpec, no other code."""
    spec = tasks.TaskSpec("text-continuation", "causal-lm", tasks.GenerationParameters, image="none",
                          prompt="required", codec=TEXT, description="continue a text without a chat template",
                          default_model="demo/text-generation")
    monkeypatch.setitem(tasks.TASKS, spec.name, spec)
    return spec


def test_a_task_added_by_one_registry_entry_runs_here_on_the_server_and_through_the_client(
        demo_dir, engine, continuation_task):
    local = load_model(demo_dir["text-generation"], task="text-continuation", backend="local", engine=engine)
    expected = local("Once upon", max_new_tokens=4, use_chat_template=False)
    assert expected.task == "text-continuation" and expected.timings.tokens == 4

    app = create_app({"tg": demo_dir["text-generation"]}, settings=Settings(server_tokens=(TOKEN,)))
    with serve(app) as url:
        wait_loaded(url, 1)
        settings = Settings(remote_enabled=True, remote_endpoints=(f"{url}/inference",), remote_token=TOKEN)
        remote = load_model("tg", task="text-continuation", backend="remote", settings=settings, engine=engine)
        answer = remote("Once upon", max_new_tokens=4, use_chat_template=False)
        streamed = remote.stream("Once upon", max_new_tokens=4, use_chat_template=False).result
    assert answer.text == streamed.text == expected.text
    assert dataclasses.asdict(answer.timings).keys() == dataclasses.asdict(expected.timings).keys()
    assert answer.timings.server_ms is not None and streamed.timings.ttft_ms is not None
