"""The local backend: transformers + torch (+ accelerate on GPUs) running models in this process.

Each task family has a runner that knows how to load its model and processor, run a request and parse
the output. torch and transformers are imported inside the functions that need them, so that
``import inference`` stays light.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InferenceError, InvalidInput, ModelLoadError
from .tasks import TaskSpec, ignored_image

if TYPE_CHECKING:
    import supervision as sv
    from PIL import Image

    from .tasks import DetectionParameters, GenerationParameters

__all__ = ["RUNNERS", "LoadedModel", "resolve_device", "resolve_dtype"]

log = logging.getLogger(__name__)

#: Prompt used when a chat vision-language model is asked to caption without a prompt.
DEFAULT_CAPTION_PROMPT = "Describe this image in one sentence."


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


def _load(source: str, spec: TaskSpec, auto_model: str, device: str, dtype: str, load_processor) -> LoadedModel:
    """Load config, model and processor of ``source`` for ``spec``, mapping every failure to ``ModelLoadError``."""
    import torch
    import transformers

    config, location = _load_config(source, spec)
    model_class = getattr(transformers, auto_model)
    if type(config) not in model_class._model_mapping:
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
        processor = load_processor(location)
    except InferenceError:
        raise
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError, ... for broken checkpoints
        raise ModelLoadError(f"model {source!r} could not be loaded: {_first_line(exc)}") from exc
    if device != "cuda":
        model.to(device)
    model.eval()
    classes: tuple[str, ...] = ()
    id2label = getattr(model.config, "id2label", None) or {}
    if spec.family == "object-detection":
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
    import transformers

    from .tasks import TASKS

    config, _ = _load_config(source, None)
    tasks = tuple(
        name for name, spec in TASKS.items()
        if type(config) in getattr(transformers, RUNNERS[spec.family].auto_model)._model_mapping
    )
    id2label = getattr(config, "id2label", None) or {}
    classes = tuple(str(id2label[index]) for index in sorted(id2label)) if "object-detection" in tasks else ()
    return tasks, classes


def _load_config(source: str, spec: TaskSpec | None) -> tuple[Any, str]:
    """The config of ``source`` and where it was found (a directory or a hub id)."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )
    from transformers import AutoConfig

    demo = resolve_demo(source)
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


# --------------------------------------------------------------------------- generation helpers


@functools.cache
def _control_class() -> type:
    """The ``StoppingCriteria`` subclass behind ``_new_control`` (built lazily: transformers is heavy)."""
    from transformers import StoppingCriteria

    class Control(StoppingCriteria):
        """Counts generated tokens and stops early when cancelled.

        ``generate`` calls it once per generated token, whatever the architecture, which makes it the one
        reliable way to know how many of the returned ids are new (BLIP, for one, drops a prompt token).
        """

        def __init__(self) -> None:
            self.steps = 0
            self.cancelled = threading.Event()

        def __call__(self, input_ids, scores, **kwargs):
            import torch

            self.steps += 1
            return torch.full((input_ids.shape[0],), self.cancelled.is_set(), dtype=torch.bool, device=input_ids.device)

    return Control


def _new_control():
    return _control_class()()


def _generate_kwargs(loaded: LoadedModel, params: GenerationParameters, control) -> dict[str, Any]:
    from transformers import StoppingCriteriaList

    kwargs: dict[str, Any] = {
        "max_new_tokens": params.max_new_tokens,
        "stopping_criteria": StoppingCriteriaList([control]),
    }
    if params.temperature > 0:
        kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
        if params.top_k is not None:
            kwargs["top_k"] = params.top_k
    else:
        # Greedy; clear sampling knobs a model's generation_config may carry so transformers does not warn.
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    if params.repetition_penalty is not None:
        kwargs["repetition_penalty"] = params.repetition_penalty
    generation_config = loaded.model.generation_config
    if generation_config.pad_token_id is None and generation_config.eos_token_id is not None:
        eos = generation_config.eos_token_id
        kwargs["pad_token_id"] = eos[0] if isinstance(eos, list) else eos
    if params.seed is not None:
        import torch

        # NOTE: torch's RNG is process-wide; a seed makes a call reproducible when no other sampling
        # call runs at the same moment.
        torch.manual_seed(params.seed)
    return kwargs


