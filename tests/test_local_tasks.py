"""Every task end to end on the demo models, through the public ``load_model``."""

from __future__ import annotations

import io
import json
import threading
import time

import numpy as np
import pytest
import supervision as sv
from PIL import Image

from inference import DetectionResult, TextResult, load_model
from inference.tasks import TASKS

IMAGE_TASKS = ["image-to-text", "image-text-to-text", "object-detection"]


def _as(kind: str, photo: Image.Image, photo_png: bytes, photo_path: str):
    return {
        "path": photo_path,
        "pil": photo,
        "numpy": np.asarray(photo),
        "bytes": photo_png,
        "file": io.BytesIO(photo_png),
    }[kind]


def test_every_registered_task_has_a_demo_model(demo_dir):
    assert set(demo_dir) == set(TASKS)


@pytest.mark.parametrize("task", IMAGE_TASKS)
@pytest.mark.parametrize("kind", ["path", "pil", "numpy", "bytes", "file"])
def test_image_tasks_accept_every_input_kind(demo_dir, session_engine, photo, photo_png, photo_path, task, kind):
    model = load_model(demo_dir[task], task=task, backend="local", engine=session_engine)
    result = model(_as(kind, photo, photo_png, photo_path))
    reference = model(photo)  # the same pixels, whatever the container
    assert result.source == "local"
    assert result.task == task
    if task == "object-detection":
        assert isinstance(result, DetectionResult)
        np.testing.assert_allclose(result.detections.xyxy, reference.detections.xyxy, atol=1e-3)
        assert result.class_names == reference.class_names
    else:
        assert isinstance(result, TextResult)
        assert result.text == reference.text


def test_text_generation_returns_text_and_token_timings(demo_dir, session_engine):
    gen = load_model(demo_dir["text-generation"], task="text-generation", engine=session_engine)
    result = gen("Write a haiku about the sea", max_new_tokens=12)
    assert isinstance(result, TextResult) and result.text.strip()
    assert result.source == "local" and result.model_id == demo_dir["text-generation"]
    assert 1 <= result.timings.tokens <= 12
    assert result.timings.tokens == result.details["generated_tokens"]
    assert result.timings.tokens_per_s > 0
    assert result.details["finish_reason"] in {"stop", "length"}
    assert result.details["prompt_tokens"] > 5  # the chat template wrapped the prompt


def test_max_new_tokens_bounds_the_output(demo_dir, session_engine):
    gen = load_model(demo_dir["text-generation"], task="text-generation", engine=session_engine)
    short = gen("tell me a story about a dog", max_new_tokens=3, use_chat_template=False)
    longer = gen("tell me a story about a dog", max_new_tokens=12, use_chat_template=False)
    assert short.timings.tokens <= 3
    assert longer.text.startswith(short.text)  # greedy decoding: the longer answer extends the shorter


def test_chat_template_is_applied_by_default_and_can_be_turned_off(demo_dir, session_engine):
    gen = load_model(demo_dir["text-generation"], task="text-generation", engine=session_engine)
    chat = gen("hello", max_new_tokens=4)
    plain = gen("hello", max_new_tokens=4, use_chat_template=False)
    assert chat.details["prompt_tokens"] > plain.details["prompt_tokens"] == 1


