"""The local backend: transformers + torch (+ accelerate on GPUs) running models in this process.

Each task family has a runner with one interface: ``run(loaded, request)`` gives the output and its details,
``stream(loaded, request)`` a generation to stream (text families). Models come from the engine's cache
(``backends/loading.py`` loads them). torch and transformers are imported inside the functions that need them,
so that ``import inference`` stays light.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import InferenceError, InvalidInput
from ..request import Request
from ..tasks import TaskSpec, ignored_image
from ..types import Raw
from .base import StreamFacts, StreamHandle
from .loading import LoadedModel

if TYPE_CHECKING:
    from ..tasks import GenerationParameters

__all__ = ["RUNNERS", "LocalBackend"]

log = logging.getLogger(__name__)

#: Prompt used when a chat vision-language model is asked to caption without a prompt.
DEFAULT_CAPTION_PROMPT = "Describe this image in one sentence."


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

    def run(self) -> tuple[str, dict[str, Any]]:
        import torch

        with torch.inference_mode():
            output = self.loaded.model.generate(**self.inputs, **_generate_kwargs(self.loaded, self.params, self.control))
        new = output[0, output.shape[1] - self.control.steps:] if self.control.steps else output[0, :0]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        return text, self._details(output[0])

    def start(self, facts: StreamFacts) -> Iterator[str]:
        """Start generate() in a background thread; returns the text pieces as they are produced.

        ``facts.details`` is set once the pieces are exhausted. An error in the thread is re-raised to the reader.
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
        thread.start()
        return self._pieces(streamer, thread, failure, output, facts)

    def _pieces(self, streamer, thread: threading.Thread, failure: list, output: list,
                facts: StreamFacts) -> Iterator[str]:
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
        facts.details = self._details(output[0][0])

    def cancel(self) -> None:
        """Ask generate() to stop after the current token."""
        self.control.cancelled.set()

    def batch_key(self, *, pads: bool) -> tuple:
        """What generations must share to run in one ``generate``: the parameters (sampling never mixes), the
        inputs' names and, for what cannot be padded, every tensor's shape. A seeded request runs alone: its seed
        fixes its own draws, not a batch's."""
        if self.params.seed is not None:
            return (id(self),)
        # A repetition penalty (the request's or the model's) counts every id of the input, padding included, and
        # so does no_repeat_ngram_size: such generations batch with prompts of their own length only.
        config = self.loaded.model.generation_config
        pads = pads and self.params.repetition_penalty in (None, 1.0) and (
            getattr(config, "repetition_penalty", None) in (None, 1.0)
            and not getattr(config, "no_repeat_ngram_size", None))
        shapes = tuple(sorted((name, tuple(value.shape[1:] if pads and name in _TOKEN_INPUTS else value.shape))
                              for name, value in self.inputs.items()))
        return (self.params, shapes)

    def _details(self, sequence) -> dict[str, Any]:
        return {
            "finish_reason": _finish_reason(self.loaded, sequence, self.control, self.params),
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.control.steps,
        }


#: Inputs that hold one entry per token: a batch pads them on the left to the longest prompt.
_TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _generate_together(loaded: LoadedModel, generations: list[_Generation]) -> list[tuple[str, dict[str, Any]]]:
    """One ``generate`` for several generations that share a ``batch_key``; each answer as if it ran alone.

    Prompts of different lengths are padded on the left (their attention masks say which ids are padding, and
    generate derives the positions from them), so every row's new tokens start at the same column. A row that
    ends before the others is cut at its first end-of-sequence token.
    """
    import torch

    first = generations[0]
    pad_id = _pad_token_id(loaded, first.tokenizer)
    inputs = {}
    for name in first.inputs:
        values = [generation.inputs[name] for generation in generations]
        if name in _TOKEN_INPUTS:
            width = max(value.shape[1] for value in values)
            fill = pad_id if name == "input_ids" else 0
            values = [torch.nn.functional.pad(value, (width - value.shape[1], 0), value=fill) for value in values]
        inputs[name] = torch.cat(values)
    control = _new_control()
    with torch.inference_mode():
        output = loaded.model.generate(**inputs, **_generate_kwargs(loaded, first.params, control))
    new = output[:, output.shape[1] - control.steps:] if control.steps else output[:, :0]
    eos = loaded.model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
    answers = []
    for generation, row in zip(generations, new):
        ends = [index for index, token in enumerate(row.tolist()) if token in eos_ids]
        tokens = row[:ends[0] + 1] if ends else row
        finish = "stop" if ends or len(tokens) < generation.params.max_new_tokens else "length"
        text = generation.tokenizer.decode(tokens, skip_special_tokens=True)
        answers.append((text, {"finish_reason": finish, "prompt_tokens": generation.prompt_tokens,
                               "generated_tokens": len(tokens)}))
    return answers


