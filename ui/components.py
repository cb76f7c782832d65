"""Widgets and renderers the three pages share."""

from __future__ import annotations

import html
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import pandas as pd
import streamlit as st

from inference import DetectionResult, InferenceError, InvalidInput, TextResult
from inference.compare import DetectionParity, Outcome, RunStats, TextParity, summarize
from inference.images import ImageData

from . import state

def label(target: str) -> str:
    """How a column is titled: "Local", "Remote" (the REMOTE_INFERENCE_* endpoint or the loopback server), or a
    named endpoint's name as configured."""
    return {"local": "Local", "remote": "Remote"}.get(target, target)


# --------------------------------------------------------------------------- settings: share links and persistence


@dataclass(frozen=True)
class Shared:
    """A page setting that travels in share links: its session-state key and how to read it from a URL."""

    key: str
    parse: Callable[[str], Any]


def bounded(kind: type, low: float, high: float) -> Callable[[str], Any]:
    """A parser that accepts ``kind`` values within [low, high] (what the widget accepts) and nothing else."""

    def parse(text: str) -> Any:
        value = kind(text)
        if not low <= value <= high:
            raise ValueError(f"{value} is outside {low}–{high}")
        return value

    return parse


def one_of(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return text

    return parse


def setup_page(page: str, shared: dict[str, Shared], defaults: dict[str, Callable[[], Any] | Any]) -> None:
    """Prepare a page's settings before its widgets are drawn.

    In order: values the user set earlier in this session come back (Streamlit forgets a widget's value
    when its page is not shown); on the page's first run in a session, settings in the URL (a share link)
    win; anything still unset gets its default. Only the names in ``shared`` are read from the URL, so an
    ``endpoint`` or ``token`` parameter is ignored.
    """
    session = st.session_state
    for key in [item.key for item in shared.values()] + list(defaults):
        shadow = f"_keep:{key}"
        if key not in session and shadow in session:
            session[key] = session[shadow]
    flag = f"_restored:{page}"
    if not session.get(flag):
        session[flag] = True
        ignored = []
        for name, item in shared.items():
            if name in st.query_params:
                try:
                    session[item.key] = item.parse(st.query_params[name])
                except (TypeError, ValueError):
                    ignored.append(name)
        if ignored:
            st.toast(f"Ignored share-link settings that are not valid here: {', '.join(ignored)}",
                     icon=":material/info:")
    for key, default in defaults.items():
        if key not in session:
            session[key] = default() if callable(default) else default


def remember(keys: list[str]) -> None:
    """Keep the current values of ``keys`` for when the page is shown again (call after the widgets)."""
    for key in keys:
        if key in st.session_state:
            st.session_state[f"_keep:{key}"] = st.session_state[key]


def share_box(settings: dict[str, Any]) -> None:
    """A "Share this demo" popover with a link that restores ``settings`` (never an endpoint, token or upload)."""
    query = urlencode({name: value for name, value in settings.items() if value not in (None, "")})
    base = st.context.url or "http://localhost:8501/"
    parts = urlsplit(base)
    url = urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))
    with st.popover("Share this demo", icon=":material/share:"):
        st.code(url, language=None, wrap_lines=True)
        st.caption("The link restores this page's settings. It never holds the endpoint, a token or your "
                   "uploads: the recipient runs on their own backend with their own files.")


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class PickedImage:
    data: bytes | None  # None until there is an image, and for a file that is not a usable image
    label: str | None
    sample: str | None  # the sample's name, when a sample was picked (shareable)
    error: str | None = None  # what is wrong with the uploaded file (already shown on the page)


def samples() -> dict[str, str]:
    """Sample image name → file path (the photos shipped under assets/)."""
    return {path.stem: str(path) for path in sorted(state.ASSETS.glob("*.jpg"))}


