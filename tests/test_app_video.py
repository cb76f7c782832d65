"""The detection page's Video source under AppTest: a clip run locally and in Compare, its figures, downloads and
parity; bad files; results that belong to the inputs on screen; the token kept off the page.

(The Live camera's WebRTC component needs a real Streamlit server: tests/test_browser.py drives it in Chromium.)
"""

from __future__ import annotations

import time
from pathlib import Path

from test_app import TOKEN, app, click, endpoint, page_text  # noqa: F401 (endpoint is a fixture)

SAMPLE_CLIP = Path(__file__).resolve().parent.parent / "assets" / "sample-clip.mp4"


def video_page(**query):
    return app("object-detection", query={"source": "Video", **query})


def detect(at, timeout: float = 120.0):
    """Click "Detect on video" and rerun the page (as its live view does) until the run's results are shown."""
    click(at, "od_video_go")
    deadline = time.monotonic() + timeout
    while "frames run" not in page_text(at) and not at.warning and time.monotonic() < deadline:
        time.sleep(0.2)
        at.run()
        assert not at.exception, at.exception
    return at


def test_the_sample_clip_runs_tracked_with_figures_and_downloads():
    at = detect(video_page(stride="4"))
    assert not at.error, [error.value for error in at.error]
    text = page_text(at)
    assert "30 frames run. sample-clip.mp4 · 640×360 · 15 frames/s · 1 frame in 4" in text
    metrics = {metric.label: metric.value for metric in at.metric}
    assert float(metrics["Frames/s"]) > 0 and metrics["Frames"] == "30"
    assert metrics["p50"].endswith(" ms") and metrics["p95"].endswith(" ms")
    assert "track ids" in text and "first call" in text
    assert [button.label for button in at.get("download_button")][:2] == ["Annotated MP4", "Detections JSONL"]
    assert at.get("arrow_vega_lite_chart") or at.get("vega_lite_chart")  # latency over the clip
    history = at.dataframe[-1].value
    assert history.iloc[-1]["page"] == "object detection (video)" and "30 frames" in history.iloc[-1]["output"]


def test_compare_on_video_matches_every_frame_and_keeps_the_token_off_the_page(endpoint):  # noqa: F811
    at = detect(app("object-detection", query={"source": "Video", "mode": "compare", "stride": "6"},
                    secrets=endpoint))
    assert not at.error, [error.value for error in at.error]
    assert [header.value for header in at.subheader][:2] == ["Local", "Remote"]
    metrics = {metric.label: metric.value for metric in at.metric}
    assert metrics["Frames compared"] == "20" and metrics["Frames that agree"] == "20 (100%)"
    assert metrics["Only local"] == "0" and metrics["Only remote"] == "0"
    assert any("Every box of every frame has a match" in item.value for item in at.success)
    assert TOKEN not in page_text(at)


def test_a_file_that_is_no_video_is_an_error_and_nothing_runs():
    at = video_page()
    at.segmented_control(key="od_clip").set_value("Upload").run()
    at.file_uploader(key="od_video_upload").set_value(("holiday.mp4", b"not a video" * 100, "video/mp4")).run()
    assert any("This video cannot be used: 'holiday.mp4' is not a video FFmpeg can read" in error.value
               and "MP4, WebM, MOV or MKV" in error.value for error in at.error)
    click(at, "od_video_go")
    assert any("Nothing was run" in error.value for error in at.error)
    assert at.button(key="od_video_go") and at.slider[0] and at.number_input(key="od_stride")  # every control is there


def test_a_clip_over_the_length_limit_is_refused_with_the_setting_to_change():
    at = app("object-detection", query={"source": "Video"}, secrets={"INFERENCE_MAX_VIDEO_SECONDS": "5"})
    assert any("The sample clip cannot be used" in error.value and "lasts 8 s, over the 5 s limit" in error.value
               for error in at.error)
    click(at, "od_video_go")
    assert any("Nothing was run" in error.value and "Upload a video" in error.value for error in at.error)
    at.segmented_control(key="od_clip").set_value("Upload").run()
    at.file_uploader(key="od_video_upload").set_value(("trip.mp4", SAMPLE_CLIP.read_bytes(), "video/mp4")).run()
    assert any("'trip.mp4' lasts 8 s, over the 5 s limit: trim it" in error.value for error in at.error)


def test_results_belong_to_the_inputs_on_screen():
    at = detect(video_page(stride="6"))
    assert "20 frames run" in page_text(at)
    at.slider[0].set_value(0.3).run()  # the threshold: the kept run was not made with it
    assert "frames run" not in page_text(at) and not at.get("download_button")[:-1]


def test_the_live_view_shows_progress_while_the_clip_runs_and_stop_keeps_what_was_done():
    at = click(video_page(max_edge="Full size"), "od_video_go")  # returns at once: the clip runs in threads
    assert at.get("progress") or "Warming up" in page_text(at)
    assert not at.button(key="od_video_stop").disabled
    deadline = time.monotonic() + 60
    while "frames/s · p50" not in page_text(at) and time.monotonic() < deadline:
        time.sleep(0.2)
        at.run()
    click(at, "od_video_stop")
    deadline = time.monotonic() + 60
    while not at.warning and time.monotonic() < deadline:
        time.sleep(0.2)
        at.run()
    assert any(warning.value.startswith("Stopped at frame ") for warning in at.warning)
    assert at.get("video") and at.button(key="od_video_stop").disabled
    history = at.dataframe[-1].value
    assert history.iloc[-1]["page"] == "object detection (video)"


def test_a_backend_that_is_down_is_its_columns_error_and_nothing_says_stopped(unused_port):
    secrets = {"REMOTE_INFERENCE_ENABLED": "true", "REMOTE_INFERENCE_TOKEN": TOKEN, "REMOTE_INFERENCE_TIMEOUT": "3",
               "REMOTE_INFERENCE_ENDPOINT": f"http://127.0.0.1:{unused_port}/inference"}
    at = app("object-detection", query={"source": "Video", "mode": "compare", "stride": "6"}, secrets=secrets)
    at = detect(at)
    assert any("cannot reach the remote endpoint" in error.value for error in at.error)
    assert not any("Stopped" in warning.value for warning in at.warning)
    assert "20 frames run" in page_text(at)  # the local column ran
    assert TOKEN not in page_text(at)


def test_a_clip_cut_short_says_it_may_be_truncated(tmp_path):
    """A web-ready MP4 (its index first) cut in half plays up to the cut: the run says so instead of "Stopped"."""
    import av

    whole = tmp_path / "web.mp4"
    with av.open(str(SAMPLE_CLIP)) as source, av.open(str(whole), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    data = whole.read_bytes()
    at = video_page(stride="4")
    at.segmented_control(key="od_clip").set_value("Upload").run()
    at.file_uploader(key="od_video_upload").set_value(("cut.mp4", data[: len(data) // 2], "video/mp4")).run()
    assert not at.error, [error.value for error in at.error]
    at = detect(at)
    assert any("of the 30 its header announces: the file may be truncated or damaged" in warning.value
               for warning in at.warning), [warning.value for warning in at.warning]
    assert not any("Stopped" in warning.value for warning in at.warning)