def _pad_token_id(loaded: LoadedModel, tokenizer) -> int:
    """The id left padding uses: the tokenizer's pad token, else the model's, else end-of-sequence (masked out)."""
    for candidate in (getattr(tokenizer, "pad_token_id", None), loaded.model.generation_config.pad_token_id,
                      loaded.model.generation_config.eos_token_id, 0):
        if isinstance(candidate, list):
            candidate = candidate[0] if candidate else None
        if candidate is not None:
            return int(candidate)
    return 0


def _each(function: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """``function`` on each item, its failure (as one of ours where it is one) in that item's place."""
    outcomes = []
    for item in items:
        try:
            with _runtime_errors():
                outcomes.append(function(item))
        except Exception as exc:
            outcomes.append(exc)
    return outcomes


def _together(items: list[Any], key: Callable[[Any], Any], run_group: Callable[[list[Any]], list[Any]],
              alone: Callable[[Any], Any]) -> list[Any]:
    """Run items that share a ``key`` as one group, each answer (or failure) in its item's place.

    A group that fails as a whole runs again one item at a time, so that one bad request fails alone and the
    others still get their answers; an item whose preparation failed (``BaseException`` in its place) stays so.
    """
    outcomes: list[Any] = list(items)
    groups: dict[Any, list[int]] = {}
    for index, item in enumerate(items):
        if not isinstance(item, BaseException):
            try:
                group = key(item)
            except Exception:  # an input no group can describe runs alone
                group = ("alone", index)
            groups.setdefault(group, []).append(index)
    for indices in groups.values():
        members = [items[index] for index in indices]
        if len(members) == 1:
            answers = _each(alone, members)
        else:
            try:
                with _runtime_errors():
                    answers = run_group(members)
            except Exception as exc:
                log.warning("a batch of %d failed (%s): running its requests one at a time", len(members), exc)
                answers = _each(alone, members)
        for index, answer in zip(indices, answers):
            outcomes[index] = answer
    return outcomes


@contextmanager
def _runtime_errors() -> Iterator[None]:
    """A model's failure while running as one of ours (out of memory, impossible sampling), when it is one."""
    try:
        yield
    except InferenceError:
        raise
    except Exception as exc:
        mapped = _map_runtime_error(exc)
        if mapped is exc:
            raise
        raise mapped from exc


def _map_runtime_error(exc: BaseException) -> BaseException:
    if isinstance(exc, InferenceError):
        return exc
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return InferenceError(
            "the device ran out of memory running this request: lower max_new_tokens, use a smaller image or "
            "model, or unload other models"
        )
    from jinja2 import TemplateError

    if isinstance(exc, TemplateError):
        # The model's chat template refused the conversation (Gemma takes no system role; Llama-2 and Mistral want
        # user and assistant turns in turn): the caller's messages, not a crash.
        return InvalidInput(f"the model's chat template refuses these messages: {exc}; change the roles or their "
                            "order, or set use_chat_template to false")
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


class Runner(Protocol):
    """How a task family runs a request on a loaded model."""

    @staticmethod
    def run(loaded: LoadedModel, request: Request) -> tuple[Any, dict[str, Any]]:
        """The output (the codec's kind) and its details."""

    @staticmethod
    def stream(loaded: LoadedModel, request: Request) -> _Generation:
        """A generation ready to ``start`` (text families only)."""

    @staticmethod
    def run_batch(loaded: LoadedModel, requests: list[Request]) -> list[tuple[Any, dict[str, Any]] | Exception]:
        """Each request's ``run`` answer, run together where the family can; a request's failure in its place."""


class _GenerationRunner:
    """A family that generates text: ``run`` generates to the end, ``stream`` hands back the generation."""

    #: Whether prompts of different lengths may share a batch (padded on the left): decoder-only text models.
    #: Image-text models batch equal shapes only: their processors expand image tokens and some (BLIP's
    #: text decoder) place tokens by absolute position, where padding would change the answer.
    pads = False

    @staticmethod
    def prepare(loaded: LoadedModel, request: Request) -> _Generation:
        raise NotImplementedError

    @classmethod
    def run(cls, loaded: LoadedModel, request: Request) -> tuple[str, dict[str, Any]]:
        return cls.prepare(loaded, request).run()

    @classmethod
    def run_batch(cls, loaded: LoadedModel, requests: list[Request]) -> list[tuple[str, dict[str, Any]] | Exception]:
        """One ``generate`` per group of requests with the same parameters (and, unless the family pads, shapes)."""
        prepared = _each(functools.partial(cls.prepare, loaded), requests)
        return _together(prepared, lambda generation: generation.batch_key(pads=cls.pads),
                         functools.partial(_generate_together, loaded), _Generation.run)

    @classmethod
    def stream(cls, loaded: LoadedModel, request: Request) -> _Generation:
        return cls.prepare(loaded, request)


class CausalLMRunner(_GenerationRunner):
    """text-generation with decoder-only language models. A request's image, if any, is never decoded."""

    pads = True

    @staticmethod
    def prepare(loaded: LoadedModel, request: Request) -> _Generation:
        tokenizer, params = loaded.processor, request.parameters
        use_template = params.use_chat_template
        if use_template is None:
            use_template = bool(getattr(tokenizer, "chat_template", None))
        if use_template:
            if not getattr(tokenizer, "chat_template", None):
                raise InvalidInput(
                    f"model {loaded.source!r} has no chat template: set use_chat_template to false"
                )
            conversation = list(request.messages or ({"role": "user", "content": request.prompt},))
            inputs = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_tensors="pt",
                                                   return_dict=True)
        else:
            inputs = tokenizer(request.prompt, return_tensors="pt")
        prompt_tokens = int(inputs["input_ids"].shape[1])
        _check_context(loaded, prompt_tokens, params)
        return _Generation(loaded, _device_inputs(loaded, inputs), params, tokenizer, prompt_tokens)


