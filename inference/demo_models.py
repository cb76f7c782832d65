"""Tiny random-weight models for every task, built offline in seconds.

    python -m inference.demo_models ./demo-models

writes ``./demo-models/<task>/`` for text-generation, image-to-text, image-text-to-text and
object-detection (without a directory: the default one, ``INFERENCE_DEMO_MODELS_DIR`` or
``~/.cache/inference-studio/demo-models``). Models in the default directory have short names everywhere a
person sees them: ``load_model("demo/object-detection", task="object-detection")``. Each is a real transformers model (Llama, BLIP, LLaVA, YOLOS) with a tokenizer
trained here with ``tokenizers`` and image processors built in code, so every loading and inference
code path runs for real; only the weights are random, so the outputs are nonsense.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from .backends.loading import (
    DEMO_PREFIX,
    DEMO_TASKS,
    MODEL_BUILD_LOCK,
    default_demo_dir,
    demo_name,
    model_libraries,
    resolve_demo,
)

__all__ = [
    "DEMO_MARKER",
    "DEMO_PREFIX",
    "DEMO_TASKS",
    "build_demo_models",
    "default_demo_dir",
    "demo_name",
    "hub_reachable",
    "is_cached",
    "is_demo_model",
    "resolve_demo",
]

#: File written into every demo model directory; the app uses it to label outputs as random.
DEMO_MARKER = "inference_studio_demo.json"
#: Detector classes (a COCO subset, so the annotated output looks familiar).
DEMO_CLASSES = ("person", "bicycle", "car", "dog", "cat", "cup", "bottle", "chair")

# A small public-domain-style corpus: the tokenizer's vocabulary is every word in it.
_CORPUS = """
the a an of and to in on with for is are was were it this that these those there here
cat cats dog dogs person people man woman child car cars bicycle bus street road city tree trees
cup mug coffee tea table chair bottle window door house room sky cloud clouds sun water sea river
sitting standing walking running lying looking holding wearing riding parked small large red blue
green black white brown yellow old new two three many some photo picture image of near next behind
front top under over quick lazy fox jumps brown bright dark morning evening night day light shadow
write haiku poem story joke tell me about what how why who where when which describe colour color
user assistant system yes no hello world please thank you answer question see can could would
"""
_SPECIAL = ["<unk>", "<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<image>"]
_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|> {{ message['role'] }} "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image> {% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %} <|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)
_SEED = 1234
#: Written into the marker: a demo directory of another version is built again (its models changed).
_VERSION = 2
# Random weights drawn wider than transformers' default (0.02), so outputs vary with the input
# instead of repeating one token or one box: the demo should look alive.
_INIT_RANGE = 0.4


def _tokenizer(*, wrap: bool = False):
    """The demo vocabulary's tokenizer; ``wrap`` adds ``<s> … </s>`` around every text, as BERT-style ones do."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins words with single spaces
    trainer = trainers.WordLevelTrainer(special_tokens=_SPECIAL, min_frequency=1, show_progress=False)
    tokenizer.train_from_iterator(_CORPUS.split("\n"), trainer)
    if wrap:
        ids = [(token, tokenizer.token_to_id(token)) for token in ("<s>", "</s>")]
        tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=ids)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"},
    )
    fast.chat_template = _CHAT_TEMPLATE
    return fast


def _text_config(tokenizer, **extra):
    return dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, initializer_range=_INIT_RANGE, **extra,
    )


def _build_text_generation(out: Path, tokenizer) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(**_text_config(tokenizer)))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _build_image_to_text(out: Path, tokenizer) -> None:
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessorPil, BlipProcessor

    text = _text_config(tokenizer, encoder_hidden_size=64, sep_token_id=tokenizer.eos_token_id)
    # BLIP's decoder falls into repeating one word with wide weights; its default init varies nicely.
    del text["num_key_value_heads"], text["initializer_range"]
    vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  image_size=64, patch_size=16)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=64))
    # NOTE: BLIP's generate() replaces a prompt's first token by BOS and drops its last (BERT's [CLS] … [SEP]):
    # a prompt tokenized without them lost its words, and a one-word prompt became empty and crashed.
    processor = BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": 64, "width": 64}),
                              tokenizer=_tokenizer(wrap=True))
    model.save_pretrained(out)
    processor.save_pretrained(out)


def _build_image_text_to_text(out: Path, tokenizer) -> None:
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=64, intermediate_size=128,
                           num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8,
                           projection_dim=64, initializer_range=_INIT_RANGE),
        text_config=dict(model_type="llama", **_text_config(tokenizer)),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default", vision_feature_layer=-1,
    )
    model = LlavaForConditionalGeneration(config)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=_CHAT_TEMPLATE,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)