@st.cache_data(max_entries=16, show_spinner=False)
def image_problem(data: bytes, name: str, max_pixels: int) -> str | None:
    """What is wrong with an uploaded file as an image, or None when it decodes.

    The header is checked first (an empty file, not an image, too many pixels: nothing is decoded), then
    the pixels are decoded once, so a damaged body is caught here too and not by the preview.
    """
    try:
        ImageData(data, max_pixels=max_pixels).image  # noqa: B018 (decoding is the check)
    except InvalidInput as exc:
        return str(exc).replace("the image data", name, 1)
    return None


IMAGE_SOURCES = ("Sample", "Upload", "Camera")
#: Largest image upload, in MB: the reference server's default body limit (the app's own limit is a video's).
IMAGE_UPLOAD_MB = 20


def source_control(prefix: str, sources: tuple[str, ...] = IMAGE_SOURCES, label: str = "Image") -> str:
    """Where the page's input comes from (``{prefix}_source``)."""
    return sticky_choice(label, sources, f"{prefix}_source")


def sticky_choice(label: str, options: tuple[str, ...], key: str) -> str:
    """A segmented control that always has one option chosen: the first at first, and clicking the chosen one off
    keeps it (a bare segmented control would fall back to none)."""
    last = f"_last:{key}"
    if st.session_state.get(key) not in options:
        st.session_state[key] = st.session_state[last] if st.session_state.get(last) in options else options[0]
    st.session_state[last] = st.segmented_control(label, options, key=key, width="content")
    return st.session_state[last]


def image_picker(prefix: str, source: str | None = None) -> PickedImage:
    """Image from a sample, an upload or the camera (``source``; a control to pick it is drawn when None); a file
    that is not a usable image is an error shown here."""
    source = source or source_control(prefix)
    if source in ("Upload", "Camera"):
        if source == "Upload":
            upload = st.file_uploader("Upload an image", type=["jpg", "jpeg", "png", "webp"], key=f"{prefix}_upload",
                                      max_upload_size=IMAGE_UPLOAD_MB, help=f"JPEG, PNG or WebP; up to {IMAGE_UPLOAD_MB} MB")
            name = f"{upload.name!r}" if upload else ""
        else:
            upload = st.camera_input("Take a picture", key=f"{prefix}_camera")
            name = "the picture"
        if upload is None:
            return PickedImage(None, None, None)
        if upload.size > IMAGE_UPLOAD_MB * 2**20:  # the browser checks too, but a client may skip it
            problem = f"{name or 'the picture'} is over {IMAGE_UPLOAD_MB} MB"
            st.error(f"This file cannot be used: {problem}.", icon=":material/broken_image:")
            return PickedImage(None, None, None, error=problem)
        data = upload.getvalue()
        problem = image_problem(data, name, state.app_settings().max_image_pixels)
        if problem:
            st.error(f"This file cannot be used: {problem}.", icon=":material/broken_image:")
            return PickedImage(None, None, None, error=problem)
        return PickedImage(data, upload.name if source == "Upload" else "camera", None)
    paths = samples()
    name = st.selectbox("Sample image", list(paths), key=f"{prefix}_sample", format_func=lambda n: n.title())
    with open(paths[name], "rb") as handle:
        return PickedImage(handle.read(), f"{name}.jpg", name)


def need_image(picked: PickedImage) -> None:
    """Said when a run is asked for without a usable image."""
    if picked.error:
        st.error(f"Nothing was run: {picked.error}. Or pick a sample.", icon=":material/broken_image:")
    else:
        st.warning("Pick a sample, upload an image or take a picture first.", icon=":material/image:")


def demo_note(model_id: str) -> None:
    if state.is_demo(model_id):
        st.info("This is an offline demo model with **random weights**: the hub could not be reached, so the "
                "app built a tiny model of the same kind. The whole pipeline is real; the output is not "
                "meaningful. Enter a hub model id once you are online.", icon=":material/science:")


# --------------------------------------------------------------------------- results