class ImageTextRunner(_GenerationRunner):
    """image-to-text and image-text-to-text: captioners (BLIP, VisionEncoderDecoder) and chat VLMs (LLaVA, SmolVLM)."""

    @staticmethod
    def prepare(loaded: LoadedModel, request: Request) -> _Generation:
        processor, params, prompt, image = loaded.processor, request.parameters, request.prompt, request.image
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


class ObjectDetectionRunner:
    """object-detection with DETR-style models (DETR, YOLOS, RT-DETR, ...)."""

    @classmethod
    def run(cls, loaded: LoadedModel, request: Request) -> tuple[Any, dict[str, Any]]:
        return cls._detections(loaded, cls._forward(loaded, [cls._inputs(loaded, request)]), 0, request)

    @classmethod
    def run_batch(cls, loaded: LoadedModel, requests: list[Request]) -> list[tuple[Any, dict[str, Any]] | Exception]:
        """One forward per group of images the processor makes the same size (most often: every image of one
        camera); post-processed per image at its own size and threshold. Images of other sizes are not padded
        together: padding changes what models without a pixel mask (YOLOS) see, and so their boxes."""
        inputs = _each(functools.partial(cls._inputs, loaded), requests)
        items = [features if isinstance(features, BaseException) else (features, request)
                 for features, request in zip(inputs, requests)]

        def forward_group(group: list[tuple[Any, Request]]) -> list[tuple[Any, dict[str, Any]]]:
            outputs = cls._forward(loaded, [features for features, _ in group])
            return [cls._detections(loaded, outputs, row, request) for row, (_, request) in enumerate(group)]

        return _together(items, lambda item: tuple((name, tuple(value.shape)) for name, value in item[0].items()),
                         forward_group, lambda item: forward_group([item])[0])

    @staticmethod
    def _inputs(loaded: LoadedModel, request: Request):
        return _device_inputs(loaded, loaded.processor(images=request.image, return_tensors="pt"))

    @staticmethod
    def _forward(loaded: LoadedModel, inputs: list):
        import torch

        batch = inputs[0] if len(inputs) == 1 else {name: torch.cat([features[name] for features in inputs])
                                                     for name in inputs[0]}
        with torch.inference_mode():
            return loaded.model(**batch)

    @staticmethod
    def _detections(loaded: LoadedModel, outputs, row: int, request: Request) -> tuple[Any, dict[str, Any]]:
        import supervision as sv

        image, processor = request.image, loaded.processor
        size = outputs.logits.shape[0]
        if size > 1:  # this image's row of a batch's outputs (its tensors; auxiliary lists are not post-processed)
            outputs = type(outputs)(**{name: value[row:row + 1] for name, value in outputs.items()
                                       if getattr(value, "shape", None) and value.shape[0] == size})
        # target_sizes is (height, width): boxes come back in the pixels of the image as given.
        found = processor.post_process_object_detection(
            outputs, threshold=request.parameters.threshold, target_sizes=[(image.height, image.width)]
        )[0]
        # Best first, and clipped: DETR-style heads may place a box edge outside the picture, while the
        # protocol speaks of image pixels. Done on the small tensors, before the conversion.
        order = found["scores"].argsort(descending=True)
        boxes = found["boxes"][order].float()
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, image.width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, image.height)
        found = {"scores": found["scores"][order].float().cpu(), "labels": found["labels"][order].cpu(),
                 "boxes": boxes.cpu()}
        return sv.Detections.from_transformers(found, id2label=loaded.model.config.id2label), {}

    @staticmethod
    def stream(loaded: LoadedModel, request: Request) -> _Generation:
        raise InvalidInput(f"{request.spec.name} has no text to stream: call the model instead")


