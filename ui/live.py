"""The detection page's Live camera: the browser's camera streamed to the app over WebRTC (``streamlit-webrtc``),
each frame detected, tracked and annotated on one backend, and streamed back.

No outside STUN or TURN server is asked by default (``INFERENCE_ICE_SERVERS`` is empty): on one machine and on a
LAN the browser and the app reach each other directly. Across other networks, set STUN/TURN servers there.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import streamlit as st

from inference import InferenceError
from inference.video_job import LiveDetector

from . import components as ui
from . import sidebar, state

TASK = "object-detection"
#: Seconds a playing stream may go without one annotated frame before the page says the connection is stuck.
NO_FRAMES_AFTER_S = 20.0


def camera_allowed() -> bool:
    """Browsers give the camera only to secure pages: https, or http on this machine (localhost)."""
    url = st.context.url or ""
    parts = urlsplit(url)
    return parts.scheme != "http" or (parts.hostname or "") in ("localhost", "127.0.0.1", "::1", "[::1]")


def backend_choice(prefix: str, mode: str) -> str:
    """The backend the camera runs on: the mode's one, or in Compare the column picked here."""
    targets = sidebar.targets(mode)
    if len(targets) == 1:
        return targets[0]
    if st.session_state.get(f"{prefix}_live_backend") not in targets:
        st.session_state[f"{prefix}_live_backend"] = targets[0]
    return st.selectbox("Run the camera on", targets, key=f"{prefix}_live_backend", format_func=ui.label,
                        help="a live stream runs on one backend; Compare them on a video clip")


def stream(prefix: str, model_id: str, backend: str, threshold: float, options: dict[str, Any]) -> None:
    """The camera's stream, annotated, with frames/s and latency under it."""
    from streamlit_webrtc import WebRtcMode, webrtc_streamer

    if not camera_allowed():
        st.error("Browsers give the camera only to pages on https or on this machine (localhost): open the app "
                 "through https (a reverse proxy with a certificate) or at http://localhost, or use the Video "
                 "source with a recorded clip.", icon=":material/no_photography:")
        return
    try:
        model = state.get_model(model_id, TASK, backend)
    except InferenceError as exc:
        ui.show_error(exc)
        return
    settings = (model_id, backend, threshold, options["track"], options["max_edge"])
    live: LiveStream = st.session_state.setdefault(f"{prefix}_live", LiveStream())
    if live.detector is None or live.settings != settings:
        detector = LiveDetector(model, threshold=threshold, track=options["track"], max_edge=options["max_edge"])
        try:  # before the stream: a first call loads the model where it runs, and would hold up the first frames
            with st.spinner(f"Warming up {model_id} on the {ui.lower(ui.label(backend))} backend…"):
                detector.warm_up()
        except InferenceError as exc:
            detector.close()
            ui.show_error(exc)
            return
        live.swap(detector, settings)

    ice = [server.browser() for server in state.app_settings().ice_servers]
    context = webrtc_streamer(
        key=f"{prefix}_webrtc", mode=WebRtcMode.SENDRECV, rtc_configuration={"iceServers": ice},
        media_stream_constraints={"video": {"width": {"ideal": 1280}}, "audio": False},
        video_frame_callback=live.annotate, async_processing=True,
    )
    playing = context.state.playing
    if playing and live.since is None:
        live.since = time.monotonic()
    if not playing:
        live.since = None
        st.caption("Press **Start** and allow the camera. If the component then shows *NotAllowedError*, allow the "
                   "camera for this site (the camera icon in the address bar) and press Start again; "
                   "*NotFoundError* means no camera is connected (use the Video input instead). "
                   + ("No STUN/TURN server is set: the browser must reach this app directly (one machine, a LAN); "
                      "set INFERENCE_ICE_SERVERS for other networks." if not ice else ""))
    st.fragment(_readout, run_every=1.0 if playing else None)(live, backend, playing, bool(ice))


class LiveStream:
    """What a session's camera stream runs on, kept across reruns: the stream's callback (``annotate``) stays the same
    object, and new settings swap the detector under it, so the stream carries on through any change."""

    def __init__(self) -> None:
        self.detector: LiveDetector | None = None
        self.settings: tuple | None = None
        #: When the stream started playing (for "no frame has arrived"); reset by new settings.
        self.since: float | None = None

    def swap(self, detector: LiveDetector, settings: tuple) -> None:
        old, self.detector, self.settings = self.detector, detector, settings
        self.since = None if self.since is None else time.monotonic()
        if old is not None:
            old.close()  # a frame it is on passes unannotated; the next ones go to the new detector

    def annotate(self, frame):
        """streamlit-webrtc's callback, in its thread, one frame at a time (frames that come meanwhile are
        skipped)."""
        import av

        detector = self.detector
        if detector is None:
            return frame
        return av.VideoFrame.from_ndarray(detector.process(frame.to_ndarray(format="rgb24")), format="rgb24")


def _readout(live: LiveStream, backend: str, playing: bool, has_ice: bool) -> None:
    """Frames/s and latency of the stream, refreshed every second while it plays."""
    if not playing:
        return
    if live.detector is None:
        return
    figures = live.detector.snapshot()
    st.caption(f"On the {ui.lower(ui.label(backend))} backend")
    cells = st.columns(4)
    fps = figures["frames_per_second"]
    cells[0].metric("Frames/s", f"{fps:.1f}" if fps is not None else "–")
    cells[1].metric("p50", f"{figures['p50_ms']:,.0f} ms" if figures["p50_ms"] is not None else "–")
    cells[2].metric("p95", f"{figures['p95_ms']:,.0f} ms" if figures["p95_ms"] is not None else "–")
    cells[3].metric("Frames", f"{figures['frames']:,}")
    if figures["error"]:
        st.error(f"Frames are shown without boxes: {figures['error']}", icon=":material/error:")
    since = live.since
    if not figures["frames"] and since is not None and time.monotonic() - since > NO_FRAMES_AFTER_S:
        st.error(f"No frame has arrived in {NO_FRAMES_AFTER_S:.0f} s: the browser and the app cannot reach each "
                 "other. " + ("Check the STUN/TURN servers of INFERENCE_ICE_SERVERS." if has_ice else
                              "Across networks (not one machine or a LAN) set INFERENCE_ICE_SERVERS to a STUN/TURN "
                              "server.") + " Press Stop, then Start.", icon=":material/signal_disconnected:")
