"""Video files: frames decoded one at a time (PyAV), tracked (ByteTrack from ``trackers``) and encoded back.

Nothing here holds a whole clip: ``VideoReader`` decodes frame by frame and closes its file however the reading
ends (finished, stopped, failed); ``VideoWriter`` encodes each frame as it comes, to H.264 in MP4 or VP9 in WebM,
both of which browsers play. A detection model runs on the frames through ``Model.video``; the server stays
per-image (a video is frames on the client's side).

    with VideoReader("clip.mp4") as reader, VideoWriter("out.mp4", reader.info.fps) as writer:
        for frame in reader.frames(stride=2, max_edge=640):
            writer.write(frame.image)
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidInput

__all__ = ["MAX_VIDEO_BYTES", "MAX_VIDEO_SECONDS", "Frame", "Tracker", "VideoFrameResult", "VideoInfo", "VideoReader",
           "VideoWriter"]

#: Default limits of a clip: its file size, its length and a frame's pixels (settable per call).
MAX_VIDEO_BYTES = 200 * 1024 * 1024
MAX_VIDEO_SECONDS = 600.0
MAX_FRAME_PIXELS = 40_000_000
#: FFmpeg's demuxers of single pictures (besides the ``*_pipe`` ones: png_pipe, jpeg_pipe, ...): a still image is
#: not a clip. (An animated GIF is.)
STILL_IMAGE_FORMATS = {"image2"}
#: Containers browsers play, by suffix: (PyAV format, codec).
OUTPUT_FORMATS = {".mp4": ("mp4", "libx264"), ".webm": ("webm", "libvpx-vp9")}


@dataclass(frozen=True)
class VideoInfo:
    """What a clip's header says: size, frame rate, length (None when the container does not say) and codec."""

    width: int
    height: int
    fps: float
    duration_s: float | None
    frames: int | None
    codec: str


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its index in the clip, its time, and its RGB pixels (height × width × 3, uint8)."""

    index: int
    time_s: float
    image: np.ndarray


@dataclass(frozen=True)
class VideoFrameResult:
    """One frame of ``Model.video``: where it is in the clip, its pixels (as the model saw them) and its result."""

    index: int
    time_s: float
    image: np.ndarray
    #: A ``DetectionResult``; its detections carry ``tracker_id`` when the video is tracked.
    result: Any


class VideoReader:
    """A video file (path, bytes or a binary file), checked on open and decoded one frame at a time.

    Raises ``InvalidInput`` with what to do for: a file that is no video, one without a video stream or frames, a
    codec FFmpeg cannot decode, and a clip over ``max_bytes``, ``max_seconds`` or ``max_pixels`` a frame (frames
    are decoded at their full size before any scaling down). Times count from the clip's first frame, whatever
    timestamp its container starts at.
    """

    def __init__(self, source: Any, *, max_bytes: int = MAX_VIDEO_BYTES, max_seconds: float = MAX_VIDEO_SECONDS,
                 max_pixels: int = MAX_FRAME_PIXELS) -> None:
        import av

        self.name = _name(source)
        size = _size(source)
        if size is not None and size > max_bytes:
            raise InvalidInput(f"{self.name} is {_size_text(size)}, over the {_size_text(max_bytes)} limit for a "
                               "video: trim it or use a shorter clip")
        if size == 0:
            raise InvalidInput(f"{self.name} is empty: use an MP4, WebM, MOV or MKV video")
        opened = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
        try:
            self._container = av.open(os.fspath(opened) if isinstance(opened, (str, Path)) else opened, mode="r")
        except (av.error.FFmpegError, ValueError, OSError) as exc:
            raise InvalidInput(f"{self.name} is not a video FFmpeg can read, or is damaged or incomplete "
                               f"({_reason(exc)}): use an MP4, WebM, MOV or "
                               "MKV file") from None
        try:
            if self._container.format.name in STILL_IMAGE_FORMATS or self._container.format.name.endswith("_pipe"):
                raise InvalidInput(f"{self.name} is a still image, not a video: detect on it as an image (the Sample, "
                                   "Upload and Camera inputs), or use a video")
            if not self._container.streams.video:
                raise InvalidInput(f"{self.name} has no video stream (audio only?): use a video")
            stream = self._stream = self._container.streams.video[0]
            stream.thread_type = "AUTO"
            context = stream.codec_context
            if context.width * context.height > max_pixels:
                raise InvalidInput(f"{self.name}'s frames are {context.width}x{context.height} pixels, over the "
                                   f"{max_pixels:,} pixel limit: scale it down (1920x1080 is plenty for detection)")
            # Some containers (MKV, MPEG-TS, a cut clip) start their timestamps past 0: times count from the start.
            self._start_s = float(stream.start_time * stream.time_base) if stream.start_time and stream.time_base \
                else 0.0
            duration = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None
            if duration is None and self._container.duration:
                # Matroska's container duration counts from 0, not from its first timestamp; MP4's does not.
                duration = self._container.duration / 1e6
                start = self._container.start_time / 1e6 if self._container.start_time else 0.0
                if 0 < start < duration:
                    duration -= start
            if duration is not None and duration > max_seconds:
                raise InvalidInput(f"{self.name} lasts {duration:.0f} s, over the {max_seconds:.0f} s limit: trim it "
                                   "or use a shorter clip")
            fps = float(stream.average_rate or stream.guessed_rate or 0) or 30.0
            self.info = VideoInfo(width=context.width, height=context.height, fps=fps, duration_s=duration,
                                  frames=stream.frames or None, codec=context.name)
            self.max_seconds = max_seconds
        except BaseException:
            self._container.close()
            raise

    def frames(self, *, stride: int = 1, max_edge: int | None = None) -> Iterator[Frame]:
        """Every ``stride``-th frame, scaled down to ``max_edge`` pixels at most; the file closes when this ends
        (read to the end, stopped early, or failed)."""
        import av

        if stride < 1:
            raise InvalidInput("stride must be at least 1 (every frame)")
        decoded = 0
        try:
            for index, frame in enumerate(self._decode()):
                decoded += 1
                time_s = float(frame.time) - self._start_s if frame.time is not None else index / self.info.fps
                if time_s > self.max_seconds:
                    raise InvalidInput(f"{self.name} runs past the {self.max_seconds:.0f} s limit: trim it or use "
                                       "a shorter clip")
                if index % stride:
                    continue
                fitted = fitted_size(frame.width, frame.height, max_edge)
                if fitted is not None:
                    frame = frame.reformat(width=fitted[0], height=fitted[1])
                yield Frame(index, time_s, frame.to_ndarray(format="rgb24"))
        except av.error.FFmpegError as exc:
            raise InvalidInput(f"{self.name} cannot be decoded ({_reason(exc)}): re-encode it as H.264 MP4 or VP9 "
                               "WebM") from None
        finally:
            self.close()
        if not decoded:
            raise InvalidInput(f"{self.name} has no frames: use a video with at least one frame")

    def _decode(self):
        return self._container.decode(self._stream)

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class VideoWriter:
    """Encodes RGB frames as they come to ``path``: H.264 in ``.mp4`` or VP9 in ``.webm`` (browsers play both).

    Frames are padded to even sizes (H.264's 4:2:0 needs them); the first frame fixes the size.
    """

    def __init__(self, path: str | os.PathLike, fps: float, *, crf: int = 28) -> None:
        import av

        suffix = Path(path).suffix.lower()
        if suffix not in OUTPUT_FORMATS:
            raise InvalidInput(f"write video to .mp4 or .webm, not {suffix or 'no suffix'}")
        self.path, self.fps, self.crf = Path(path), fps, crf
        self.format, self.codec = OUTPUT_FORMATS[suffix]
        self._container = av.open(str(self.path), mode="w", format=self.format)
        self._stream = None
        self.frames = 0

    def write(self, image: np.ndarray) -> None:
        import av
        from fractions import Fraction

        height, width = image.shape[:2]
        if self._stream is None:
            stream = self._container.add_stream(self.codec, rate=Fraction(self.fps).limit_denominator(1000))
            stream.width, stream.height = width + width % 2, height + height % 2
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(self.crf)} if self.codec == "libx264" else {"crf": str(self.crf), "b": "0"}
            self._stream = stream
        if (width, height) != (self._stream.width, self._stream.height):
            padded = np.zeros((self._stream.height, self._stream.width, 3), dtype=np.uint8)
            padded[:min(height, self._stream.height), :min(width, self._stream.width)] = \
                image[:self._stream.height, :self._stream.width]
            image = padded
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        if self._container is None:
            return
        try:
            if self._stream is not None:
                for packet in self._stream.encode():
                    self._container.mux(packet)
        finally:
            self._container.close()
            self._container = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Tracker:
    """ByteTrack (the ``trackers`` package) over per-frame ``sv.Detections``: each box gets a ``tracker_id`` that
    stays with its object from frame to frame. Every detection is kept: one ByteTrack does not track yet (an object
    in the first frame it appears in) has ``tracker_id`` -1, and is drawn without an id."""

    def __init__(self, fps: float = 30.0, *, threshold: float = 0.5, lost_frames: int = 30) -> None:
        from trackers import ByteTrackTracker

        # The detections come filtered at ``threshold`` already: every one of them may start a track (ByteTrack's
        # own "high confidence" default, 0.6, would leave boxes scored between the threshold and 0.6 untracked).
        self._tracker = ByteTrackTracker(frame_rate=fps, lost_track_buffer=lost_frames,
                                         track_activation_threshold=threshold, high_conf_det_threshold=threshold,
                                         minimum_consecutive_frames=1)

    def update(self, detections):
        return self._tracker.update(detections)


def _name(source: Any) -> str:
    if isinstance(source, (str, Path)):
        return f"the file {Path(source).name!r}"
    return f"the upload {getattr(source, 'name', '')!r}".replace(" ''", "") if hasattr(source, "read") else "the video"


def _size(source: Any) -> int | None:
    if isinstance(source, (bytes, bytearray)):
        return len(source)
    if isinstance(source, (str, Path)):
        try:
            return os.path.getsize(source)
        except OSError:
            raise InvalidInput(f"{_name(source)} cannot be read: check the path") from None
    size = getattr(source, "size", None)
    return size if isinstance(size, int) else None


def fitted_size(width: int, height: int, max_edge: int | None) -> tuple[int, int] | None:
    """(width, height) scaled down to ``max_edge`` pixels on the long side (2 at least each way), or None when the
    frame fits already."""
    if not max_edge or max(width, height) <= max_edge:
        return None
    scale = max_edge / max(width, height)
    return max(2, round(width * scale)), max(2, round(height * scale))


def _size_text(size: int) -> str:
    return f"{size / 2**20:,.0f} MB" if size >= 2**20 else f"{size / 1024:,.0f} KB" if size >= 1024 else f"{size} bytes"


def _reason(exc: BaseException) -> str:
    return " ".join(str(getattr(exc, "strerror", None) or exc).split())[:160]