#: Task family → runner. Every family in tasks.TASKS has one (and its Auto classes in loading.AUTO_CLASSES).
RUNNERS: dict[str, type[Runner]] = {
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

    def run(self, request: Request) -> Raw:
        started = time.perf_counter()
        loaded, load_ms, started = self._load_from(started)
        with _runtime_errors():
            output, details = RUNNERS[self.spec.family].run(loaded, request)
        return Raw(output=output, elapsed_ms=(time.perf_counter() - started) * 1000, load_ms=load_ms,
                   details=details, warnings=self._warnings(request))

    def run_batch(self, requests: list[Request]) -> list[Raw | Exception]:
        """Each request's ``run``, run together where the family can (``Runner.run_batch``): one answer or failure
        per request, in order. Each answer's ``elapsed_ms`` is the batch's: every request waited for all of it."""
        started = time.perf_counter()
        loaded, load_ms, started = self._load_from(started)
        outcomes = RUNNERS[self.spec.family].run_batch(loaded, requests)
        elapsed_ms = (time.perf_counter() - started) * 1000
        return [outcome if isinstance(outcome, Exception) else
                Raw(output=outcome[0], elapsed_ms=elapsed_ms, load_ms=load_ms, details=outcome[1],
                    warnings=self._warnings(request))
                for outcome, request in zip(outcomes, requests)]

    def stream(self, request: Request) -> StreamHandle:
        started = time.perf_counter()
        loaded, load_ms, started = self._load_from(started)
        with _runtime_errors():
            generation = RUNNERS[self.spec.family].stream(loaded, request)
        facts = StreamFacts(load_ms=load_ms, warnings=self._warnings(request))
        return StreamHandle(generation.start(facts), started=started, cancel=generation.cancel, facts=facts)

    def _load_from(self, started: float) -> tuple[LoadedModel, float | None, float]:
        """``load()`` for a call that began at ``started``, and when the call's clock starts: ``load_ms`` before the
        model was there. NOTE: a call that waited for another call's load reports no load (that wait is the other
        call's load_ms); the engine's clean-up after a load (evictions) is no part of either."""
        loaded, load_ms = self.load()
        now = time.perf_counter()
        return loaded, load_ms, now if load_ms is None else now - load_ms / 1000

    def _warnings(self, request: Request) -> tuple[str, ...]:
        if request.image_data is not None and self.spec.image == "none":
            return (ignored_image(self.source, self.spec.name),)
        return ()

    def info(self) -> dict[str, Any]:
        loaded, _ = self.load()
        return {"device": loaded.device, "dtype": loaded.dtype, "classes": loaded.classes,
                "memory_bytes": loaded.memory_bytes}

    def close(self) -> None:
        """Nothing to let go of: the model stays in the engine's cache (``Engine.unload`` frees it)."""
