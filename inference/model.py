"""``load_model`` and the ``Model`` handle it returns: one callable per model, whatever the backend.

A call is: validate (``make_request``) → run on the backend (a ``Raw``) → ``Timings.from_raw`` → the task codec's
result. The backend is chosen once, by the backend-selection table (``select_backend``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

from .engine import Engine, get_engine
from .errors import InvalidInput, ModelLoadError, RemoteNotConfigured
from .request import Request, make_request
from .settings import DEFAULT_ENDPOINT, Settings
from .tasks import TaskSpec, get_task
from .types import ModelInfo, Raw, Result, TextStream, Timings
from .video import Tracker, VideoFrameResult, VideoReader

if TYPE_CHECKING:
    from .backends.base import Backend

__all__ = ["Model", "load_model", "select_backend"]

#: "auto", "local", "remote" (the REMOTE_INFERENCE_* endpoint) or the name of a configured endpoint.
BackendChoice = Literal["auto", "local", "remote"] | str


def load_model(
    model_id: str,
    task: str,
    backend: BackendChoice = "auto",
    *,
    settings: Settings | None = None,
    engine: Engine | None = None,
    device: str | None = None,
    dtype: str | None = None,
    use_remote: bool = False,
) -> Model:
    """Get a callable model for ``task``, running locally or on the remote endpoint.

    Args:
        model_id: a Hugging Face model id (``"hustvl/yolos-tiny"``) or a local directory.
        task: ``"text-generation"``, ``"image-to-text"``, ``"image-text-to-text"`` or ``"object-detection"``.
        backend: ``"local"``, ``"remote"``, ``"auto"`` (local when remote inference is disabled), or the name of an
            endpoint configured in ``Settings.endpoints`` (``[endpoints.NAME]`` in secrets.toml).
        settings: configuration; default: the environment (see ``Settings``).
        engine: the engine whose model cache to use; default: the process-wide one.
        device, dtype: override ``settings.device`` / ``settings.dtype`` for a local model.
        use_remote: ask the remote endpoint to forward the request to *its* remote (gateway mode).

    Returns:
        A ``Model``: call it for a result, ``.stream()`` it for text pieces.

    Raises:
        UnsupportedTask: unknown task. ModelLoadError: the model cannot be loaded locally.
        RemoteNotConfigured: backend="remote" without REMOTE_INFERENCE_ENABLED and an endpoint.

    Backend selection: "local" runs here; "remote" needs remote inference enabled and an
    endpoint; "auto" runs here when remote is off, else here if the model loads, else remotely, and
    records why on ``Model.backend_reason`` and every result.

    Example:
        >>> det = load_model("hustvl/yolos-tiny", task="object-detection", backend="local")
        >>> det("street.jpg", threshold=0.5).detections
    """
    spec = get_task(task)
    if not isinstance(backend, str) or not backend:
        raise InvalidInput(f"backend {backend!r} is not 'auto', 'local', 'remote' or the name of an endpoint")
    if not isinstance(model_id, str) or not model_id.strip():
        raise InvalidInput("model_id is empty: pass a Hugging Face model id such as 'hustvl/yolos-tiny' or a directory")
    engine = engine or get_engine()
    settings = settings or engine.settings
    model_id = model_id.strip()
    chosen, reason, load_ms = select_backend(engine, settings, model_id, spec, backend, device=device, dtype=dtype,
                                             use_remote=use_remote)
    return Model(model_id, spec, chosen, settings=settings, backend_reason=reason, load_ms=load_ms)


def select_backend(engine: Engine, settings: Settings, model_id: str, spec: TaskSpec, choice: BackendChoice, *,
                   device: str | None = None, dtype: str | None = None, use_remote: bool = False
                   ) -> tuple[Backend, str | None, float | None]:
    """The backend-selection table: (backend, why it was chosen for "auto", load time if it loaded).

    A local model is loaded here, so that a bad model id fails in ``load_model`` and not on the first call.
    """
    from .backends import protocol_backend
    from .backends.local import LocalBackend

    def remote(name: str = DEFAULT_ENDPOINT) -> Backend:
        endpoint = settings.endpoint(name)
        client = engine.remote_client(settings, name)
        backend_class = protocol_backend(client.probe())  # "auto": asked once per process, then remembered
        return backend_class(client, endpoint.served_name(model_id), spec, use_remote=use_remote)

    if choice not in ("auto", "local", DEFAULT_ENDPOINT):
        names = [endpoint.name for endpoint in settings.endpoints]
        if choice not in names:
            raise InvalidInput(f"backend {choice!r} is not one of auto, local, remote or a configured endpoint "
                               f"(configured: {', '.join(names) or 'none'}; add [endpoints.{choice}] to "
                               ".streamlit/secrets.toml or INFERENCE_ENDPOINTS)")
        chosen = remote(choice)  # a named endpoint: configuring it is the opt-in
        if settings.endpoint(choice).protocol == "auto":
            protocol = engine.remote_client(settings, choice).protocol
            return chosen, f"endpoint {choice!r} speaks the {protocol} protocol (found by probing)", None
        return chosen, None, None
    local = LocalBackend(engine, model_id, spec, device, dtype)
    if choice == "local":
        return local, None, local.load()[1]
    if choice == "remote":
        if not settings.remote_configured:
            raise RemoteNotConfigured(_not_configured(settings))
        return remote(), None, None
    if not settings.remote_configured:
        why = "remote inference is disabled" if not settings.remote_enabled else "no remote endpoint is set"
        return local, f"ran locally: {why}", local.load()[1]
    try:
        load_ms = local.load()[1]
    except ModelLoadError as exc:
        return remote(), f"ran remotely: the model cannot run here ({exc})", None
    return local, "ran locally: the model loads on this machine", load_ms


class Model:
    """A model ready to be called. Create it with ``load_model``."""

    def __init__(self, model_id: str, spec: TaskSpec, backend: Backend, *, settings: Settings,
                 backend_reason: str | None = None, load_ms: float | None = None) -> None:
        self.model_id = model_id
        self.spec = spec
        self.settings = settings
        self.backend_reason = backend_reason
        self._backend = backend
        self._load_ms = load_ms  # the load load_model did: on ``info`` always, on the first result once
        self._pending_load_ms = load_ms
        self._info: ModelInfo | None = None

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
            self._info = ModelInfo(model_id=self.model_id, task=self.spec.name, backend=self._backend.name,
                                   load_ms=self._load_ms, backend_reason=self.backend_reason, **self._backend.info())
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
        return self._result(self._backend.run(request), request)

    def stream(self, inputs: Any = None, /, *, prompt: str | None = None, image: Any = None,
               **parameters: Any) -> TextStream:
        """Generate text piece by piece; ``stream.result`` holds the full result with TTFT once done.

        Example:
            >>> for piece in gen.stream("Tell me a joke", max_new_tokens=40):
            ...     print(piece, end="")
        """
        if not self.spec.codec.streams:
            raise InvalidInput(f"{self.spec.name} has no text to stream: call the model instead")
        request = self._request(inputs, prompt, image, parameters)
        handle = self._backend.stream(request)
        return TextStream(handle, lambda text: self._result(handle.raw(text), request), handle.cancel)

    def video(self, source: Any, /, *, threshold: float = 0.5, track: bool = True, stride: int = 1,
              max_edge: int | None = 640, in_flight: int | None = None, max_bytes: int | None = None,
              max_seconds: float | None = None) -> Iterator[VideoFrameResult]:
        """Detect (and track) objects in a video, frame by frame, on this model's backend.

        The clip is decoded one frame at a time and never held whole; stopping the loop closes the file.

        Args:
            source: an MP4, WebM or MOV file (path, bytes or binary file).
            threshold: the detections' minimum confidence.
            track: give each box a ``tracker_id`` that follows its object (ByteTrack, from ``trackers``).
            stride: run every ``stride``-th frame (2 halves the work).
            max_edge: scale frames down to this many pixels on their long edge first (None keeps them).
            in_flight: frames sent before the first answer is awaited (1 to 16). Default: 1 locally, 4 on a
                remote backend, so that the network's round trip does not cap the frames per second. Results
                still come in the clip's order.
            max_bytes, max_seconds: the largest file and longest clip accepted (default: the settings'
                ``INFERENCE_MAX_VIDEO_BYTES``, 200 MiB, and ``INFERENCE_MAX_VIDEO_SECONDS``, 600 s).

        Example:
            >>> for frame in det.video("clip.mp4", threshold=0.5):
            ...     print(frame.index, frame.result.detections.tracker_id, frame.result.timings.total_ms)
        """
        if self.spec.name != "object-detection":
            raise InvalidInput(f"video runs object detection; {self.model_id!r} does {self.spec.name}")
        in_flight = in_flight if in_flight is not None else (1 if self._backend.name == "local" else 4)
        if not 1 <= in_flight <= 16:
            raise InvalidInput(f"in_flight must be between 1 and 16, not {in_flight}")
        reader = VideoReader(source, max_bytes=max_bytes or self.settings.max_video_bytes,
                             max_seconds=max_seconds or self.settings.max_video_seconds,
                             max_pixels=self.settings.max_image_pixels)
        frames = reader.frames(stride=stride, max_edge=max_edge)
        pool = None
        pending: deque = deque()
        try:
            tracker = Tracker(reader.info.fps / stride, threshold=threshold) if track else None
            pool = ThreadPoolExecutor(in_flight, thread_name_prefix="inference-video") if in_flight > 1 else None
            for frame in frames:
                if pool is None:
                    yield self._video_frame(frame, self(frame.image, threshold=threshold), tracker)
                    continue
                pending.append((frame, pool.submit(self, frame.image, threshold=threshold)))
                if len(pending) >= in_flight:
                    frame, answer = pending.popleft()
                    yield self._video_frame(frame, answer.result(), tracker)
            while pending:
                frame, answer = pending.popleft()
                yield self._video_frame(frame, answer.result(), tracker)
        finally:
            frames.close()
            reader.close()
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)  # a stop ends at once; calls in flight finish alone

    @staticmethod
    def _video_frame(frame, result: Result, tracker: Tracker | None) -> VideoFrameResult:
        if tracker is not None:  # in the clip's order, whatever order the answers came in
            result = replace(result, detections=tracker.update(result.detections))
        return VideoFrameResult(frame.index, frame.time_s, frame.image, result)

    def _request(self, inputs: Any, prompt: str | None, image: Any, parameters: dict[str, Any]) -> Request:
        return make_request(self.spec, inputs, prompt, parameters, image=image,
                            max_pixels=self.settings.max_image_pixels)

    def _result(self, raw: Raw, request: Request) -> Result:
        earlier_load_ms, self._pending_load_ms = self._pending_load_ms, None  # reported once
        image_size = request.image_data.size if request.image_data is not None else None
        return self.spec.codec.result(
            raw, image_size=image_size, model_id=self.model_id, task=self.spec.name, source=self._backend.name,
            timings=Timings.from_raw(raw, earlier_load_ms=earlier_load_ms), backend_reason=self.backend_reason,
            attempts=raw.attempts, bytes_sent=raw.bytes_sent, details=dict(raw.details), warnings=raw.warnings,
        )

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
