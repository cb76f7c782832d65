"""One validated call: ``make_request`` checks a call's inputs once, for the Python API and the server alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import InvalidInput
from .images import LOCAL_FORMATS, ImageData
from .tasks import TaskSpec, validate_parameters

__all__ = ["Request", "make_request"]


@dataclass(frozen=True)
class Request:
    """One validated call: what the backends receive."""

    spec: TaskSpec
    prompt: str | None
    image_data: ImageData | None
    parameters: Any  # the task's pydantic parameters model
    #: A whole conversation (``{"role", "content"}`` text messages, the last one the user's ``prompt``) for a chat
    #: model's template; None: the prompt alone is the user's message.
    messages: tuple[dict[str, str], ...] | None = None

    @property
    def image(self) -> Any:
        """The decoded ``PIL.Image`` (decoded on first use: a remote call may never need the pixels)."""
        return None if self.image_data is None else self.image_data.image


def make_request(spec: TaskSpec, inputs: Any, prompt: str | None, parameters: dict[str, Any] | None, *,
                 image: Any = None, max_pixels: int, formats: tuple[str, ...] = LOCAL_FORMATS) -> Request:
    """Validate one call's inputs for ``spec``: the same checks for the Python API and the server.

    ``inputs`` is the prompt for text-generation and the image for image tasks. ``image`` is the image of a
    text task (the protocol allows one: a text-only model runs the text and says the image was not used), or
    the image of an image task passed by name. ``formats`` limits the encoded formats accepted (the server
    takes what the wire carries).

    Raises:
        InvalidInput: what is wrong and how to fix it.
    """
    params = validate_parameters(spec, parameters)
    image_data = None
    if spec.image == "required":
        if image is not None:
            if inputs is not None:
                raise InvalidInput("pass the image once: either as the first argument or as image=")
            inputs = image
        if inputs is None:
            raise InvalidInput(f"{spec.name} needs an image: pass a path, PIL.Image, numpy RGB array or bytes")
        image_data = ImageData(inputs, max_pixels=max_pixels, formats=formats)
    else:
        if inputs is not None:
            if prompt is not None:
                raise InvalidInput("pass the prompt once: either as the first argument or as prompt=")
            prompt = inputs
        if image is not None:
            image_data = ImageData(image, max_pixels=max_pixels, formats=formats)
    if spec.prompt == "none":
        if prompt is not None:
            raise InvalidInput(f"{spec.name} takes no prompt: leave it out")
    elif prompt is not None or spec.prompt == "required":
        if not isinstance(prompt, str):
            raise InvalidInput(f"the prompt must be text, got {type(prompt).__name__}")
        _check_unicode(prompt)
        if not prompt.strip():
            if spec.prompt == "required":
                raise InvalidInput(f"the prompt is empty: {spec.name} needs some text to start from")
            prompt = None  # an empty optional prompt means "no prompt" (plain captioning)
    return Request(spec=spec, prompt=prompt, image_data=image_data, parameters=params)


def _check_unicode(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate ("\ud800" in JSON): no tokenizer or UTF-8 writer takes it
        raise InvalidInput(f"the prompt is not valid Unicode: it holds a lone surrogate at character {exc.start}; "
                           "send UTF-8 text") from None
