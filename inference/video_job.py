"""One clip through one or several detectors at once: what the detection page's Video source and Compare run.

Each model gets a thread of its own over the same clip (same stride and resolution cap, hence the same frames):
it decodes, detects, tracks, annotates and encodes one frame at a time (``Model.video``), writes the annotated
video and one JSON line per frame to ``directory``, and keeps figures a UI polls (frames done, frames per second,
latency percentiles, the latest annotated frame). A model never waits for another, so each one's frames per second
are its own. Against a reference model, every frame is matched box by box as soon as both have it. ``stop()`` ends
every thread after the frame it is on; the files written so far stay valid. Each model is called once on the
first frame before the clip starts (a model loads on its first call, locally or on a server), so its load is not
counted in its frames/s and latency.

    job = VideoJob({"local": local_det, "remote": remote_det}, "clip.mp4", directory=out, reference="local").start()
    while not job.wait(0.2):
        print(job.columns["remote"].frames_per_second)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .annotate import annotate_detections, detections_to_list, labels_for
from .compare import detection_parity
from .errors import InferenceError
from .types import DetectionResult
from .video import Frame, VideoInfo, VideoReader, VideoWriter, fitted_size

__all__ = ["FrameParity", "FrameStat", "LiveDetector", "VideoColumn", "VideoJob"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrameStat:
    """One frame of one model: where it is in the clip, its latency (and the server's part) and its boxes."""

    index: int
    time_s: float
    latency_ms: float
    server_ms: float | None
    boxes: int


@dataclass(frozen=True)
class FrameParity:
    """One frame's boxes of a model against the reference's: matched (same label, IoU >= 0.5) or on one side only."""

    index: int
    other: str
    matched: int
    only_reference: int
    only_other: int

    @property
    def agree(self) -> bool:
        return not self.only_reference and not self.only_other


@dataclass
class VideoColumn:
    """One model's run over the clip, as it goes: read its fields under ``VideoJob.lock`` (or once it is done)."""

    name: str
    video_path: Path
    lines_path: Path
    frames: list[FrameStat] = field(default_factory=list)
    #: The last annotated frame (RGB), for a live view.
    latest: np.ndarray | None = None
    #: Every track id given so far (empty when the run is not tracked).
    track_ids: set[int] = field(default_factory=set)
    error: InferenceError | None = None
    #: The warm-up call's time (the first call, which also loads the model where it runs): not in the figures.
    warmup_ms: float | None = None
    started_s: float | None = None
    last_frame_s: float | None = None
    finished: bool = False

    @property
    def frames_per_second(self) -> float | None:
        """Frames done per second of this model's run, from its start to its latest frame."""
        if not self.frames or self.started_s is None or self.last_frame_s is None:
            return None
        elapsed = self.last_frame_s - self.started_s
        return len(self.frames) / elapsed if elapsed > 0 else None

    def latency_ms(self, percentile: float) -> float | None:
        """A percentile (0-100) of the per-frame latency."""
        if not self.frames:
            return None
        return float(np.percentile([frame.latency_ms for frame in self.frames], percentile))

    @property
    def has_video(self) -> bool:
        return bool(self.frames) and self.finished and self.video_path.exists() and self.video_path.stat().st_size > 0


class VideoJob:
    """Detection (and tracking) on ``clip`` with every model of ``models`` at once, each in its own thread.

    The clip is checked when the job is made, its first frame decoded (``InvalidInput`` for a file that is no video,
    over the size or length limits of the first model's settings, ...); a model's failure mid-clip is its column's
    ``error`` and spares the others.

    Args:
        models: column name → a detection ``Model`` (local, remote or a named endpoint).
        clip: the video file.
        directory: where each column's ``<name>.mp4`` (or ``.webm``) and ``<name>.jsonl`` go.
        reference: the column every other is matched with, frame by frame (None: no parity).
        threshold, track, stride, max_edge: as ``Model.video`` takes them.
        suffix: ``.mp4`` (H.264) or ``.webm`` (VP9) for the annotated videos.
        idle_stop_s: stop when nobody has called ``touch()`` for this many seconds (a UI that polls the job calls
            it; its page closed, the job ends instead of running the whole clip for no one). None: never.
    """

    def __init__(self, models: Mapping[str, Any], clip: str | Path, *, directory: str | Path,
                 reference: str | None = None, threshold: float = 0.5, track: bool = True, stride: int = 1,
                 max_edge: int | None = 640, suffix: str = ".mp4", idle_stop_s: float | None = None) -> None:
        if not models:
            raise InferenceError("a video job needs at least one model")
        self.models = dict(models)
        self.clip = Path(clip)
        self.options = {"threshold": threshold, "track": track, "stride": stride, "max_edge": max_edge}
        settings = next(iter(self.models.values())).settings
        with VideoReader(self.clip, max_bytes=settings.max_video_bytes, max_seconds=settings.max_video_seconds,
                         max_pixels=settings.max_image_pixels) as reader:
            self.info: VideoInfo = reader.info
            frames = reader.frames(max_edge=max_edge)
            with contextlib.closing(frames):
                self._first: Frame = next(frames)  # every column's warm-up call
        self.reference = reference if reference in self.models and len(self.models) > 1 else None
        directory = Path(directory)
        self.columns = {name: VideoColumn(name, directory / f"{_file_name(name)}{suffix}",
                                          directory / f"{_file_name(name)}.jsonl") for name in self.models}
        self.parity: list[FrameParity] = []
        self.lock = threading.Lock()
        self._waiting: dict[str, dict[int, DetectionResult]] = {name: {} for name in self.models}
        self._matched: dict[int, int] = {}  # frame → columns matched with the reference's frame so far
        self._stop = threading.Event()
        self.idle_stop_s = idle_stop_s
        self._touched = time.monotonic()
        #: True when the job stopped itself because nobody watched it (``idle_stop_s``).
        self.unwatched = False
        self._threads = [threading.Thread(target=self._run, args=(name,), name=f"inference-video-{name}", daemon=True)
                         for name in self.models]

    @property
    def expected_frames(self) -> int | None:
        """Frames each model will run, when the clip's header says how many it has."""
        stride = self.options["stride"]
        return math.ceil(self.info.frames / stride) if self.info.frames else None

    @property
    def output_fps(self) -> float:
        return self.info.fps / self.options["stride"]

    def start(self) -> VideoJob:
        for thread in self._threads:
            thread.start()
        return self

    def touch(self) -> None:
        """Say that someone still watches the job (see ``idle_stop_s``)."""
        self._touched = time.monotonic()

    def stop(self) -> None:
        """Ask every model to end after the frame it is on (``wait`` to know when they have)."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds for every model to finish; True when all have."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return self.done

    @property
    def done(self) -> bool:
        return all(not thread.is_alive() for thread in self._threads)

    def _run(self, name: str) -> None:
        column, model = self.columns[name], self.models[name]
        try:
            self._warm_up(column, model)
            if self._stop.is_set():
                return
            column.started_s = time.perf_counter()
            frames = model.video(self.clip, **self.options)
            with contextlib.closing(frames), VideoWriter(column.video_path, self.output_fps) as writer, \
                    column.lines_path.open("w", encoding="utf-8") as lines:
                for frame in frames:
                    if self.idle_stop_s is not None and time.monotonic() - self._touched > self.idle_stop_s:
                        self.unwatched = True
                        self._stop.set()
                    if self._stop.is_set():
                        break
                    result: DetectionResult = frame.result
                    detections = result.detections
                    annotated = np.asarray(annotate_detections(frame.image, detections,
                                                               labels=labels_for(detections)))
                    writer.write(annotated)
                    lines.write(json.dumps(_frame_line(frame.index, frame.time_s, result)) + "\n")
                    stat = FrameStat(frame.index, frame.time_s, result.timings.total_ms, result.timings.server_ms,
                                     len(detections))
                    with self.lock:
                        column.frames.append(stat)
                        column.latest = annotated
                        column.last_frame_s = time.perf_counter()
                        if detections.tracker_id is not None:
                            column.track_ids.update(int(track) for track in detections.tracker_id if track >= 0)
                        self._match(name, frame.index, result)
        except InferenceError as exc:
            column.error = exc
        except Exception as exc:  # a bug: said in the column, logged with its traceback, the other columns go on
            log.exception("the video run of %s failed", name)
            column.error = InferenceError(f"the video run failed: {type(exc).__name__}: {exc}")
        finally:
            column.finished = True

    def _warm_up(self, column: VideoColumn, model: Any) -> None:
        """One call on the clip's first frame before the clip: it loads the model where it runs (a remote server
        loads on its first request), so that a model's load is not counted in its frames/s and latency."""
        started = time.perf_counter()
        model(self._first.image, threshold=self.options["threshold"])
        column.warmup_ms = (time.perf_counter() - started) * 1000

    def _match(self, name: str, index: int, result: DetectionResult) -> None:
        """Match this frame with the reference's (or, for the reference, with every column's that has it)."""
        if self.reference is None:
            return
        if name != self.reference:
            reference = self._waiting[self.reference].get(index)
            if reference is None:
                self._waiting[name][index] = result
                return
            self._add_parity(index, name, reference, result)
            self._forget_reference(index)
            return
        self._waiting[name][index] = result
        for other in self.models:
            if other != name and index in self._waiting[other]:
                self._add_parity(index, other, result, self._waiting[other].pop(index))
        self._forget_reference(index)

    def _add_parity(self, index: int, other: str, reference: DetectionResult, result: DetectionResult) -> None:
        parity = detection_parity(reference, result)
        self.parity.append(FrameParity(index, other, len(parity.matched), len(parity.only_a), len(parity.only_b)))
        self._matched[index] = self._matched.get(index, 0) + 1

    def _forget_reference(self, index: int) -> None:
        """Drop the reference's frame once every other column has been matched with it."""
        if self._matched.get(index, 0) >= len(self.models) - 1:
            self._waiting[self.reference].pop(index, None)
            self._matched.pop(index, None)