def test_sampling_with_a_seed_is_reproducible(demo_dir, session_engine):
    gen = load_model(demo_dir["text-generation"], task="text-generation", engine=session_engine)
    runs = [gen("a cat", max_new_tokens=16, temperature=1.5, seed=seed).text for seed in (7, 7, 8)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_stream_yields_pieces_that_add_up_to_the_result(demo_dir, session_engine):
    gen = load_model(demo_dir["text-generation"], task="text-generation", engine=session_engine)
    stream = gen.stream("Tell me a joke", max_new_tokens=10)
    pieces = list(stream)
    result = stream.result
    assert len(pieces) > 1
    assert "".join(pieces) == result.text
    assert result.text == gen("Tell me a joke", max_new_tokens=10).text  # same greedy answer either way
    assert 0 < result.timings.ttft_ms <= result.timings.total_ms
    assert result.timings.tokens == 10 and result.details["finish_reason"] == "length"


def test_closing_a_stream_stops_generation(demo_dir, session_engine):
    gen = load_model(demo_dir["text-generation"], task="text-generation", engine=session_engine)
    stream = gen.stream("Tell me a long story", max_new_tokens=1000, use_chat_template=False)
    next(stream)
    stream.close()
    list(stream)  # what was already generated drains, then the stream ends
    result = stream.result
    assert result.details["finish_reason"] == "cancelled"
    assert result.timings.tokens < 1000
    deadline = time.monotonic() + 5
    while any(t.name == "inference-generate" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name == "inference-generate" for t in threading.enumerate())


def test_image_text_tasks_stream_too(demo_dir, session_engine, photo):
    vlm = load_model(demo_dir["image-text-to-text"], task="image-text-to-text", engine=session_engine)
    stream = vlm.stream(photo, prompt="What is in the picture?", max_new_tokens=8)
    assert "".join(stream) == stream.result.text == vlm(photo, prompt="What is in the picture?", max_new_tokens=8).text


def test_captioning_with_and_without_prompt(demo_dir, session_engine, photo):
    cap = load_model(demo_dir["image-to-text"], task="image-to-text", engine=session_engine)
    caption = cap(photo, max_new_tokens=8)
    prompted = cap(photo, prompt="a photo of", max_new_tokens=8)
    assert caption.text and prompted.text
    # <s> a photo of </s>: BLIP's tokenizer wraps a prompt as BERT's does ([CLS] a photo of [SEP])
    assert caption.details["prompt_tokens"] == 0 and prompted.details["prompt_tokens"] == 5
    assert caption.text != prompted.text
    assert prompted.timings.tokens == 8  # counted even though BLIP drops a prompt token internally


def test_vision_language_model_answers_prompt_about_image(demo_dir, session_engine, photo, make_photo):
    vlm = load_model(demo_dir["image-text-to-text"], task="image-text-to-text", engine=session_engine)
    answer = vlm(photo, prompt="What colour is the cat?", max_new_tokens=10)
    other_question = vlm(photo, prompt="How many dogs?", max_new_tokens=10)
    assert answer.text and answer.text != other_question.text
    assert answer.details["prompt_tokens"] > 10  # chat template + image tokens


def test_object_detection_returns_supervision_detections(demo_dir, session_engine, photo):
    det = load_model(demo_dir["object-detection"], task="object-detection", engine=session_engine)
    result = det(photo, threshold=0.5)
    detections = result.detections
    assert isinstance(detections, sv.Detections) and len(detections) > 0
    assert detections.xyxy.shape == (len(detections), 4)
    assert (detections.confidence >= 0.5).all()
    assert list(detections.confidence) == sorted(detections.confidence, reverse=True)
    assert set(result.class_names) <= set(det.info.classes)
    assert (detections.xyxy[:, [0, 2]] <= photo.width).all() and (detections.xyxy >= 0).all()
    assert result.image_size == photo.size


def test_threshold_filters_detections(demo_dir, session_engine, photo):
    det = load_model(demo_dir["object-detection"], task="object-detection", engine=session_engine)
    loose, strict = det(photo, threshold=0.1), det(photo, threshold=0.9)
    assert len(strict.detections) < len(loose.detections)
    assert (strict.detections.confidence >= 0.9).all()


def test_boxes_follow_the_input_image_size(demo_dir, session_engine, make_photo):
    det = load_model(demo_dir["object-detection"], task="object-detection", engine=session_engine)
    small = det(make_photo(320, 240), threshold=0.3)
    large = det(make_photo(640, 480), threshold=0.3)
    assert small.image_size == (320, 240) and large.image_size == (640, 480)
    assert large.detections.xyxy.max() > 320  # boxes scaled to the larger image's pixels


def test_annotate_draws_boxes_and_labels(demo_dir, session_engine, photo):
    det = load_model(demo_dir["object-detection"], task="object-detection", engine=session_engine)
    result = det(photo, threshold=0.5)
    before = np.asarray(photo).copy()
    annotated = result.annotate(photo)
    assert annotated.size == photo.size and annotated.mode == "RGB"
    changed = np.any(np.asarray(annotated) != before, axis=-1)
    assert changed.mean() > 0.01  # boxes and label backgrounds were drawn
    assert np.array_equal(np.asarray(photo), before)  # on a copy: the caller's image is untouched
    empty = det(photo, threshold=1.0)
    assert len(empty.detections) == 0
    assert np.array_equal(np.asarray(empty.annotate(photo)), np.asarray(photo))


def test_results_export_to_json(demo_dir, session_engine, photo):
    det = load_model(demo_dir["object-detection"], task="object-detection", engine=session_engine)
    gen = load_model(demo_dir["text-generation"], task="text-generation", engine=session_engine)
    exported = json.loads(json.dumps(det(photo).to_dict()))
    first = exported["detections"][0]
    assert set(first) == {"label", "score", "box"} and set(first["box"]) == {"xmin", "ymin", "xmax", "ymax"}
    assert exported["source"] == "local" and exported["timings"]["total_ms"] > 0
    text = json.loads(json.dumps(gen("hi", max_new_tokens=3).to_dict()))
    assert text["text"] and text["timings"]["tokens"] <= 3


def test_load_time_is_reported_once_and_kept_out_of_latency(demo_dir, engine):
    gen = load_model(demo_dir["text-generation"], task="text-generation", engine=engine)
    assert gen.info.load_ms > 0
    first, second = gen("hi", max_new_tokens=2), gen("hi", max_new_tokens=2)
    assert first.timings.load_ms == gen.info.load_ms
    assert second.timings.load_ms is None
    # A second handle on the cached model loads nothing, so it reports no load time at all.
    again = load_model(demo_dir["text-generation"], task="text-generation", engine=engine)
    assert again.info.load_ms is None and again("hi", max_new_tokens=2).timings.load_ms is None


def test_explicit_dtype_override(demo_dir, engine):
    # Device given explicitly: the same on a GPU box as here.
    gen = load_model(demo_dir["text-generation"], task="text-generation", engine=engine, device="cpu",
                     dtype="bfloat16")
    assert gen.info.dtype == "bfloat16" and gen.info.device == "cpu"
    assert gen("hi", max_new_tokens=3).text
    default = load_model(demo_dir["text-generation"], task="text-generation", engine=engine, device="cpu")
    assert default.info.dtype == "float32"  # fp32 on CPU, and a separate cache entry
    assert len(engine.status()["models"]) == 2