def show_error(error: InferenceError, container: Any = st, *, backend: str | None = None) -> None:
    """An ``InferenceError`` as people read it; ``backend`` names the side it came from in Compare."""
    where = f"{label(backend)}: " if backend else ""
    container.error(f"{where}{type(error).__name__}: {error}", icon=":material/error:")


def timing_metrics(result: TextResult | DetectionResult, container: Any = st, *, compact: bool = False) -> None:
    """Latency figures of one result: total, and the server/network split, TTFT and tokens/s where they apply.

    ``compact`` writes one line instead of metric tiles (for the narrow columns of Compare).
    """
    t = result.timings
    figures = [("Total", f"{t.total_ms:,.0f} ms")]
    if t.ttft_ms is not None:
        figures.append(("Time to first token", f"{t.ttft_ms:,.0f} ms"))
    if t.tokens_per_s is not None:
        figures.append(("Tokens/s", f"{t.tokens_per_s:,.1f}"))
    if t.server_ms is not None:
        figures.append(("Server", f"{t.server_ms:,.0f} ms"))
        figures.append(("Network", f"{t.network_ms:,.0f} ms"))
    if compact:
        container.markdown("  ·  ".join(f"**{label}** {value}" for label, value in figures))
    else:
        columns = container.columns(len(figures))
        for column, (label, value) in zip(columns, figures, strict=True):
            column.metric(label, value)
    notes = []
    if t.load_ms is not None:
        notes.append(f"model load {t.load_ms / 1000:.1f} s (not counted above)")
    if t.tokens is not None:
        notes.append(f"{t.tokens} tokens")
    if result.attempts > 1:
        notes.append(f"{result.attempts} attempts")
    if result.bytes_sent:
        notes.append(f"{result.bytes_sent / 1000:,.0f} KB sent")
    if result.backend_reason:
        notes.append(result.backend_reason)
    if notes:
        container.caption(" · ".join(notes))


def text_diff(parity: TextParity, left: str = "local", right: str = "remote") -> None:
    """Word-level differences of ``right``'s answer against ``left``'s (the reference): words only the reference has
    struck in red, words only the other has in green."""
    a, b = label(left), label(right)
    if parity.equal:
        st.success(f"{a} and {lower(b)} answers are identical.", icon=":material/check_circle:")
        return
    parts = []
    for op, local_words, remote_words in parity.ops:
        if op == "equal":
            parts.append(html.escape(local_words))
            continue
        if local_words:
            parts.append(f"<del style='color:#c62828'>{html.escape(local_words)}</del>")
        if remote_words:
            parts.append(f"<ins style='color:#2e7d32;text-decoration:none;font-weight:600'>"
                         f"{html.escape(remote_words)}</ins>")
    st.warning(f"{a} and {lower(b)} differ (word similarity {parity.similarity:.0%}). "
               f"Struck: only {lower(a)}; bold green: only {lower(b)}.", icon=":material/difference:")
    st.markdown(" ".join(parts), unsafe_allow_html=True)


def detection_table(result: DetectionResult) -> pd.DataFrame:
    rows = result.to_dict()["detections"]
    return pd.DataFrame(
        [{"label": r["label"], "score": r["score"], **{k: round(v, 1) for k, v in r["box"].items()}} for r in rows],
        columns=["label", "score", "xmin", "ymin", "xmax", "ymax"],
    )


def parity_metrics(parity: DetectionParity, left: str = "local", right: str = "remote") -> None:
    cols = st.columns(4)
    cols[0].metric("Matched boxes", len(parity.matched), help=f"same label and IoU ≥ {parity.iou_threshold}")
    cols[1].metric(f"Only {lower(label(left))}", len(parity.only_a))
    cols[2].metric(f"Only {lower(label(right))}", len(parity.only_b))
    cols[3].metric("Max score Δ", f"{parity.max_score_delta:.3f}")
    if parity.agree:
        st.success("Every box has a match on the other side.", icon=":material/check_circle:")


