"""The engine's model cache: loads once under concurrency, stays within its budget, really frees memory."""

from __future__ import annotations

import gc
import threading
import weakref

import psutil
import pytest

from inference import Engine, ModelLoadError, Settings, get_engine, load_model
from inference.backends import loading
from inference.engine import _trim_heap


@pytest.fixture
def count_loads(monkeypatch):
    """Count real loads per family (the real loader still runs; a short pause widens the race window)."""
    counts: dict[str, int] = {}
    original = loading.load

    def counting(source, spec, device, dtype):
        counts[spec.family] = counts.get(spec.family, 0) + 1
        threading.Event().wait(0.2)
        return original(source, spec, device, dtype)

    monkeypatch.setattr(loading, "load", counting)
    return counts


def test_concurrent_first_use_loads_once(demo_dir, engine, count_loads):
    start = threading.Barrier(8)
    models, errors = [], []

    def worker():
        try:
            start.wait()
            model = load_model(demo_dir["object-detection"], task="object-detection", engine=engine)
            models.append(model)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert count_loads == {"object-detection": 1}
    assert len(engine.loaded()) == 1
    assert sum(model.info.load_ms is not None for model in models) == 1  # one of them did the loading


@pytest.mark.parametrize("round_", range(3))
def test_every_family_loads_from_many_threads_at_once(demo_dir, round_):
    # Different models loading at the same moment in one process once left parameters on the meta device
    # ("Cannot copy out of meta tensor") and the model unusable until restart.
    from inference.tasks import TASKS

    failures = []
    with Engine(Settings()) as engine:

        def load(task: str) -> None:
            try:
                engine.get(demo_dir[task], TASKS[task])
            except Exception as exc:  # noqa: BLE001 - every failure is the finding
                failures.append(f"{task}: {exc}")

        threads = [threading.Thread(target=load, args=(task,)) for task in list(demo_dir) * 3]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        assert len(engine.loaded()) == len(demo_dir)  # each demo model once, whatever the number of threads


def test_concurrent_calls_on_one_model(demo_dir, engine, photo):
    det = load_model(demo_dir["object-detection"], task="object-detection", engine=engine)
    expected = det(photo).class_names
    results: list[list[str]] = []
    threads = [threading.Thread(target=lambda: results.append(det(photo).class_names)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 6


def test_both_image_text_tasks_share_one_loaded_model(demo_dir, engine, count_loads, photo):
    cap = load_model(demo_dir["image-to-text"], task="image-to-text", engine=engine)
    ask = load_model(demo_dir["image-to-text"], task="image-text-to-text", engine=engine)
    assert cap(photo, max_new_tokens=3).text and ask(photo, prompt="a photo of", max_new_tokens=3).text
    assert count_loads == {"image-text": 1}


def test_failed_load_is_not_cached(demo_dir, engine, tmp_path):
    broken = tmp_path / "later"
    with pytest.raises(ModelLoadError, match="no such directory"):
        load_model(str(broken), task="text-generation", engine=engine)
    import shutil

    shutil.copytree(demo_dir["text-generation"], broken)
    assert load_model(str(broken), task="text-generation", engine=engine)("hi", max_new_tokens=2).text


def test_status_lists_loaded_models(demo_dir):
    with Engine(Settings(device="cpu")) as engine:  # on the CPU whatever the machine has: float32 by default
        load_model(demo_dir["object-detection"], task="object-detection", engine=engine)
        status = engine.status()
    assert status["device"] == "cpu"
    (entry,) = status["models"]
    assert entry["model_id"] == demo_dir["object-detection"]
    assert entry["device"] == "cpu" and entry["dtype"] == "float32"
    assert entry["memory_bytes"] > 100_000 and status["used_bytes"] == entry["memory_bytes"]
    assert entry["classes"][:3] == ["person", "bicycle", "car"]
    # A default budget that leaves the machine room and still holds the model.
    assert entry["memory_bytes"] < status["budget_bytes"] < psutil.virtual_memory().total


def _size_of(model_dir: str, dtype: str) -> int:
    with Engine(Settings()) as scratch:
        return load_model(model_dir, task="text-generation", engine=scratch, dtype=dtype).info.memory_bytes


def test_least_recently_used_model_is_evicted_over_budget(demo_dir):
    path = demo_dir["text-generation"]
    full, half = _size_of(path, "float32"), _size_of(path, "bfloat16")
    with Engine(Settings(max_model_memory=full + half + half // 2)) as engine:
        fp32 = load_model(path, task="text-generation", engine=engine, dtype="float32")
        load_model(path, task="text-generation", engine=engine, dtype="bfloat16")
        fp32("hi", max_new_tokens=1)  # fp32 is now the most recently used
        load_model(path, task="text-generation", engine=engine, dtype="float16")
        assert {m.dtype for m in engine.loaded()} == {"float32", "float16"}
        assert engine.status()["used_bytes"] <= engine.budget_bytes()


def test_evicted_model_reloads_and_reports_load_time_again(demo_dir, photo):
    path = demo_dir["object-detection"]
    with Engine(Settings(max_model_memory=1)) as engine:  # room for one model at a time (or less)
        det = load_model(path, task="object-detection", engine=engine)
        det(photo)
        load_model(demo_dir["text-generation"], task="text-generation", engine=engine)
        assert [m.family for m in engine.loaded()] == ["causal-lm"]  # the detector was evicted
        again = det(photo)
        assert again.timings.load_ms is not None and again.detections is not None


def test_model_larger_than_budget_still_loads(demo_dir):
    with Engine(Settings(max_model_memory=1)) as engine:
        gen = load_model(demo_dir["text-generation"], task="text-generation", engine=engine)
        assert gen("hi", max_new_tokens=2).text


def test_budget_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("INFERENCE_MAX_MODEL_MEMORY", "2GiB")
    assert Engine().budget_bytes() == 2 * 1024**3


def _rss() -> int:
    gc.collect()
    _trim_heap()
    return psutil.Process().memory_info().rss


@pytest.mark.slow
def test_unload_really_frees_memory(big_text_model, engine):
    before = _rss()
    gen = load_model(big_text_model, task="text-generation", engine=engine)
    size = gen.info.memory_bytes
    assert gen("hello", max_new_tokens=2).text is not None
    loaded = _rss()
    model_ref = weakref.ref(engine.loaded()[0].model)
    assert loaded - before > 0.5 * size  # the load itself took the memory we will free

    assert engine.unload(big_text_model) == 1
    after = _rss()
    assert model_ref() is None  # nothing holds the model any more
    assert engine.status()["models"] == []
    assert loaded - after > 0.7 * size, f"RSS went {before:,} → {loaded:,} → {after:,} for a {size:,}-byte model"


@pytest.fixture(scope="module")
def big_text_model(tmp_path_factory, demo_dir):
    """A ~130 MB random Llama: large enough for RSS to show whether unload frees it."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("big-model")
    tokenizer = AutoTokenizer.from_pretrained(demo_dir["text-generation"])
    config = LlamaConfig(vocab_size=32_000, hidden_size=512, intermediate_size=2048, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=512,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)
    with torch.device("meta"):
        LlamaForCausalLM(config)  # fail fast on a bad config before allocating
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    gc.collect()
    return str(out)


def test_get_engine_is_one_per_process():
    assert get_engine() is get_engine()


def test_unload_all_and_close(demo_dir):
    engine = Engine(Settings())
    load_model(demo_dir["text-generation"], task="text-generation", engine=engine)
    load_model(demo_dir["object-detection"], task="object-detection", engine=engine)
    assert engine.unload() == 2
    engine.close()
    assert engine.loaded() == []