def _finish_reason(loaded: LoadedModel, sequence, control, params: GenerationParameters) -> str:
    if control.cancelled.is_set():
        return "cancelled"
    eos = loaded.model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
    if control.steps and int(sequence[-1]) in eos_ids:
        return "stop"
    return "length" if control.steps >= params.max_new_tokens else "stop"


class _Generation:
    """One generate() call, run either to completion or streamed from a background thread."""

    def __init__(self, loaded: LoadedModel, inputs, params: GenerationParameters, tokenizer, prompt_tokens: int):
        self.loaded, self.inputs, self.params = loaded, inputs, params
        self.tokenizer, self.prompt_tokens = tokenizer, prompt_tokens
        self.control = _new_control()
        self.fields: dict[str, Any] = {}  # result fields the backend adds (warnings)

    def run(self) -> tuple[str, dict[str, Any]]:
        import torch

        with torch.inference_mode():
            output = self.loaded.model.generate(**self.inputs, **_generate_kwargs(self.loaded, self.params, self.control))
        new = output[0, output.shape[1] - self.control.steps:] if self.control.steps else output[0, :0]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        return text, self._details(output[0])

    def start(self) -> Iterator[str]:
        """Start generate() in a background thread; returns the text pieces as they are produced.

        ``started_at`` marks the start (for TTFT); ``details`` is set once the pieces are exhausted.
        An error in the thread is re-raised to the reader.
        """
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        failure: list[BaseException] = []
        output: list[Any] = []

        def target() -> None:
            import torch

            try:
                with torch.inference_mode():
                    kwargs = _generate_kwargs(self.loaded, self.params, self.control)
                    output.append(self.loaded.model.generate(**self.inputs, **kwargs, streamer=streamer))
            except BaseException as exc:  # re-raised in the reader's thread
                failure.append(exc)
                streamer.end()

        thread = threading.Thread(target=target, name="inference-generate", daemon=True)
        self.started_at = time.perf_counter()
        thread.start()
        return self._pieces(streamer, thread, failure, output)

    def _pieces(self, streamer, thread: threading.Thread, failure: list, output: list) -> Iterator[str]:
        finished = False
        try:
            for piece in streamer:
                if piece:
                    yield piece
            finished = True
        finally:
            if not finished:
                # The reader stopped early (closed stream, Streamlit rerun): stop generating too.
                self.cancel()
            # NOTE: an abandoned generator is finalized by whichever thread the garbage collector runs in,
            # possibly generate()'s own, which cannot wait for itself (it ends within a token of the cancel).
            if thread is not threading.current_thread():
                thread.join()
        if failure:
            raise _map_runtime_error(failure[0]) from failure[0]
        self.details = self._details(output[0][0])

    def cancel(self) -> None:
        """Ask generate() to stop after the current token."""
        self.control.cancelled.set()

    def _details(self, sequence) -> dict[str, Any]:
        return {
            "finish_reason": _finish_reason(self.loaded, sequence, self.control, self.params),
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.control.steps,
        }


def _map_runtime_error(exc: BaseException) -> BaseException:
    if isinstance(exc, InferenceError):
        return exc
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return InferenceError(
            "the device ran out of memory running this request: lower max_new_tokens, use a smaller image or "
            "model, or unload other models"
        )
    if isinstance(exc, RuntimeError) and "probability tensor contains" in str(exc):
        # Sampling settings that turn the model's scores into infinities (the parameter checks catch the
        # usual ones; a model's own extreme logits can still get here): the caller's values, not a crash.
        return InvalidInput(
            "these sampling settings give the model no valid probabilities to sample from: raise temperature, "
            "raise repetition_penalty towards 1, or use greedy decoding (temperature 0)"
        )
    return exc


