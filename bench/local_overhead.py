"""How much does ``load_model(...)(...)`` add on top of the bare transformers call it wraps?

For every task: the same loaded model, the same inputs, warm; our call and the bare call alternate
(interleaved, so drift in machine load hits both alike); the median of N runs each. Prints the ratio
ours / bare (target: <= 1.05). Uses the offline demo models unless --models points elsewhere.

    python bench/local_overhead.py [--runs 30] [--models DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from inference import Engine, Settings, load_model  # noqa: E402
from inference.demo_models import build_demo_models  # noqa: E402

PROMPT = "Write a haiku about the sea"
QUESTION = "What is in the picture?"


def photo(width: int = 640, height: int = 480) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def bare_text_generation(loaded, max_new_tokens: int):
    tokenizer, model = loaded.processor, loaded.model

    def call():
        inputs = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    return call


def bare_image_to_text(loaded, image, max_new_tokens: int):
    processor, model = loaded.processor, loaded.model

    def call():
        inputs = processor(images=image, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        return processor.batch_decode(out, skip_special_tokens=True)[0]

    return call


def bare_image_text_to_text(loaded, image, max_new_tokens: int):
    processor, model = loaded.processor, loaded.model

    def call():
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(images=image, text=text, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        return processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]

    return call


def bare_object_detection(loaded, image, threshold: float):
    processor, model = loaded.processor, loaded.model

    def call():
        inputs = processor(images=image, return_tensors="pt")
        with torch.inference_mode():
            outputs = model(**inputs)
        return processor.post_process_object_detection(outputs, threshold=threshold,
                                                       target_sizes=[(image.height, image.width)])[0]

    return call


def measure(ours, bare, runs: int, warmup: int = 3) -> tuple[float, float]:
    for _ in range(warmup):
        ours(), bare()
    ours_times, bare_times = [], []
    for index in range(runs):
        # Alternate which goes first so neither always runs on a "warmer" cache.
        pair = ((ours, ours_times), (bare, bare_times))
        for call, times in (pair if index % 2 == 0 else pair[::-1]):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
    return statistics.median(ours_times) * 1000, statistics.median(bare_times) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--models", help="directory with <task>/ models (default: build demo models)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, (os.cpu_count() or 2)))
    models = args.models or tempfile.mkdtemp(prefix="bench-models-")
    if not args.models:
        build_demo_models(models)
    image = photo()
    n = args.max_new_tokens
    engine = Engine(Settings())
    rows = []
    for task in ("text-generation", "image-to-text", "image-text-to-text", "object-detection"):
        model = load_model(str(Path(models) / task), task=task, backend="local", engine=engine)
        (loaded,) = engine.loaded(model.model_id)
        if task == "text-generation":
            ours, bare = (lambda: model(PROMPT, max_new_tokens=n)), bare_text_generation(loaded, n)
            check = lambda: model(PROMPT, max_new_tokens=n).text == bare()  # noqa: E731
        elif task == "image-to-text":
            ours, bare = (lambda: model(image, max_new_tokens=n)), bare_image_to_text(loaded, image, n)
            check = lambda: model(image, max_new_tokens=n).text == bare()  # noqa: E731
        elif task == "image-text-to-text":
            ours = lambda: model(image, prompt=QUESTION, max_new_tokens=n)  # noqa: E731
            bare = bare_image_text_to_text(loaded, image, n)
            check = lambda: model(image, prompt=QUESTION, max_new_tokens=n).text == bare()  # noqa: E731
        else:
            ours, bare = (lambda: model(image, threshold=0.5)), bare_object_detection(loaded, image, 0.5)
            check = lambda: len(model(image, threshold=0.5).detections) == len(bare()["scores"])  # noqa: E731
        if not check():
            print(f"{task}: our output differs from the bare call; the comparison would be unfair", file=sys.stderr)
            return 1
        ours_ms, bare_ms = measure(ours, bare, args.runs)
        rows.append((task, ours_ms, bare_ms, ours_ms / bare_ms))
    print(f"local overhead: median of {args.runs} interleaved warm runs each, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {n} new tokens, 640x480 image")
    print(f"{'task':20s} {'ours ms':>9s} {'bare ms':>9s} {'extra ms':>9s} {'ratio':>7s}  target <= 1.05")
    worst = 0.0
    for task, ours_ms, bare_ms, ratio in rows:
        worst = max(worst, ratio)
        print(f"{task:20s} {ours_ms:9.2f} {bare_ms:9.2f} {ours_ms - bare_ms:9.2f} {ratio:7.3f}  "
              f"{'ok' if ratio <= 1.05 else 'OVER'}")
    print(f"worst ratio {worst:.3f}")
    engine.close()
    return 0 if worst <= 1.05 else 2


if __name__ == "__main__":
    sys.exit(main())