def _frame_line(index: int, time_s: float, result: DetectionResult) -> dict[str, Any]:
    """A frame as one JSON line: its index and time, latency, and each box with its label, score and track id."""
    detections = result.detections
    boxes = detections_to_list(detections)
    tracks = detections.tracker_id if detections.tracker_id is not None else [-1] * len(boxes)
    for box, track in zip(boxes, tracks, strict=True):
        box["track_id"] = int(track) if track >= 0 else None  # None: not tracked (yet: its first frame, or at all)
    return {"frame": index, "time_s": round(time_s, 3), "latency_ms": round(result.timings.total_ms, 1),
            "server_ms": None if result.timings.server_ms is None else round(result.timings.server_ms, 1),
            "detections": boxes}


def _file_name(name: str) -> str:
    return "".join(char if char.isalnum() or char in "-_." else "_" for char in name)


class LiveDetector:
    """Detection and tracking on a live stream, frame by frame (the Live camera: each frame a camera sends).

    ``process`` takes an RGB frame and returns it annotated, with track ids; the stream calls it from its own thread,
    one frame at a time. The backend's call runs in a thread of this detector's, and ``process`` waits for it at
    most ``frame_timeout_s``: a slower answer (a hung endpoint) and any failure leave the frame as it came, with the
    reason in ``snapshot()``, and frames that come while the backend is still busy pass through unannotated. So the
    stream never stalls on the backend. The figures cover the last ``window`` frames; frames per second fall to 0
    when no frame has been done for 3 s.
    """

    def __init__(self, model: Any, *, threshold: float = 0.5, track: bool = True, max_edge: int | None = 640,
                 fps: float = 30.0, window: int = 120, frame_timeout_s: float = 5.0) -> None:
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        from .video import Tracker

        self.model, self.threshold, self.max_edge, self.frame_timeout_s = model, threshold, max_edge, frame_timeout_s
        self._tracker = Tracker(fps, threshold=threshold) if track else None
        self._caller = ThreadPoolExecutor(1, thread_name_prefix="inference-live")
        self._pending = None
        self._lock = threading.Lock()
        self._latency: deque[float] = deque(maxlen=window)
        self._done: deque[float] = deque(maxlen=window)
        self.frames = 0
        self.error: str | None = None

    def warm_up(self) -> float:
        """One call on a blank frame, which loads the model where it runs (a server loads on its first request);
        returns its milliseconds. Raises the backend's ``InferenceError``."""
        edge = self.max_edge or 640
        started = time.perf_counter()
        self.model(np.zeros((edge * 9 // 16, edge, 3), dtype=np.uint8), threshold=self.threshold)
        return (time.perf_counter() - started) * 1000

    def process(self, image: np.ndarray) -> np.ndarray:
        from concurrent.futures import TimeoutError as FutureTimeout

        image = _fit(image, self.max_edge)
        if self._pending is not None and not self._pending.done():
            return image  # the backend is still on an earlier frame
        try:
            self._pending = self._caller.submit(self._detect, image)
        except RuntimeError:  # closed (replaced by a detector with other settings): the frame passes
            return image
        try:
            return self._pending.result(timeout=self.frame_timeout_s)
        except FutureTimeout:
            self._fail(f"the backend took over {self.frame_timeout_s:g} s for one frame: frames pass unannotated "
                       "until it answers")
            return image
        except Exception:  # cancelled by close(): the frame passes; the stream must never see an exception
            return image

    def _detect(self, image: np.ndarray) -> np.ndarray:
        try:
            result: DetectionResult = self.model(image, threshold=self.threshold)
            detections = self._tracker.update(result.detections) if self._tracker is not None else result.detections
            annotated = np.asarray(annotate_detections(image, detections, labels=labels_for(detections)))
        except InferenceError as exc:
            self._fail(f"{type(exc).__name__}: {exc}")
            return image
        except Exception as exc:  # a bug: the stream goes on, the page says it, the log has the traceback
            log.exception("a live frame failed")
            self._fail(f"{type(exc).__name__}: {exc}")
            return image
        with self._lock:
            self.frames += 1
            self.error = None
            self._latency.append(result.timings.total_ms)
            self._done.append(time.perf_counter())
        return annotated

    def _fail(self, reason: str) -> None:
        with self._lock:
            self.error = reason

    def snapshot(self) -> dict[str, Any]:
        """frames (all so far), frames_per_second, p50_ms and p95_ms (of the recent ones), error (or None)."""
        with self._lock:
            latency, done = list(self._latency), list(self._done)
            out: dict[str, Any] = {"frames": self.frames, "error": self.error}
        if done and time.perf_counter() - done[-1] > 3.0:
            out["frames_per_second"] = 0.0  # stalled: no frame done lately
        else:
            out["frames_per_second"] = (len(done) - 1) / (done[-1] - done[0]) if len(done) > 1 and done[-1] > done[0] \
                else None
        out["p50_ms"] = float(np.percentile(latency, 50)) if latency else None
        out["p95_ms"] = float(np.percentile(latency, 95)) if latency else None
        return out

    def close(self, *, wait: bool = False) -> None:
        """Let the backend's thread go: a call in progress finishes alone, or is waited for with ``wait``."""
        self._caller.shutdown(wait=wait, cancel_futures=True)


def _fit(image: np.ndarray, max_edge: int | None) -> np.ndarray:
    """``image`` scaled down to ``max_edge`` pixels on its long side (as ``VideoReader.frames`` does)."""
    size = fitted_size(image.shape[1], image.shape[0], max_edge)
    if size is None:
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