def _check_context(loaded: LoadedModel, prompt_tokens: int, params: GenerationParameters) -> None:
    config = loaded.model.config
    config = getattr(config, "text_config", None) or config
    limit = getattr(config, "max_position_embeddings", None)
    if limit and prompt_tokens + params.max_new_tokens > limit:
        raise InvalidInput(
            f"the prompt is {prompt_tokens} tokens and max_new_tokens is {params.max_new_tokens}, "
            f"more than the model's context of {limit} tokens: shorten the prompt or lower max_new_tokens"
        )


def _device_inputs(loaded: LoadedModel, inputs):
    if loaded.device == "cpu" and loaded.dtype == "float32":
        return inputs  # processors already return float32 CPU tensors: moving them would only copy
    import torch
    from transformers import BatchFeature

    if isinstance(inputs, BatchFeature):
        # NOTE: BatchFeature.to() with a dtype casts only floating tensors (pixel values), never token ids.
        return inputs.to(loaded.model.device, dtype=getattr(torch, loaded.dtype))
    return inputs.to(loaded.model.device)  # tokenizer output: ids and masks only


# --------------------------------------------------------------------------- runners


class _Runner:
    """How a task family loads: the transformers Auto classes of its model and of its processor."""

    auto_model: str
    auto_processor: str

    @classmethod
    def load(cls, source: str, spec: TaskSpec, device: str, dtype: str) -> LoadedModel:
        import transformers

        processor = getattr(transformers, cls.auto_processor)
        return _load(source, spec, cls.auto_model, device, dtype, processor.from_pretrained)


class CausalLMRunner(_Runner):
    """text-generation with decoder-only language models (AutoModelForCausalLM)."""

    auto_model, auto_processor = "AutoModelForCausalLM", "AutoTokenizer"

    @staticmethod
    def prepare(loaded: LoadedModel, prompt: str, image: Image.Image | None, params: GenerationParameters) -> _Generation:
        tokenizer = loaded.processor
        use_template = params.use_chat_template
        if use_template is None:
            use_template = bool(getattr(tokenizer, "chat_template", None))
        if use_template:
            if not getattr(tokenizer, "chat_template", None):
                raise InvalidInput(
                    f"model {loaded.source!r} has no chat template: set use_chat_template to false"
                )
            inputs = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt",
                return_dict=True,
            )
        else:
            inputs = tokenizer(prompt, return_tensors="pt")
        prompt_tokens = int(inputs["input_ids"].shape[1])
        _check_context(loaded, prompt_tokens, params)
        return _Generation(loaded, _device_inputs(loaded, inputs), params, tokenizer, prompt_tokens)


class ImageTextRunner(_Runner):
    """image-to-text and image-text-to-text (AutoModelForImageTextToText: BLIP, VisionEncoderDecoder, LLaVA, SmolVLM, ...)."""

    auto_model, auto_processor = "AutoModelForImageTextToText", "AutoProcessor"

    @staticmethod
    def prepare(loaded: LoadedModel, prompt: str | None, image: Image.Image, params: GenerationParameters) -> _Generation:
        processor = loaded.processor
        chat = bool(getattr(processor, "chat_template", None)) and params.use_chat_template is not False
        if chat:
            # Chat vision-language models answer a message holding the image and the question.
            content = [{"type": "image"}, {"type": "text", "text": prompt or DEFAULT_CAPTION_PROMPT}]
            text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
            inputs = processor(images=image, text=text, return_tensors="pt")
        elif prompt:
            if loaded.model.config.is_encoder_decoder:
                raise InvalidInput(
                    f"model {loaded.source!r} is a captioning model that takes no prompt: leave the prompt empty, "
                    "or use a vision-language model for questions about an image"
                )
            # Captioners such as BLIP continue the prompt ("a photo of" → "a photo of a cat").
            inputs = processor(images=image, text=prompt, return_tensors="pt")
        else:
            inputs = processor(images=image, return_tensors="pt")
        prompt_tokens = int(inputs["input_ids"].shape[1]) if "input_ids" in inputs else 0
        _check_context(loaded, prompt_tokens, params)
        tokenizer = getattr(processor, "tokenizer", processor)
        return _Generation(loaded, _device_inputs(loaded, inputs), params, tokenizer, prompt_tokens)


