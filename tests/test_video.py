"""Video files: decoding frame by frame with clear errors, tracking, the detector on every frame, and encoding for
browsers (clips built on the spot with PyAV)."""

from __future__ import annotations

import json
import time

import numpy as np
import psutil
import pytest
import supervision as sv

from inference import Settings, load_model
from inference.annotate import annotate_detections, labels_for
from inference.errors import InvalidInput
from inference.video import Tracker, VideoReader, VideoWriter
from inference.video_job import LiveDetector, VideoJob


def _moving_square(index: int, size=(160, 120)) -> np.ndarray:
    width, height = size
    image = np.full((height, width, 3), 30, dtype=np.uint8)
    x = 10 + 3 * index
    image[40:80, x:x + 40] = (220, 180, 40)
    return image


@pytest.fixture
def clip(tmp_path):
    """Two seconds at 15 frames/s: a square moving right, as H.264 MP4."""
    path = tmp_path / "clip.mp4"
    with VideoWriter(path, 15) as writer:
        for index in range(30):
            writer.write(_moving_square(index))
    return path


def test_a_written_clip_reads_back_frame_by_frame(clip, tmp_path):
    with VideoReader(clip) as reader:
        assert (reader.info.width, reader.info.height, round(reader.info.fps)) == (160, 120, 15)
        assert reader.info.codec == "h264"
        frames = list(reader.frames())
    assert [frame.index for frame in frames] == list(range(30))
    assert frames[0].image.shape == (120, 160, 3) and frames[-1].time_s == pytest.approx(29 / 15, abs=0.01)
    assert np.abs(frames[5].image.astype(int) - _moving_square(5)).mean() < 8  # lossy, but the same picture
    # Every other frame, scaled down; and VP9 WebM as well as H.264 MP4.
    webm = tmp_path / "out.webm"
    with VideoReader(clip) as reader, VideoWriter(webm, reader.info.fps / 2) as writer:
        for frame in reader.frames(stride=2, max_edge=80):
            assert frame.image.shape == (60, 80, 3)
            writer.write(frame.image)
    with VideoReader(webm) as reader:
        assert reader.info.codec == "vp9" and len(list(reader.frames())) == 15


@pytest.mark.parametrize(("data", "fragment"), [
    (b"", "is empty"),
    (b"this is not a video at all" * 40, "not a video FFmpeg can read"),
])
def test_files_that_are_no_video_say_so(data, fragment):
    with pytest.raises(InvalidInput, match=fragment):
        VideoReader(data)


def test_limits_on_size_and_length(clip):
    with pytest.raises(InvalidInput, match=r"is \d+ KB, over the 100 bytes limit"):
        VideoReader(clip, max_bytes=100)
    with pytest.raises(InvalidInput, match="frames are 160x120 pixels, over the 10,000 pixel limit"):
        VideoReader(clip, max_pixels=10_000)
    with pytest.raises(InvalidInput, match=r"lasts 2 s, over the 1 s limit"):
        VideoReader(clip, max_seconds=1)


def test_times_count_from_the_first_frame_whatever_the_container_starts_at(tmp_path):
    """MKV (and WebM) say their duration from 0: a 2 s clip whose timestamps start at 700 s is not 702 s long."""
    import av
    from fractions import Fraction

    for name, container in (("late.mkv", "matroska"), ("late.mp4", "mp4")):
        path = tmp_path / name
        with av.open(str(path), "w", format=container) as out:
            stream = out.add_stream("libx264", rate=15)
            stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
            for index in range(30):
                frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
                frame.pts, frame.time_base = 700 * 15 + index, Fraction(1, 15)
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        with VideoReader(path, max_seconds=60) as reader:
            assert reader.info.duration_s == pytest.approx(2.0, abs=0.1)
            times = [frame.time_s for frame in reader.frames()]
        assert times[0] == 0.0 and times[-1] == pytest.approx(29 / 15, abs=0.01)