def _build_object_detection(out: Path, tokenizer) -> None:
    import torch
    from transformers import YolosConfig, YolosForObjectDetection, YolosImageProcessorPil

    config = YolosConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=[96, 128],
        patch_size=16, num_detection_tokens=20,
        id2label=dict(enumerate(DEMO_CLASSES)), label2id={name: i for i, name in enumerate(DEMO_CLASSES)},
    )
    model = YolosForObjectDetection(config)
    # Default init makes every detection token identical and every score "no object". Spread them so the
    # demo shows several boxes of several classes above the default threshold of 0.5.
    with torch.no_grad():
        model.vit.embeddings.detection_tokens.normal_(0.0, 1.0)
        for layer in model.class_labels_classifier.layers:
            layer.weight.normal_(0.0, 3.0 / layer.in_features**0.5)
        model.class_labels_classifier.layers[-1].bias[-1] = -2.0  # the "no object" logit
        for layer in model.bbox_predictor.layers:
            layer.weight.normal_(0.0, 1.5 / layer.in_features**0.5)
        model.bbox_predictor.layers[-1].bias.copy_(torch.tensor([0.0, 0.0, -1.2, -1.2]))  # boxes ~20% wide
        projection = model.vit.embeddings.patch_embeddings.projection.weight
        projection.normal_(0.0, 3.0 / projection[0].numel() ** 0.5)  # let the image move the outputs
    model.save_pretrained(out)
    YolosImageProcessorPil(size={"shortest_edge": 96, "longest_edge": 128}).save_pretrained(out)


_BUILDERS = {
    "text-generation": _build_text_generation,
    "image-to-text": _build_image_to_text,
    "image-text-to-text": _build_image_text_to_text,
    "object-detection": _build_object_detection,
}


def build_demo_models(directory: str | Path, tasks: tuple[str, ...] = DEMO_TASKS, *, force: bool = False
                      ) -> dict[str, Path]:
    """Write a tiny random-weight model for each task into ``directory/<task>``.

    An existing, complete model directory is kept unless ``force``. Returns task → directory.
    """
    directory = Path(directory).expanduser()
    if not force and all(_built_version(directory / task) == _VERSION for task in tasks):
        return {task: directory / task for task in tasks}  # nothing to build: torch and transformers stay unimported
    torch, _ = model_libraries()
    from transformers.utils import logging as hf_logging

    directory.mkdir(parents=True, exist_ok=True)
    built: dict[str, Path] = {}
    tokenizer = None
    previous = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        for task in tasks:
            out = directory / task
            built[task] = out
            if not force and _built_version(out) == _VERSION:
                continue
            tokenizer = tokenizer or _tokenizer()
            out.mkdir(parents=True, exist_ok=True)
            with MODEL_BUILD_LOCK:  # building a model is not safe beside a load in another thread
                torch.manual_seed(_SEED)
                _BUILDERS[task](out, tokenizer)
            # Written last: a directory with the marker is complete.
            (out / DEMO_MARKER).write_text(json.dumps({
                "task": task, "random_weights": True, "version": _VERSION,
                "note": "Tiny model with random weights built by inference.demo_models: the pipeline is real, "
                        "the output is not meaningful.",
            }, indent=2))
    finally:
        if previous:
            hf_logging.enable_progress_bar()
    return built


def _built_version(path: Path) -> int | None:
    try:
        return json.loads((path / DEMO_MARKER).read_text()).get("version", 1)
    except (OSError, ValueError, AttributeError):
        return None


def is_demo_model(model_id: str | Path) -> bool:
    """True when ``model_id`` (a demo name or a directory) is a complete demo model (its outputs are random)."""
    path = resolve_demo(str(model_id)) or Path(model_id).expanduser()
    return (path / DEMO_MARKER).is_file()


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether models can be downloaded from the Hugging Face Hub right now (False when HF_HUB_OFFLINE is set)."""
    import httpx

    from .settings import parse_flag

    try:
        offline = parse_flag(os.environ.get("HF_HUB_OFFLINE", ""))
    except ValueError:
        offline = False  # huggingface_hub reads it the same lenient way
    if offline:
        return False
    try:
        httpx.head(os.environ.get("HF_ENDPOINT", "https://huggingface.co"), timeout=timeout)
    except httpx.HTTPError:
        return False
    return True


def is_cached(model_id: str) -> bool:
    """Whether ``model_id`` (a hub id) is in the local Hugging Face cache, so it loads offline."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(model_id, "config.json"), str)
    except Exception:  # an id the hub would reject is not cached either
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference.demo_models", description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", nargs="?", help="where to write <task>/ model directories "
                        "(default: INFERENCE_DEMO_MODELS_DIR or ~/.cache/inference-studio/demo-models)")
    parser.add_argument("--task", action="append", choices=DEMO_TASKS, help="build only this task (repeatable)")
    parser.add_argument("--force", action="store_true", help="rebuild models that already exist")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    directory = Path(args.directory).expanduser() if args.directory else default_demo_dir()
    built = build_demo_models(directory, tuple(args.task or DEMO_TASKS), force=args.force)
    for task, path in built.items():
        print(f"{task:20s} {path}")
    task = next(iter(built))
    name = demo_name(task) if directory.resolve() == default_demo_dir().resolve() else str(built[task])
    print(f"built in {time.perf_counter() - started:.1f} s; load one with load_model({name!r}, task={task!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