def lower(name: str) -> str:
    """"Local" and "Remote" read as words in a sentence; an endpoint's name stays as it was written."""
    return name.lower() if name in ("Local", "Remote") else name


def png_bytes(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------- repeated runs and history


def repeated_runs(stats: dict[str, RunStats]) -> None:
    """p50 / p95 per backend, with every run on an Altair chart."""
    import altair as alt

    summary = pd.DataFrame([item.summary() for item in stats.values()])
    summary["backend"] = summary["backend"].map(label)
    st.dataframe(summary, hide_index=True, width="stretch")
    runs = pd.DataFrame(
        [{"backend": label(name), "run": index + 1, "total_ms": value}
         for name, item in stats.items() for index, value in enumerate(item.total_ms)]
    )
    if runs.empty:
        return
    points = alt.Chart(runs).mark_circle(size=60, opacity=0.6).encode(
        x=alt.X("total_ms:Q", title="latency (ms)"), y=alt.Y("backend:N", title=None),
        color=alt.Color("backend:N", legend=None), tooltip=["backend", "run", alt.Tooltip("total_ms", format=",.1f")],
    )
    marks = summary.melt(id_vars=["backend"], value_vars=["p50_ms", "p95_ms"], var_name="stat", value_name="ms")
    ticks = alt.Chart(marks).mark_tick(thickness=3, size=28).encode(
        x="ms:Q", y="backend:N", color=alt.Color("stat:N", title="", scale=alt.Scale(range=["#333", "#e65100"])),
        tooltip=["backend", "stat", alt.Tooltip("ms", format=",.1f")],
    )
    st.altair_chart(points + ticks, width="stretch")


#: History columns in this order (others, such as task parameters, follow).
HISTORY_COLUMNS = ("time", "page", "mode", "backend", "model", "task", "round", "prompt", "output", "total_ms",
                   "ttft_ms", "tokens", "tokens_per_s", "server_ms", "network_ms", "load_ms")


def record(page: str, outcome: Outcome, settings: dict[str, Any] | None = None) -> None:
    """Add one run to this session's history: its settings (mode, model, parameters), output and timings."""
    row: dict[str, Any] = {"page": page, "backend": outcome.backend, **(settings or {})}
    if outcome.ok:
        assert outcome.result is not None
        summary = summarize(outcome.result)
        summary.pop("model_id", None)  # the model as entered is in the settings already
        row.update(summary)
    else:
        row.update({"output": f"error: {outcome.error}", "total_ms": outcome.wall_ms})
    record_row(row)


def record_row(row: dict[str, Any]) -> None:
    """Add a row to this session's history as it is (page, backend, settings, output, timings), stamped now."""
    row = {"time": datetime.now().strftime("%H:%M:%S"), **row}
    for name, value in row.items():
        if isinstance(value, float):
            row[name] = round(value, 1)  # milliseconds to a tenth, tokens/s to one decimal: what is meaningful
        elif isinstance(value, str) and name in ("prompt", "output") and len(value) > 120:
            row[name] = value[:119] + "…"
    st.session_state.setdefault("history", []).append(row)


def history() -> None:
    """This session's runs, with a CSV download."""
    rows = st.session_state.get("history", [])
    # The key keeps it open as its count changes (a run ending while it is open).
    with st.expander(f"Run history ({len(rows)})", icon=":material/history:", key="run_history_expander"):
        if not rows:
            st.caption("Runs of this session appear here.")
            return
        frame = pd.DataFrame(rows)
        first = [name for name in HISTORY_COLUMNS if name in frame.columns]
        frame = frame[first + [name for name in frame.columns if name not in first]]
        st.dataframe(frame, hide_index=True, width="stretch")
        st.download_button("Download CSV", frame.to_csv(index=False).encode(), file_name="inference-runs.csv",
                           mime="text/csv", key="history_csv", icon=":material/download:")


def detections_json(result: DetectionResult) -> bytes:
    return json.dumps(result.to_dict(), indent=2).encode()