class ObjectDetectionRunner(_Runner):
    """object-detection with DETR-style models (AutoModelForObjectDetection: DETR, YOLOS, RT-DETR, ...)."""

    auto_model, auto_processor = "AutoModelForObjectDetection", "AutoImageProcessor"

    @staticmethod
    def detect(loaded: LoadedModel, image: Image.Image, params: DetectionParameters) -> sv.Detections:
        import supervision as sv
        import torch

        processor = loaded.processor
        inputs = _device_inputs(loaded, processor(images=image, return_tensors="pt"))
        with torch.inference_mode():
            outputs = loaded.model(**inputs)
        # target_sizes is (height, width): boxes come back in the pixels of the image as given.
        found = processor.post_process_object_detection(
            outputs, threshold=params.threshold, target_sizes=[(image.height, image.width)]
        )[0]
        # Best first, and clipped: DETR-style heads may place a box edge outside the picture, while the
        # protocol speaks of image pixels. Done on the small tensors, before the conversion.
        order = found["scores"].argsort(descending=True)
        boxes = found["boxes"][order].float()
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, image.width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, image.height)
        found = {"scores": found["scores"][order].float().cpu(), "labels": found["labels"][order].cpu(),
                 "boxes": boxes.cpu()}
        return sv.Detections.from_transformers(found, id2label=loaded.model.config.id2label)


#: Task family → runner. Every family in tasks.TASKS has one.
RUNNERS: dict[str, type[_Runner]] = {
    "causal-lm": CausalLMRunner,
    "image-text": ImageTextRunner,
    "object-detection": ObjectDetectionRunner,
}


# --------------------------------------------------------------------------- backend


class LocalBackend:
    """Runs requests on a model loaded in this process, through the engine's cache."""

    name = "local"

    def __init__(self, engine, source: str, spec: TaskSpec, device: str | None = None, dtype: str | None = None):
        self.engine, self.source, self.spec = engine, source, spec
        self.device, self.dtype = device, dtype

    def load(self) -> tuple[LoadedModel, float | None]:
        """The loaded model, and the load time when this call loaded it."""
        return self.engine.get(self.source, self.spec, self.device, self.dtype)

    def run(self, request) -> tuple[Any, dict[str, Any]]:
        """Run ``request``; returns (text or detections, result fields: timings parts and details)."""
        loaded, load_ms = self.load()
        started = time.perf_counter()
        try:
            if self.spec.output == "detections":
                output: Any = ObjectDetectionRunner.detect(loaded, request.image, request.parameters)
                fields: dict[str, Any] = {"image_size": request.image.size}
            else:
                generation = self._prepare(loaded, request)
                output, details = generation.run()
                fields = {"details": details}
        except InferenceError:
            raise
        except Exception as exc:
            mapped = _map_runtime_error(exc)
            if mapped is exc:
                raise
            raise mapped from exc
        total_ms = (time.perf_counter() - started) * 1000
        return output, {"total_ms": total_ms, "load_ms": load_ms, **fields, **self._warnings(request)}

    def stream(self, request) -> tuple[Iterator[str], Any, float | None]:
        """Start generating; returns (pieces, handle, load_ms).

        The handle has ``started_at``, ``cancel()``, ``fields`` and, once the pieces are exhausted, ``details``.
        """
        loaded, load_ms = self.load()
        generation = self._prepare(loaded, request)
        generation.fields = self._warnings(request)
        return generation.start(), generation, load_ms

    def _prepare(self, loaded: LoadedModel, request) -> _Generation:
        # A text task's image (which it does not use) is never decoded.
        image = request.image if self.spec.image != "none" else None
        return RUNNERS[self.spec.family].prepare(loaded, request.prompt, image, request.parameters)

    def _warnings(self, request) -> dict[str, Any]:
        if request.image_data is not None and self.spec.image == "none":
            return {"warnings": (ignored_image(self.source, self.spec.name),)}
        return {}

    def info(self) -> dict[str, Any]:
        """Facts about the loaded model for ``ModelInfo``."""
        loaded, _ = self.load()
        return {"device": loaded.device, "dtype": loaded.dtype, "classes": loaded.classes,
                "memory_bytes": loaded.memory_bytes}