def test_a_truncated_clip_gives_what_it_has_or_a_clear_error(clip):
    data = clip.read_bytes()
    try:
        with VideoReader(data[: len(data) // 2]) as reader:
            frames = list(reader.frames())
        assert len(frames) < 30
    except InvalidInput as exc:
        assert "MP4, WebM, MOV or MKV" in str(exc) or "re-encode" in str(exc)


def test_stopping_mid_clip_closes_the_file(clip):
    reader = VideoReader(clip)
    frames = reader.frames()
    next(frames)
    assert any(file.path == str(clip) for file in psutil.Process().open_files())
    frames.close()  # a Stop button: the loop ends early
    assert not any(file.path == str(clip) for file in psutil.Process().open_files())


def test_decoding_a_long_clip_keeps_memory_flat(tmp_path):
    path = tmp_path / "long.mp4"
    with VideoWriter(path, 30) as writer:
        for index in range(600):
            writer.write(_moving_square(index % 40, size=(320, 240)))
    process = psutil.Process()
    with VideoReader(path) as reader:
        frames = reader.frames()
        for _ in range(100):
            next(frames)
        early = process.memory_info().rss
        count = 100 + sum(1 for _ in frames)
    assert count == 600
    assert process.memory_info().rss - early < 30 * 2**20  # 500 more frames of 230 kB each would be 115 MB


def test_a_box_moving_across_frames_keeps_one_track_id():
    tracker = Tracker(fps=15)
    ids = []
    for index in range(20):
        x = 10.0 + 6 * index
        detections = sv.Detections(xyxy=np.array([[x, 40.0, x + 40, 80.0]]), confidence=np.array([0.9]),
                                   class_id=np.array([0]))
        tracked = tracker.update(detections)
        ids.extend(tracked.tracker_id.tolist())
    assert len(ids) == 20  # every detection is kept; only the first frame's has no id yet (-1)
    assert len(set(ids[1:])) == 1 and ids[1] >= 0


def test_the_detector_runs_tracks_and_annotates_a_clip(clip, demo_dir, session_engine, tmp_path):
    det = load_model(demo_dir["object-detection"], task="object-detection", backend="local", engine=session_engine)
    out = tmp_path / "annotated.mp4"
    results = []
    with VideoWriter(out, 15 / 2) as writer:
        for frame in det.video(clip, threshold=0.3, stride=2):
            labels = labels_for(frame.result.detections)
            if len(frame.result.detections):
                assert frame.result.detections.tracker_id is not None
                assert all(label.startswith("#") for label, track in zip(labels, frame.result.detections.tracker_id,
                                                                          strict=True) if track >= 0)
            writer.write(np.asarray(annotate_detections(frame.image, frame.result.detections)))
            results.append(frame)
    assert [frame.index for frame in results] == list(range(0, 30, 2))
    assert all(frame.result.timings.total_ms > 0 for frame in results)
    assert sum(len(frame.result.detections) for frame in results) > 0
    with VideoReader(out) as reader:
        assert len(list(reader.frames())) == 15


def test_video_is_for_detection_models(demo_dir, session_engine, clip):
    text = load_model(demo_dir["text-generation"], task="text-generation", backend="local", engine=session_engine)
    with pytest.raises(InvalidInput, match="video runs object detection"):
        next(text.video(clip))


def test_a_remote_detector_keeps_frames_in_flight_and_answers_in_order(clip, remote_settings, session_engine):
    det = load_model("det", task="object-detection", backend="remote", settings=remote_settings,
                     engine=session_engine)
    one_at_a_time = list(det.video(clip, threshold=0.3, in_flight=1))
    pipelined = list(det.video(clip, threshold=0.3))  # 4 in flight on a remote backend
    assert [frame.index for frame in pipelined] == list(range(30))
    for alone, together in zip(one_at_a_time, pipelined):
        np.testing.assert_allclose(alone.result.detections.xyxy, together.result.detections.xyxy, atol=0.01)
        assert list(alone.result.detections.tracker_id) == list(together.result.detections.tracker_id)
    with pytest.raises(InvalidInput, match="in_flight"):
        next(det.video(clip, in_flight=0))


# --------------------------------------------------------------------------- VideoJob: what the page's Video runs


def test_a_job_runs_local_and_remote_side_by_side_with_parity_per_frame(clip, demo_dir, remote_settings,
                                                                       session_engine, tmp_path):
    local = load_model(demo_dir["object-detection"], task="object-detection", backend="local", engine=session_engine)
    remote = load_model("det", task="object-detection", backend="remote", settings=remote_settings,
                        engine=session_engine)
    job = VideoJob({"local": local, "remote": remote}, clip, directory=tmp_path, reference="local", threshold=0.3,
                   stride=2).start()
    assert job.wait(120)
    assert job.expected_frames == 15 and round(job.output_fps, 1) == 7.5
    for name, column in job.columns.items():
        assert column.error is None, column.error
        assert [frame.index for frame in column.frames] == list(range(0, 30, 2))
        assert column.frames_per_second > 0 and column.latency_ms(95) >= column.latency_ms(50) > 0
        assert column.warmup_ms > 0 and column.has_video and column.track_ids
        with VideoReader(column.video_path) as reader:  # the annotated clip, H.264, every frame run
            assert reader.info.codec == "h264" and len(list(reader.frames())) == 15
        lines = [json.loads(line) for line in column.lines_path.read_text().splitlines()]
        assert [line["frame"] for line in lines] == list(range(0, 30, 2))
        boxes = [box for line in lines for box in line["detections"]]
        assert boxes and {"label", "score", "box", "track_id"} <= set(boxes[0])
        assert any(box["track_id"] is not None for box in boxes)
        assert name != "remote" or all(line["server_ms"] is not None for line in lines)
    # The same model on both sides: every frame agrees, box for box.
    assert sorted(item.index for item in job.parity) == list(range(0, 30, 2))
    assert all(item.agree and item.other == "remote" for item in job.parity)
    assert sum(item.matched for item in job.parity) == sum(frame.boxes for frame in job.columns["local"].frames)


def test_a_stopped_job_ends_after_its_frame_and_keeps_a_playable_video(demo_dir, session_engine, tmp_path):
    long_clip = tmp_path / "long.mp4"
    with VideoWriter(long_clip, 15) as writer:
        for index in range(300):
            writer.write(_moving_square(index % 60))
    local = load_model(demo_dir["object-detection"], task="object-detection", backend="local", engine=session_engine)
    job = VideoJob({"local": local}, long_clip, directory=tmp_path / "out", reference="local")
    (tmp_path / "out").mkdir()
    job.start()
    deadline = time.monotonic() + 60
    while len(job.columns["local"].frames) < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    job.stop()
    assert job.wait(10) and job.stopped and job.reference is None  # one column: nothing to compare
    column = job.columns["local"]
    assert 5 <= len(column.frames) < 300 and column.has_video
    with VideoReader(column.video_path) as reader:
        assert len(list(reader.frames())) == len(column.frames)
    assert not [path for path in psutil.Process().open_files() if path.path == str(long_clip)]


def test_a_job_checks_the_clip_first_and_one_failing_model_spares_the_other(clip, demo_dir, session_engine,
                                                                            tmp_path, unused_port):
    local = load_model(demo_dir["object-detection"], task="object-detection", backend="local", engine=session_engine)
    with pytest.raises(InvalidInput, match="not a video"):
        VideoJob({"local": local}, _written(tmp_path / "notes.mp4", b"not a video" * 50), directory=tmp_path)
    down = load_model("det", task="object-detection", backend="remote", engine=session_engine,
                      settings=Settings(remote_enabled=True, remote_timeout=5,
                                        remote_endpoints=(f"http://127.0.0.1:{unused_port}/inference",)))
    job = VideoJob({"local": local, "remote": down}, clip, directory=tmp_path, reference="local", stride=3).start()
    assert job.wait(120)
    assert job.columns["remote"].error is not None and not job.columns["remote"].frames
    assert job.columns["local"].error is None and len(job.columns["local"].frames) == 10
    assert not job.parity  # nothing to match with


def test_the_live_detector_annotates_tracks_and_survives_a_failing_backend(demo_dir, session_engine, unused_port):
    local = load_model(demo_dir["object-detection"], task="object-detection", backend="local", engine=session_engine)
    live = LiveDetector(local, threshold=0.3, max_edge=320)
    for index in range(12):
        out = live.process(_moving_square(index, size=(640, 480)))
        assert out.shape == (240, 320, 3)  # scaled to the cap, annotated
    figures = live.snapshot()
    assert figures["frames"] == 12 and figures["frames_per_second"] > 0 and figures["p95_ms"] >= figures["p50_ms"]
    assert figures["error"] is None
    down = load_model("det", task="object-detection", backend="remote", engine=session_engine,
                      settings=Settings(remote_enabled=True, remote_timeout=2,
                                        remote_endpoints=(f"http://127.0.0.1:{unused_port}/inference",)))
    failing = LiveDetector(down)
    frame = _moving_square(0)
    assert np.array_equal(failing.process(frame), frame)  # shown as it came
    assert "RemoteUnavailable" in failing.snapshot()["error"] and failing.snapshot()["frames"] == 0


def _written(path, data: bytes):
    path.write_bytes(data)
    return path


def test_boxes_under_bytetracks_own_high_confidence_still_get_an_id():
    """ByteTrack starts tracks only from "high confidence" boxes (0.6 by default); ours are the threshold's."""
    tracker = Tracker(fps=15, threshold=0.3)
    ids = []
    for index in range(5):
        x = 10.0 + 6 * index
        tracked = tracker.update(sv.Detections(xyxy=np.array([[x, 40.0, x + 40, 80.0]]), confidence=np.array([0.35]),
                                               class_id=np.array([0])))
        ids.extend(tracked.tracker_id.tolist())
    assert len(set(ids[1:])) == 1 and ids[1] >= 0


def test_a_hung_backend_never_holds_the_live_stream(session_engine):
    """A server that takes the connection and never answers: each frame passes after frame_timeout_s, unannotated,
    with the reason, and frames that come meanwhile pass at once."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel accepts; nobody ever reads or answers
    try:
        hung = load_model("det", task="object-detection", backend="remote", engine=session_engine,
                          settings=Settings(remote_enabled=True, remote_timeout=30, remote_endpoints=(
                              f"http://127.0.0.1:{silent.getsockname()[1]}/inference",)))
        live = LiveDetector(hung, frame_timeout_s=0.5)
        frame = _moving_square(0)
        started = time.perf_counter()
        assert np.array_equal(live.process(frame), frame)
        assert np.array_equal(live.process(frame), frame)  # the backend is still busy: through at once
        assert time.perf_counter() - started < 2.0
        assert "the backend took over 0.5 s for one frame" in live.snapshot()["error"]
    finally:
        silent.close()  # the hung call fails now, and its thread ends
    live.close(wait=True)


def test_a_still_image_is_not_a_video(photo_png):
    with pytest.raises(InvalidInput, match="is a still image, not a video: detect on it as an image"):
        VideoReader(photo_png)


def test_untracked_boxes_still_say_track_id_null(clip, demo_dir, session_engine, tmp_path):
    local = load_model(demo_dir["object-detection"], task="object-detection", backend="local", engine=session_engine)
    job = VideoJob({"local": local}, clip, directory=tmp_path, threshold=0.3, track=False, stride=5).start()
    assert job.wait(60) and not job.columns["local"].track_ids
    boxes = [box for line in job.columns["local"].lines_path.read_text().splitlines()
             for box in json.loads(line)["detections"]]
    assert boxes and all(box["track_id"] is None for box in boxes)


def test_new_live_settings_swap_the_detector_under_a_stream_that_carries_on(demo_dir, session_engine):
    """The stream's callback stays the same; frames reaching the replaced detector pass, never raise (an exception
    would end streamlit-webrtc's worker, and the stream with it)."""
    import av

    from ui.live import LiveStream

    local = load_model(demo_dir["object-detection"], task="object-detection", backend="local", engine=session_engine)
    live = LiveStream()
    frame = av.VideoFrame.from_ndarray(_moving_square(0, size=(320, 240)), format="rgb24")
    assert live.annotate(frame) is frame  # no detector yet: the frame as it came
    first = LiveDetector(local, threshold=0.3)
    live.swap(first, ("a",))
    assert live.annotate(frame).to_ndarray(format="rgb24").shape == (240, 320, 3)
    live.swap(LiveDetector(local, threshold=0.4), ("b",))
    image = _moving_square(1, size=(320, 240))
    assert np.array_equal(first.process(image), image)  # closed: passes, no RuntimeError
    for index in range(3):
        live.annotate(av.VideoFrame.from_ndarray(_moving_square(index, size=(320, 240)), format="rgb24"))
    assert live.detector.snapshot()["frames"] == 3 and live.settings == ("b",)
