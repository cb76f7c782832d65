"""``load_model`` and the ``Model`` handle it returns: one callable per model, whatever the backend."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from .errors import InvalidInput, RemoteNotConfigured
from .images import LOCAL_FORMATS, ImageData
from .settings import Settings
from .tasks import TaskSpec, get_task, validate_parameters
from .types import DetectionResult, ModelInfo, Result, TextResult, TextStream, Timings

__all__ = ["Model", "Request", "load_model", "make_request"]

Backend = Literal["auto", "local", "remote"]
_BACKENDS = ("auto", "local", "remote")


@dataclass(frozen=True)
class Request:
    """One validated call: what the backends receive."""

    spec: TaskSpec
    prompt: str | None
    image_data: ImageData | None
    parameters: Any  # the task's pydantic parameters model

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


def load_model(
    model_id: str,
    task: str,
    backend: Backend = "auto",
    *,
    settings: Settings | None = None,
    engine: Any = None,
    device: str | None = None,
    dtype: str | None = None,
    use_remote: bool = False,
) -> Model:
    """Get a callable model for ``task``, running locally or on the remote endpoint.

    Args:
        model_id: a Hugging Face model id (``"hustvl/yolos-tiny"``) or a local directory.
        task: ``"text-generation"``, ``"image-to-text"``, ``"image-text-to-text"`` or ``"object-detection"``.
        backend: ``"local"``, ``"remote"`` or ``"auto"`` (local when remote inference is disabled).
        settings: configuration; default: the environment (see ``Settings``).
        engine: the engine whose model cache to use; default: the process-wide one.
        device, dtype: override ``settings.device`` / ``settings.dtype`` for a local model.
        use_remote: ask the remote endpoint to forward the request to *its* remote (gateway mode).

    Returns:
        A ``Model``: call it for a result, ``.stream()`` it for text pieces.

    Raises:
        UnsupportedTask: unknown task. ModelLoadError: the model cannot be loaded locally.
        RemoteNotConfigured: backend="remote" without REMOTE_INFERENCE_ENABLED and an endpoint.

    Backend selection (DESIGN.md): "local" runs here; "remote" needs remote inference enabled and an
    endpoint; "auto" runs here when remote is off, else here if the model loads, else remotely, and
    records why on ``Model.backend_reason`` and every result.

    Example:
        >>> det = load_model("hustvl/yolos-tiny", task="object-detection", backend="local")
        >>> det("street.jpg", threshold=0.5).detections
    """
    from .engine import get_engine

    spec = get_task(task)
    if backend not in _BACKENDS:
        raise InvalidInput(f"backend {backend!r} is not one of {', '.join(_BACKENDS)}")
    if not isinstance(model_id, str) or not model_id.strip():
        raise InvalidInput("model_id is empty: pass a Hugging Face model id such as 'hustvl/yolos-tiny' or a directory")
    engine = engine or get_engine()
    settings = settings or engine.settings
    return Model(model_id.strip(), spec, backend, settings=settings, engine=engine, device=device, dtype=dtype,
                 use_remote=use_remote)


class Model:
    """A model ready to be called. Create it with ``load_model``."""

    def __init__(self, model_id: str, spec: TaskSpec, backend: Backend, *, settings: Settings, engine: Any,
                 device: str | None = None, dtype: str | None = None, use_remote: bool = False) -> None:
        self.model_id = model_id
        self.spec = spec
        self.settings = settings
        self._engine = engine
        self._pending_load_ms: float | None = None
        self._backend, self.backend_reason = self._select_backend(backend, device, dtype, use_remote)
        self._info: ModelInfo | None = None

    def _load_local(self, local) -> None:
        # Load now, so a bad model id fails in load_model and not on the first call.
        _, self._pending_load_ms = local.load()

    def _select_backend(self, backend: Backend, device: str | None, dtype: str | None, use_remote: bool):
        """The backend-selection table of DESIGN.md; returns (backend, reason)."""
        from .errors import ModelLoadError
        from .local import LocalBackend

        settings = self.settings
        local = LocalBackend(self._engine, self.model_id, self.spec, device, dtype)
        if backend == "local":
            self._load_local(local)
            return local, None
        if backend == "remote":
            if not settings.remote_configured:
                raise RemoteNotConfigured(_not_configured(settings))
            return self._remote(use_remote), None
        # auto
        if not settings.remote_configured:
            why = "remote inference is disabled" if not settings.remote_enabled else "no remote endpoint is set"
            self._load_local(local)
            return local, f"ran locally: {why}"
        try:
            self._load_local(local)
        except ModelLoadError as exc:
            return self._remote(use_remote), f"ran remotely: the model cannot run here ({exc})"
        return local, "ran locally: the model loads on this machine"

    def _remote(self, use_remote: bool):
        from .remote import RemoteBackend

        return RemoteBackend(self._engine.remote_client(self.settings), self.model_id, self.spec,
                             use_remote=use_remote)

    # ------------------------------------------------------------------ calling

    @property
    def task(self) -> str:
        return self.spec.name

    @property
    def backend(self) -> str:
        """Where this model runs: ``"local"`` or ``"remote"``."""
        return self._backend.name

    @property
    def info(self) -> ModelInfo:
        """What the model is and where it runs."""
        if self._info is None or self._backend.name == "local":
            facts = self._backend.info()
            self._info = ModelInfo(
                model_id=self.model_id, task=self.spec.name, backend=self._backend.name,
                load_ms=self._info.load_ms if self._info else self._pending_load_ms,
                backend_reason=self.backend_reason, **facts,
            )
        return self._info

    def __call__(self, inputs: Any = None, /, *, prompt: str | None = None, image: Any = None,
                 **parameters: Any) -> Result:
        """Run the model once.

        Args:
            inputs: the prompt for text-generation; the image (path, PIL.Image, numpy RGB array or bytes)
                for image tasks.
            prompt: the question for image-to-text / image-text-to-text (optional there).
            image: an image for text-generation: a remote vision-language model answers about it; a text-only
                model runs the text, and the result's ``warnings`` say the image was not used.
            parameters: task parameters, e.g. ``max_new_tokens=32`` or ``threshold=0.5``.

        Returns:
            ``TextResult`` for text outputs, ``DetectionResult`` for object detection.

        Raises:
            InvalidInput: a bad image, prompt or parameter; the message says which and why.
        """
        request = self._request(inputs, prompt, image, parameters)
        output, fields = self._backend.run(request)
        return self._result(output, fields)

    def stream(self, inputs: Any = None, /, *, prompt: str | None = None, image: Any = None,
               **parameters: Any) -> TextStream:
        """Generate text piece by piece; ``stream.result`` holds the full result with TTFT once done.

        Example:
            >>> for piece in gen.stream("Tell me a joke", max_new_tokens=40):
            ...     print(piece, end="")
        """
        if self.spec.output != "text":
            raise InvalidInput(f"{self.spec.name} has no text to stream: call the model instead")
        return self.run_stream(self._request(inputs, prompt, image, parameters))

    def run_stream(self, request: Request) -> TextStream:
        """Stream an already validated ``Request`` (what the reference server does)."""
        pieces, handle, load_ms = self._backend.stream(request)
        first: list[float] = []

        def timed() -> Any:
            for piece in pieces:
                if not first:
                    first.append(time.perf_counter())
                yield piece

        def finish(text: str) -> TextResult:
            total_ms = (time.perf_counter() - handle.started_at) * 1000
            details = dict(getattr(handle, "details", {}) or {})
            fields = {"total_ms": total_ms, "load_ms": load_ms, "details": details,
                      "ttft_ms": (first[0] - handle.started_at) * 1000 if first else None,
                      **getattr(handle, "fields", {})}
            return self._result(text, fields)

        return TextStream(timed(), finish, handle.cancel)

    # ------------------------------------------------------------------ helpers

    def _request(self, inputs: Any, prompt: str | None, image: Any, parameters: dict[str, Any]) -> Request:
        return make_request(self.spec, inputs, prompt, parameters, image=image,
                            max_pixels=self.settings.max_image_pixels)

    def run(self, request: Request) -> Result:
        """Run an already validated ``Request`` (what the reference server does)."""
        output, fields = self._backend.run(request)
        return self._result(output, fields)

    def _result(self, output: Any, fields: dict[str, Any]) -> Result:
        timing_names = Timings.__dataclass_fields__
        timings = {key: fields.pop(key) for key in list(fields) if key in timing_names}
        tokens = fields.get("details", {}).get("generated_tokens")
        if self.spec.output == "text" and isinstance(tokens, int):
            # tokens per second over the whole call (prefill included), the same for every backend
            timings["tokens"] = tokens
            timings["tokens_per_s"] = round(tokens / (timings["total_ms"] / 1000), 2) if timings["total_ms"] > 0 else None
        if timings.get("load_ms") is None and self._pending_load_ms is not None:
            timings["load_ms"] = self._pending_load_ms
        self._pending_load_ms = None  # reported once
        common = dict(model_id=self.model_id, task=self.spec.name, source=self._backend.name,
                      backend_reason=self.backend_reason, timings=Timings(**timings), **fields)
        if self.spec.output == "detections":
            return DetectionResult(detections=output, **common)
        return TextResult(text=output, **common)

    def take_load_ms(self) -> float | None:
        """Claim the pending load time (so no result reports it); e.g. when a server warms a model up."""
        load_ms, self._pending_load_ms = self._pending_load_ms, None
        return load_ms

    def __repr__(self) -> str:
        return f"<Model {self.model_id!r} task={self.spec.name!r} backend={self._backend.name!r}>"


def _not_configured(settings: Settings) -> str:
    missing = []
    if not settings.remote_enabled:
        missing.append("REMOTE_INFERENCE_ENABLED=true")
    if not settings.remote_endpoints:
        missing.append("REMOTE_INFERENCE_ENDPOINT=<url of the /inference endpoint>")
    return ("the remote backend is not configured: set " + " and ".join(missing)
            + " (and REMOTE_INFERENCE_TOKEN if the endpoint needs one), in the environment or in "
            ".streamlit/secrets.toml")
