"""Issue 10 §2 under AppTest: bad uploads, stale results, the run history, demo names, offline model ids.

Each test drives the app as a person would and asserts what they would see: an ``st.error`` saying what is
wrong, every control still there, no traceback, and results that belong to the inputs on screen.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import struct
import time
import zlib

import pytest
from PIL import Image

from test_app import PAGES, TOKEN, app, click, page_text

# --------------------------------------------------------------------------- bad files


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid PNG header claiming ``width`` x ``height`` pixels, with a tiny IDAT: no pixels are allocated."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _chunk(b"IEND", b""))


def garbage_jpeg() -> bytes:
    """A real JPEG's header (640x480) followed by random bytes instead of its compressed pixels."""
    buffer = io.BytesIO()
    Image.new("RGB", (640, 480), (200, 10, 10)).save(buffer, format="JPEG")
    jpeg = buffer.getvalue()
    start_of_scan = jpeg.index(b"\xff\xda")
    return jpeg[:start_of_scan + 14] + random.Random(7).randbytes(3000)


#: name → (bytes, what the error must say)
BAD_FILES = {
    "notes.png": (b"these are my shopping notes, not a picture\n" * 8, "not an image"),  # text renamed .png
    "photo.jpg": (garbage_jpeg(), "damaged or truncated"),  # JPEG header, garbage body
    "empty.png": (b"", "empty"),  # zero bytes
    "huge.png": (huge_png(), "too large"),  # 20000 x 20000 pixels, 69 bytes
}
IMAGE_PAGES = {"image-to-text": ("i2t", ["i2t_model", "i2t_prompt"], "i2t_go"),
               "object-detection": ("od", ["od_model"], "od_go")}


def upload(at, prefix: str, name: str, data: bytes):
    at.segmented_control(key=f"{prefix}_source").set_value("Upload").run()
    at.file_uploader(key=f"{prefix}_upload").set_value((name, data, "image/png")).run()
    return at


@pytest.mark.parametrize("name", BAD_FILES)
@pytest.mark.parametrize("page", IMAGE_PAGES)
def test_a_bad_upload_is_an_error_before_any_click_and_every_control_stays(page, name):
    prefix, inputs, button = IMAGE_PAGES[page]
    data, says = BAD_FILES[name]
    at = upload(app(page), prefix, name, data)
    assert not at.exception, [e.value for e in at.exception]
    errors = [error.value for error in at.error]
    assert any(name in error and says in error for error in errors), errors
    assert [at.text_input(key=key).key for key in inputs] == inputs  # the controls are all there
    assert at.button(key=button).label in ("Describe", "Detect")
    assert not at.get("imgs") and not at.get("image")  # no preview of it
    click(at, button)  # a click says it again, and runs nothing
    assert any("Nothing was run" in error.value and says in error.value for error in at.error)
    assert not at.metric and "Total" not in page_text(at)  # and shows no result


# --------------------------------------------------------------------------- stale results


def test_a_new_sample_drops_the_old_boxes_and_shows_its_preview():
    at = click(app("object-detection"), "od_go")
    assert "detections shown" in page_text(at)
    at.selectbox(key="od_sample").set_value("cat").run()
    assert not at.exception
    text = page_text(at)
    assert "detections shown" not in text and not at.dataframe[:-1]  # no boxes, no table (only the history)
    assert "cat.jpg" in text  # the preview of the picture now on screen


def test_changed_settings_drop_the_old_answer():
    at = click(app("text-generation"), "tg_go")
    assert any(metric.label == "Total" for metric in at.metric)
    at.slider(key="tg_max_new_tokens").set_value(8).run()
    assert not any(metric.label == "Total" for metric in at.metric) and "Tokens/s" not in page_text(at)


@pytest.fixture
def doomed_model(demo_dir, tmp_path):
    """A copy of the demo text model in a directory the test deletes."""
    path = tmp_path / "doomed-model"
    shutil.copytree(demo_dir["text-generation"], path)
    return str(path)


def test_a_failed_run_replaces_the_old_results(doomed_model):
    from ui.state import get_engine

    # Compare on the loopback server, which does not serve this model: the remote side fails every time.
    at = app("text-generation", query={"mode": "compare", "model": doomed_model})
    click(at, "tg_go")
    assert "**Total**" in page_text(at) and len(at.error) == 1  # local answered, remote failed
    get_engine().unload(doomed_model)
    shutil.rmtree(doomed_model)  # the same inputs now fail locally too
    click(at, "tg_go")
    assert [header.value for header in at.subheader][:2] == ["Local", "Remote"]
    assert not at.metric and "**Total**" not in page_text(at)  # no timings, answer or parity of the earlier run under the new errors
    assert "identical" not in page_text(at)
    assert len(at.error) == 2, [error.value for error in at.error]  # this run's two errors, each once


# --------------------------------------------------------------------------- run history


@pytest.fixture(scope="module")
def endpoint(demo_dir):
    from test_app import endpoint as make_endpoint

    yield from make_endpoint.__wrapped__(demo_dir)


def test_run_n_times_lands_in_the_history_with_settings_and_rounded_numbers(endpoint):
    at = app("text-generation", query={"mode": "compare", "max_new_tokens": "6"}, secrets=endpoint)
    click(at, "tg_go")
    at.number_input(key="tg_runs").set_value(3).run()
    click(at, "tg_repeat")
    (frame,) = [frame.value for frame in at.dataframe if "model" in frame.value.columns]  # the Run history
    assert len(frame) == 2 + 2 * 3  # one run on two backends, then three rounds on two backends
    assert list(frame["round"].iloc[2:]) == ["1/3", "1/3", "2/3", "2/3", "3/3", "3/3"]
    assert set(frame["mode"]) == {"Compare"} and set(frame["model"]) == {"demo/text-generation"}
    assert set(frame["task"]) == {"text-generation"} and set(frame["max_new_tokens"]) == {6}
    for name in frame.select_dtypes("float").columns:
        values = frame[name].dropna()
        assert (values.round(1) == values).all(), name
    assert {"mode", "backend", "model", "max_new_tokens", "total_ms"} <= set(frame.columns)
    assert TOKEN not in frame.to_csv()


# --------------------------------------------------------------------------- demo model names


@pytest.mark.parametrize("page", PAGES)
def test_demo_models_have_short_names_everywhere(page):
    demo_dir = os.environ["INFERENCE_DEMO_MODELS_DIR"]
    at = app(page, query={"mode": "compare"})
    model_key = {"text-generation": "tg_model", "image-to-text": "i2t_model", "object-detection": "od_model"}[page]
    assert at.text_input(key=model_key).value.startswith("demo/")
    assert demo_dir not in page_text(at)  # model box, share link, sidebar
    click(at, PAGES[page][1])
    assert demo_dir not in page_text(at)
    (frame,) = [frame.value for frame in at.dataframe if "model" in frame.value.columns]  # the Run history
    assert demo_dir not in frame.to_csv()


# --------------------------------------------------------------------------- unknown model while offline


@pytest.mark.parametrize("mode", ["local", "remote"])
def test_an_unknown_model_while_offline_fails_at_once_and_says_why(mode):
    at = app("text-generation", query={"mode": mode})
    at.text_input(key="tg_model").set_value("someone/model-that-is-not-cached").run()
    started = time.monotonic()
    click(at, "tg_go")
    assert time.monotonic() - started < 5
    (error,) = [error.value for error in at.error]
    assert "cannot be reached" in error and "not in this machine's Hugging Face cache" in error
    assert "demo/text-generation" in error  # what to use instead
