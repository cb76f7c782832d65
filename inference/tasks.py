"""The task registry: what each task takes, which parameters it accepts, and what its output is.

Adding a task is adding a ``TaskSpec`` here: its parameters, its inputs, its output's codec (``codecs.py``) and
its model family (a family's local runner lives in ``backends/local.py``, its loading in ``backends/loading.py``).
Nothing in this module imports torch.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from .codecs import DETECTIONS, TEXT, Codec
from .errors import InvalidInput, UnsupportedTask

__all__ = [
    "TASKS",
    "DetectionParameters",
    "GenerationParameters",
    "ImageTextParameters",
    "TaskSpec",
    "get_task",
    "ignored_image",
    "validate_parameters",
]

#: Longest generation we accept; beyond this a request is almost certainly a typo.
MAX_NEW_TOKENS = 4096


#: Sampling temperatures below this are refused: near 0 they divide the scores into infinities (1e-300 crashed
#: sampling), and what such a value means is greedy decoding, which is temperature 0.
MIN_TEMPERATURE = 0.01
#: Longest excerpt of a bad value an error message repeats (a client may send megabytes).
ECHO_CHARS = 80


class _Parameters(BaseModel):
    # NOTE: extra="forbid" turns a typo such as max_tokens into an error instead of a silent default.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_coercion(cls, value: Any, info: ValidationInfo) -> Any:
        """Numbers must be numbers and flags flags: no ``true`` as 1, no ``"5"`` as 5, no ``1`` as true.

        Lax mode stays for the rest, so 5.0 is 5 and numpy scalars work from Python.
        """
        annotation = cls.model_fields[info.field_name].annotation
        if value is None:
            return value
        if annotation in (bool, bool | None):
            if not isinstance(value, bool):
                raise ValueError(f"should be true or false, got {type(value).__name__}")
        elif isinstance(value, (bool, str, bytes)):
            kind = "integer" if annotation in (int, int | None) else "number"
            raise ValueError(f"should be a valid {kind}, got {type(value).__name__}")
        return value


class GenerationParameters(_Parameters):
    """Parameters of text generation (also the base of image-to-text)."""

    max_new_tokens: int = Field(64, ge=1, le=MAX_NEW_TOKENS, description="how many tokens to generate at most")
    temperature: float = Field(0.0, ge=0.0, le=5.0, description="0 = greedy decoding, above 0 = sampling")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass, used when temperature > 0")
    top_k: int | None = Field(None, ge=0, description="sample from the k most likely tokens, with temperature > 0")
    repetition_penalty: float | None = Field(None, ge=0.01, le=10.0, description="above 1 discourages repeats")
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="fixes sampling for reproducible output")
    use_chat_template: bool | None = Field(
        None, description="wrap the prompt in the model's chat template; default: when the model has one"
    )

    @field_validator("temperature")
    @classmethod
    def _sampling_temperature(cls, value: float) -> float:
        if 0 < value < MIN_TEMPERATURE:
            raise ValueError(f"must be 0 (greedy) or at least {MIN_TEMPERATURE}")
        return value


class ImageTextParameters(GenerationParameters):
    """Parameters of image-to-text and image-text-to-text."""

    max_new_tokens: int = Field(40, ge=1, le=MAX_NEW_TOKENS, description="how many tokens to generate at most")


class DetectionParameters(_Parameters):
    """Parameters of object detection."""

    threshold: float = Field(0.5, ge=0.0, le=1.0, description="minimum confidence, between 0 and 1")


@dataclass(frozen=True)
class TaskSpec:
    """What a task is, independent of where it runs."""

    name: str
    #: Tasks of one family share a loaded model (captioning and prompted captioning use the same weights).
    family: Literal["causal-lm", "image-text", "object-detection"]
    parameters: type[_Parameters]
    image: Literal["required", "none"]
    prompt: Literal["required", "optional", "none"]
    #: What the output is, and how it travels and becomes a result.
    codec: Codec
    description: str
    #: The hub model the app and the server use when none is given.
    default_model: str

    @property
    def output(self) -> str:
        """What the task answers: ``"text"`` or ``"detections"`` (its codec's name)."""
        return self.codec.name


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("text-generation", "causal-lm", GenerationParameters, image="none", prompt="required",
                 codec=TEXT, description="continue or answer a text prompt",
                 default_model="HuggingFaceTB/SmolLM2-135M-Instruct"),
        TaskSpec("image-to-text", "image-text", ImageTextParameters, image="required", prompt="optional",
                 codec=TEXT, description="caption an image; with a prompt, answer it about the image",
                 default_model="Salesforce/blip-image-captioning-base"),
        TaskSpec("image-text-to-text", "image-text", ImageTextParameters, image="required", prompt="optional",
                 codec=TEXT, description="answer a prompt about an image (vision-language chat models)",
                 default_model="HuggingFaceTB/SmolVLM-256M-Instruct"),
        TaskSpec("object-detection", "object-detection", DetectionParameters, image="required", prompt="none",
                 codec=DETECTIONS, description="find objects with boxes, labels and confidences",
                 default_model="hustvl/yolos-tiny"),
    )
}


def get_task(name: str) -> TaskSpec:
    """The spec of task ``name``.

    Raises:
        UnsupportedTask: the name is not a known task; the message lists the known ones.
    """
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        hint = difflib.get_close_matches(str(name), TASKS, n=1)
        did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
        raise UnsupportedTask(
            f"unsupported task {name!r}.{did_you_mean} Supported tasks: {', '.join(sorted(TASKS))}"
        ) from None


def ignored_image(model_id: str, task: str) -> str:
    """The warning a text result carries when its request's image was not used (a text-only model ran it)."""
    return (f"the image was not used: {model_id!r} runs {task}, which takes no image; pick a vision-language "
            "model (image-text-to-text) to ask about an image")


def validate_parameters(task: str | TaskSpec, parameters: dict[str, Any] | None) -> _Parameters:
    """Check ``parameters`` for ``task`` and fill in defaults.

    Raises:
        InvalidInput: an unknown parameter or a value out of range, with the valid range in the message.
    """
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    try:
        return spec.parameters.model_validate(parameters or {})
    except ValidationError as exc:
        raise InvalidInput(_describe(spec, exc)) from None


def _describe(spec: TaskSpec, exc: ValidationError) -> str:
    known = spec.parameters.model_fields
    problems = []
    for error in exc.errors():
        name = ".".join(str(part) for part in error["loc"]) or "parameters"
        if error["type"] == "extra_forbidden":
            hint = difflib.get_close_matches(name, known, n=1) if len(name) <= ECHO_CHARS else []
            did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
            problems.append(
                f"unknown parameter {_excerpt(name)}{did_you_mean}; {spec.name} accepts {', '.join(known)}"
            )
            continue
        field = known.get(name)
        what = f" ({field.description})" if field is not None and field.description else ""
        problems.append(f"{name}={_excerpt(error.get('input'))}: {error['msg'].lower().removeprefix('value error, ')}"
                        f"{what}")
    return "invalid parameters for " + spec.name + ": " + "; ".join(problems)


def _excerpt(value: Any) -> str:
    """``repr(value)``, cut to ``ECHO_CHARS``: an error message says which value, it does not send it back."""
    try:
        text = repr(value)
    except RecursionError:
        return f"<a {type(value).__name__} nested too deeply to show>"
    return text if len(text) <= ECHO_CHARS else f"{text[:ECHO_CHARS]}… ({len(text):,} characters)"
