"""The detection page's Video source: a clip (the sample or an upload) run frame by frame on the mode's backends.

The run is an ``inference.video_job.VideoJob``: one thread per backend, each writing its annotated video and JSON
lines to this session's folder. While it runs, a fragment of the page refreshes every quarter second with a
progress bar and, per column, the newest annotated frame, frames/s and latency; the rest of the page stays usable.
Stop ends it after the frame in progress and keeps what was done. A change of inputs, another source or another
page stops it too, and so does a closed tab (nobody polls it for ``UNWATCHED_S``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from inference import InferenceError, InvalidInput
from inference.video import VideoInfo, VideoReader
from inference.video_job import VideoJob

from . import components as ui
from . import runner, sidebar, state

TASK = "object-detection"
SAMPLE_CLIP = state.ASSETS / "sample-clip.mp4"
CLIP_TYPES = ["mp4", "webm", "mov", "mkv", "m4v"]
CLIP_SOURCES = ("Sample clip", "Upload")
#: The resolution cap's choices: the long edge frames are scaled down to (None keeps them).
MAX_EDGES = {"320 px": 320, "480 px": 480, "640 px": 640, "960 px": 960, "1280 px": 1280, "Full size": None}
#: Seconds between two refreshes of the live view while a clip runs.
REFRESH_S = 0.25
#: A run nobody polls for this long (its tab closed) stops.
UNWATCHED_S = 120.0


@dataclass
class VideoRun:
    """A run kept in the session: its job, what it ran on, and what became of it."""

    job: VideoJob
    label: str
    model_id: str
    mode: str
    folder: Path
    stopped_by_user: bool = False
    recorded: bool = False


@dataclass(frozen=True)
class Clip:
    """The clip on screen: its file, what to call it, and an identity for "results belong to these inputs"."""

    path: Path | None
    label: str | None
    identity: str | None
    sample: bool = False
    error: str | None = None
    info: VideoInfo | None = None
    thumbnail: np.ndarray | None = None


def session_folder() -> Path:
    """This session's folder for uploads and annotated videos (removed when the session's state goes)."""
    holder = st.session_state.get("_video_folder")
    if holder is None:
        holder = st.session_state["_video_folder"] = tempfile.TemporaryDirectory(prefix="inference-studio-video-")
    return Path(holder.name)


@st.cache_data(max_entries=32, show_spinner=False)
def clip_problem(path: str, identity: str, max_bytes: int, max_seconds: float,
                 max_pixels: int) -> tuple[VideoInfo | None, np.ndarray | None, str | None]:
    """(the clip's header, a thumbnail of its first frame, what is wrong with it): the first frame is decoded, so
    that a codec FFmpeg cannot decode is said here and not halfway through a run. ``identity`` keys the cache."""
    try:
        with VideoReader(path, max_bytes=max_bytes, max_seconds=max_seconds, max_pixels=max_pixels) as reader:
            frames = reader.frames(max_edge=480)
            first = next(frames)
            frames.close()
            return reader.info, first.image, None
    except InvalidInput as exc:
        return None, None, str(exc)
    except StopIteration:  # pragma: no cover - frames() raises InvalidInput for a clip without frames
        return None, None, "it has no frames"


def clip_picker(prefix: str) -> Clip:
    """The sample clip or an uploaded video; a file that cannot be used is an error shown here."""
    settings = state.app_settings()
    limits = (settings.max_video_bytes, settings.max_video_seconds, settings.max_image_pixels)
    choice = ui.sticky_choice("Clip", CLIP_SOURCES, f"{prefix}_clip")
    if choice == "Sample clip":
        info, thumbnail, problem = clip_problem(str(SAMPLE_CLIP), "sample", *limits)
        if problem:
            st.error(f"The sample clip cannot be used with this app's settings: {_named(problem, SAMPLE_CLIP, None)} "
                     "(or raise INFERENCE_MAX_VIDEO_SECONDS / INFERENCE_MAX_VIDEO_BYTES).",
                     icon=":material/videocam_off:")
            return Clip(None, None, None, sample=True, error=problem)
        return Clip(SAMPLE_CLIP, "sample-clip.mp4", "sample", sample=True, info=info, thumbnail=thumbnail)
    # Streamlit's server.maxUploadSize caps every upload (200 MB in .streamlit/config.toml): the lower one holds.
    limit_mb = max(1, min(settings.max_video_bytes // 2**20, int(st.get_option("server.maxUploadSize"))))
    upload = st.file_uploader("Upload a video", type=CLIP_TYPES, key=f"{prefix}_video_upload",
                              max_upload_size=limit_mb,
                              help=f"MP4, WebM, MOV or MKV; up to {limit_mb} MB and {settings.max_video_seconds:.0f} s "
                                   "(INFERENCE_MAX_VIDEO_BYTES, INFERENCE_MAX_VIDEO_SECONDS)")
    if upload is None:
        return Clip(None, None, None)
    path = _saved_upload(upload)
    info, thumbnail, problem = clip_problem(str(path), upload.file_id, *limits)
    if problem:
        problem = _named(problem, path, upload.name)
        st.error(f"This video cannot be used: {problem}.", icon=":material/videocam_off:")
        return Clip(None, None, None, error=problem)
    return Clip(path, upload.name, upload.file_id, info=info, thumbnail=thumbnail)


def _named(problem: str, path: Path, name: str | None) -> str:
    """A problem as said of the clip people picked (not of this session's copy of it)."""
    return problem.replace(f"the file {path.name!r}", repr(name) if name else "it", 1)


def _saved_upload(upload: Any) -> Path:
    """The upload as a file of this session's folder (written once, whole or not at all; the previous upload's file
    is removed), so that every backend's thread decodes it from disk, frame by frame."""
    folder = session_folder() / "uploads"
    folder.mkdir(exist_ok=True)
    suffix = Path(upload.name).suffix.lower() if Path(upload.name).suffix.lower()[1:] in CLIP_TYPES else ".mp4"
    path = folder / f"{_safe(upload.file_id)}{suffix}"
    if not path.exists():
        for old in folder.iterdir():
            old.unlink(missing_ok=True)
        partial = path.with_suffix(".part")
        with partial.open("wb") as out:
            shutil.copyfileobj(upload, out, 1 << 20)
        upload.seek(0)
        os.replace(partial, path)
    return path


def _safe(text: str) -> str:
    return "".join(char if char.isalnum() or char in "-_" else "_" for char in text)[:80]


def preview(clip: Clip) -> None:
    """The clip's first frame and what its header says (the clip itself is not sent to the page until it runs)."""
    if clip.thumbnail is not None and clip.info is not None:
        info = clip.info
        length = f" · {info.duration_s:.1f} s" if info.duration_s else ""
        st.image(clip.thumbnail, width="stretch",
                 caption=f"{clip.label} · {info.width}×{info.height} · {info.fps:.0f} frames/s{length} · {info.codec}")


def options(prefix: str, *, stride: bool = True) -> dict[str, Any]:
    """Tracking, frame stride and resolution cap: what keeps a clip moving on a CPU (a live stream has no stride:
    it skips the frames that come while one is detected)."""
    first, second = st.columns(2)
    if stride:
        first.number_input("Every Nth frame", 1, 30, key=f"{prefix}_stride",
                           help="1 runs every frame; 3 runs one frame in three (three times fewer to detect)")
    (second if stride else first).selectbox(
        "Resolution cap", list(MAX_EDGES), key=f"{prefix}_max_edge",
        help="frames are scaled down to this long edge before detection (and in the annotated video)")
    st.toggle("Track objects (ByteTrack)", key=f"{prefix}_track",
              help="each box keeps an id (#3) from frame to frame; off: boxes per frame only")
    return {"track": st.session_state[f"{prefix}_track"], "stride": int(st.session_state[f"{prefix}_stride"]),
            "max_edge": MAX_EDGES[st.session_state[f"{prefix}_max_edge"]]}


def running(prefix: str) -> VideoRun | None:
    kept: VideoRun | None = st.session_state.get(f"{prefix}_video")
    return kept if kept is not None and not kept.job.done else None


def buttons(prefix: str) -> tuple[bool, Any, Any]:
    """Detect; returns (run, slot for ``stop_button``, slot for the share box)."""
    first = st.columns(2, vertical_alignment="bottom")
    go = first[0].button("Detect on video", type="primary", key=f"{prefix}_video_go", icon=":material/play_arrow:",
                         width="stretch")
    return go, first[1].empty(), st.container()


def stop_button(prefix: str, slot: Any) -> None:
    """Stop, beside Detect: enabled while a clip runs (drawn once this rerun's run, if any, has started)."""
    slot.button("Stop", key=f"{prefix}_video_stop", icon=":material/stop:", width="stretch",
                disabled=running(prefix) is None, on_click=_stop, args=(prefix,),
                help="ends the run after the frame in progress; what was done is kept")


def _stop(prefix: str) -> None:
    kept = running(prefix)
    if kept is not None:
        kept.stopped_by_user = True
        kept.job.stop()


def stop_running(prefix: str) -> None:
    """Stop a run in progress: its source or page is no longer on screen. What was done stays for later."""
    kept = running(prefix)
    if kept is not None:
        kept.job.stop()


def stop_every_run() -> None:
    """Stop the runs in progress of this session (another page is shown)."""
    for kept in list(st.session_state.values()):
        if isinstance(kept, VideoRun) and not kept.job.done:
            kept.job.stop()


def inputs_key(model_id: str, mode: str, clip: Clip, params: dict[str, Any]) -> str:
    return runner.inputs_key(f"{TASK}:video", model_id, mode, (clip.identity or "",), params)


def forget_stale(prefix: str, key: str) -> None:
    """A run belongs to the inputs that made it: once they differ, it stops, goes to the history, and its files
    and errors go."""
    if st.session_state.get(f"{prefix}_video_inputs", key) != key:
        _discard(st.session_state.pop(f"{prefix}_video", None))
        for name in ("video_inputs", "video_errors"):
            st.session_state.pop(f"{prefix}_{name}", None)


def _discard(kept: VideoRun | None) -> None:
    if kept is None:
        return
    kept.job.stop()
    if kept.job.wait(10):  # the frame in progress
        record(kept)
        with contextlib.suppress(OSError):
            shutil.rmtree(kept.folder)
    # else: a backend is slow to give up its frame; the folder goes with the session's


def run(prefix: str, model_id: str, mode: str, clip: Clip, params: dict[str, Any]) -> None:
    """Start a run of ``clip`` on the mode's backends; it is kept under ``{prefix}_video`` and drawn by
    ``render``. A backend whose model cannot be had is an error of its own; the others run."""
    _discard(st.session_state.pop(f"{prefix}_video", None))
    st.session_state[f"{prefix}_video_inputs"] = inputs_key(model_id, mode, clip, params)
    models, failed = runner.models_for(model_id, TASK, mode)
    errors = {name: outcome.error for name, outcome in failed.items()}
    job = None
    if models:
        folder = Path(tempfile.mkdtemp(prefix="run-", dir=session_folder()))
        try:
            job = VideoJob(models, clip.path, directory=folder, reference=sidebar.reference(tuple(models)),
                           idle_stop_s=UNWATCHED_S, **params)
        except InferenceError as exc:
            errors.update({name: exc for name in models})
            shutil.rmtree(folder, ignore_errors=True)
    st.session_state[f"{prefix}_video_errors"] = errors
    for name, error in errors.items():
        _history_row(name, mode, model_id, clip.label, f"error: {error}", params)
    if sidebar.targets(mode) != ("local",):
        sidebar.count_remote_run()
    if job is not None:
        st.session_state[f"{prefix}_video"] = VideoRun(job.start(), clip.label, model_id, mode, folder)


def render(prefix: str) -> None:
    """The kept run: while it goes, the live view; then per column the annotated video, its figures and downloads,
    the latency over the clip and, in Compare, the parity frame by frame."""
    kept: VideoRun | None = st.session_state.get(f"{prefix}_video")
    errors = st.session_state.get(f"{prefix}_video_errors", {})
    for name, error in errors.items():
        ui.show_error(error, backend=name if len(errors) + len(kept.job.columns if kept else ()) > 1 else None)
    if kept is None:
        return
    kept.job.touch()
    if not kept.job.done:
        _live(prefix)
        return
    _finished(prefix, kept)


@st.fragment(run_every=REFRESH_S)
def _live(prefix: str) -> None:
    """The run as it goes, redrawn every ``REFRESH_S``: a progress bar, and per column the newest annotated frame
    with frames/s and latency. When the run ends, the whole page reruns to show its results."""
    kept: VideoRun | None = st.session_state.get(f"{prefix}_video")
    if kept is None:
        return
    job = kept.job
    job.touch()
    if job.done:
        st.rerun()  # the whole page: the results, and Stop greyed out again
    with job.lock:
        figures = {name: (len(column.frames), column.frames_per_second, column.latency_ms(50), column.latency_ms(95),
                          column.latest, column.error) for name, column in job.columns.items()}
    expected = job.expected_frames
    # The bar follows the slowest column that is past its warm-up; the text says where each one is.
    going = [count for count, _, _, _, latest, error in figures.values() if error is None and latest is not None]
    done = min(going) if going else 0
    rates = " · ".join(
        f"{ui.label(name)} {fps:.1f} frames/s" if fps is not None else
        f"{ui.label(name)} warming up" if latest is None and error is None else f"{ui.label(name)} failed"
        for name, (_, fps, _, _, latest, error) in figures.items()) if len(figures) > 1 else \
        " · ".join(f"{fps:.1f} frames/s" for _, fps, *_rest in figures.values() if fps is not None)
    stopping = " · stopping after the frame in progress…" if job.stopped else ""
    st.progress(min(done / expected, 1.0) if expected else 0.0,
                text=f"Frame {done}{f' of {expected}' if expected else ''}" + (f" · {rates}" if rates else "")
                + stopping)
    cells = st.columns(len(figures)) if len(figures) > 1 else [st.container()]
    for cell, (name, (count, fps, p50, p95, latest, error)) in zip(cells, figures.items(), strict=True):
        with cell:
            if len(figures) > 1:
                st.subheader(ui.label(name))
            if error is not None:
                ui.show_error(error)
            elif latest is None:
                st.info("Warming up: a first call loads the model (on a server too); it is not counted.",
                        icon=":material/hourglass_top:")
            else:
                st.image(latest, output_format="JPEG", width="stretch")
                if fps is not None:
                    st.markdown(f"**{fps:.1f}** frames/s · p50 **{p50:,.0f} ms** · p95 **{p95:,.0f} ms** · "
                                f"{count} frames")


def _finished(prefix: str, kept: VideoRun) -> None:
    job = kept.job
    columns = job.columns
    expected = job.expected_frames
    counts = sorted({len(column.frames) for column in columns.values() if column.error is None})
    done = counts[-1] if counts else 0
    info = job.info
    stride = job.options["stride"]
    what = f"{kept.label} · {info.width}×{info.height} · {info.fps:.0f} frames/s" + (
        f" · 1 frame in {stride}" if stride > 1 else "")
    where = f"at frame {done}" if len(counts) == 1 else "at " + " and ".join(
        f"{len(column.frames)} ({ui.label(name)})" for name, column in columns.items() if column.error is None)
    if job.stopped and expected and done < expected:
        why = "Stopped" if kept.stopped_by_user else \
            "Stopped: nobody watched it (the page was closed)" if job.unwatched else "Stopped when you left the video"
        st.warning(f"{why} {where} of {expected}: what was done is below. {what}", icon=":material/stop:")
    elif expected and counts and done < expected - 1:
        st.warning(f"The clip ended {where} of the {expected} its header announces: the file may be truncated or "
                   f"damaged. What it had is below. {what}", icon=":material/broken_image:")
    elif done:
        st.caption(f"{done} frame{'s' if done != 1 else ''} run. {what}")
    record(kept)
    grid = st.columns(len(columns)) if len(columns) > 1 else [st.container()]
    for cell, (name, column) in zip(grid, columns.items(), strict=True):
        with cell:
            if len(columns) > 1:
                st.subheader(ui.label(name))
            _column(prefix, column, f"{Path(kept.label).stem}-detections", narrow=len(columns) > 1)
    _latency_chart(job)
    if job.reference is not None:
        _parity(job)


def _column(prefix: str, column: Any, stem: str, *, narrow: bool) -> None:
    if column.error is not None:
        ui.show_error(column.error)
    if not column.frames:
        return
    if column.has_video:
        st.video(str(column.video_path))
    figures = [("Frames/s", f"{column.frames_per_second or 0:.1f}"), ("p50", f"{column.latency_ms(50):,.0f} ms"),
               ("p95", f"{column.latency_ms(95):,.0f} ms"), ("Frames", f"{len(column.frames)}")]
    if narrow:
        st.markdown("  ·  ".join(f"**{name}** {value}" for name, value in figures))
    else:
        for cell, (name, value) in zip(st.columns(len(figures)), figures, strict=True):
            cell.metric(name, value)
    notes = [f"{sum(frame.boxes for frame in column.frames)} boxes over the clip"]
    if column.track_ids:
        notes.append(f"{len(column.track_ids)} track ids")
    if column.warmup_ms is not None:
        notes.append(f"first call {column.warmup_ms:,.0f} ms (warm-up and model load, not counted)")
    st.caption(" · ".join(notes))
    d1, d2 = st.columns(2)
    kind = column.video_path.suffix[1:].upper()
    if column.has_video:
        d1.download_button(kind if narrow else f"Annotated {kind}", _reader(column.video_path),
                           file_name=f"{stem}-{column.name}{column.video_path.suffix}",
                           mime=f"video/{column.video_path.suffix[1:]}", key=f"{prefix}_vid_{column.name}",
                           icon=":material/download:", help="the clip with boxes, labels and track ids drawn")
    d2.download_button("JSONL" if narrow else "Detections JSONL", _reader(column.lines_path),
                       file_name=f"{stem}-{column.name}.jsonl", mime="application/jsonl",
                       key=f"{prefix}_jsonl_{column.name}", icon=":material/data_object:",
                       help="one JSON line per frame: frame, time_s, latency_ms, server_ms and each box's label, "
                            "score, box and track_id (null in the first frame an object is seen)")


def _reader(path: Path) -> Callable[[], bytes]:
    """The file's bytes when its download button is clicked (not on every rerun)."""
    return path.read_bytes


def _latency_chart(job: VideoJob) -> None:
    import altair as alt

    rows = [{"backend": ui.label(name), "frame": frame.index, "latency_ms": frame.latency_ms}
            for name, column in job.columns.items() for frame in column.frames]
    if len({row["frame"] for row in rows}) < 2:
        return
    st.subheader("Latency over the clip")
    chart = alt.Chart(pd.DataFrame(rows)).mark_line(point=len(rows) < 120, interpolate="monotone").encode(
        x=alt.X("frame:Q", title="frame"), y=alt.Y("latency_ms:Q", title="latency (ms)"),
        color=alt.Color("backend:N", title=None),
        tooltip=["backend", "frame", alt.Tooltip("latency_ms", format=",.1f")],
    )
    st.altair_chart(chart.properties(height=220), width="stretch")


def _parity(job: VideoJob) -> None:
    """Per other column: frames compared and in full agreement, boxes matched and on one side only, frame by frame."""
    import altair as alt

    reference = ui.lower(ui.label(job.reference))
    for other in [name for name in job.columns if name != job.reference]:
        frames = sorted((item for item in job.parity if item.other == other), key=lambda item: item.index)
        theirs = ui.lower(ui.label(other))
        st.subheader(f"Parity: {reference} and {theirs}" if len(job.columns) > 2 else "Parity, frame by frame")
        if not frames:
            st.caption("No frame has been run on both sides.")
            continue
        agree = sum(item.agree for item in frames)
        cells = st.columns(3)  # two rows: five metrics side by side would cut their labels in this column
        cells[0].metric("Frames compared", len(frames))
        cells[1].metric("Frames that agree", f"{agree} ({agree / len(frames):.0%})",
                        help="every box matched: same label and IoU ≥ 0.5")
        cells = st.columns(3)
        cells[0].metric("Matched boxes", sum(item.matched for item in frames))
        cells[1].metric(f"Only {reference}", sum(item.only_reference for item in frames))
        cells[2].metric(f"Only {theirs}", sum(item.only_other for item in frames))
        if agree == len(frames):
            st.success(f"Every box of every frame has a match on the other side ({len(frames)} frames).",
                       icon=":material/check_circle:")
            continue
        rows = [{"frame": item.index, "boxes": count, "kind": kind} for item in frames
                for kind, count in ((f"only {reference}", item.only_reference), (f"only {theirs}", item.only_other))]
        chart = alt.Chart(pd.DataFrame(rows)).mark_bar().encode(
            x=alt.X("frame:Q", title="frame"), y=alt.Y("boxes:Q", title="unmatched boxes"),
            color=alt.Color("kind:N", title=None, scale=alt.Scale(range=["#ef6c00", "#1565c0"])),
            tooltip=["frame", "kind", "boxes"],
        )
        st.altair_chart(chart.properties(height=160), width="stretch")


def record(kept: VideoRun) -> None:
    """One history row per column of a finished run, once."""
    if kept.recorded:
        return
    kept.recorded = True
    for name, column in kept.job.columns.items():
        fps = column.frames_per_second
        output = f"error: {column.error}" if column.error is not None else \
            f"{len(column.frames)} frames, {fps or 0:.1f} frames/s"
        expected = kept.job.expected_frames
        if kept.job.stopped and column.error is None and expected and len(column.frames) < expected:
            output += f" (stopped at {len(column.frames)} of {expected})"
        _history_row(name, kept.mode, kept.model_id, kept.label, output, kept.job.options,
                     total_ms=column.latency_ms(50))


def _history_row(backend: str, mode: str, model_id: str, clip: str | None, output: str, options: dict[str, Any],
                 total_ms: float | None = None) -> None:
    """A video run's row in the session's history: one per column, its settings the run's options."""
    row = {"page": "object detection (video)", "backend": backend, "mode": mode, "model": model_id, "task": TASK,
           "prompt": clip, "output": output}
    if total_ms is not None:
        row["total_ms"] = total_ms
    ui.record_row({**row, **{key: value for key, value in options.items() if value is not None}})


def need_clip(clip: Clip) -> None:
    """Said when a run is asked for without a usable clip."""
    if clip.error:
        other = "Upload a video instead" if clip.sample else "Upload another video or pick the sample clip"
        st.error(f"Nothing was run: the clip cannot be used (see above). {other}.", icon=":material/videocam_off:")
    else:
        st.warning("Upload a video or pick the sample clip first.", icon=":material/movie:")
