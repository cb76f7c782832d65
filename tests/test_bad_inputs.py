"""Every kind of bad input gets a typed error whose message says what is wrong and what to do."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import time
import zlib
from contextlib import nullcontext as does_not_raise

import numpy as np
import pytest
from PIL import Image

from inference import (
    Engine,
    InvalidInput,
    ModelLoadError,
    RemoteNotConfigured,
    Settings,
    UnsupportedTask,
    load_image,
    load_model,
)
from inference.images import ImageData


def _png(width: int, height: int, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def _huge_png_header(width: int = 50_000, height: int = 50_000) -> bytes:
    """A valid PNG header that claims width x height pixels (by default 7.5 GB decoded)."""
    small = _png(1, 1)
    ihdr = b"IHDR" + struct.pack(">II", width, height) + small[24:29]
    return small[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + small[33:]


TRUNCATED = _png(64, 64)[:-40]


@pytest.mark.parametrize(
    ("source", "expectation", "message"),
    [
        ("/no/such/photo.jpg", pytest.raises(InvalidInput), "does not exist"),  # missing file
        (b"this is not an image", pytest.raises(InvalidInput), "not an image"),  # text bytes
        (b"", pytest.raises(InvalidInput), "empty"),  # empty upload
        (TRUNCATED, pytest.raises(InvalidInput), "truncated"),  # cut-off PNG
        (_huge_png_header(), pytest.raises(InvalidInput), "too large"),  # decompression bomb
        (_png(8000, 6000), pytest.raises(InvalidInput), "48,000,000 pixels"),  # over our 40 MP limit
        (np.zeros((10, 10, 2), np.uint8), pytest.raises(InvalidInput), "shape"),  # two channels
        (np.full((4, 4, 3), 300.0), pytest.raises(InvalidInput), "0-255"),  # out-of-range floats
        ({"not": "an image"}, pytest.raises(InvalidInput), "cannot use a dict"),  # wrong type
        (np.zeros((4, 4, 3), np.uint8), does_not_raise(), None),  # uint8 RGB
        (np.zeros((4, 4), np.uint8), does_not_raise(), None),  # grayscale
        (np.ones((4, 4, 3), np.float32), does_not_raise(), None),  # floats 0-1
        (_png(4, 4, "RGBA"), does_not_raise(), None),  # alpha is flattened
        (_png(4000, 3000), does_not_raise(), None),  # a 12 MP photo is fine
    ],
    ids=["missing-file", "text-bytes", "empty", "truncated", "bomb", "over-limit", "two-channels",
         "bad-floats", "dict", "uint8", "grayscale", "float01", "rgba", "12mp"],
)
def test_load_image_table(source, expectation, message):
    with expectation as error:
        image = load_image(source)
        assert image.mode == "RGB"
    if message:
        assert message in str(error.value)


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(InvalidInput, match="is a directory"):
        load_image(tmp_path)


def test_decompression_bomb_is_refused_without_decoding():
    started = time.perf_counter()
    with pytest.raises(InvalidInput):
        load_image(_huge_png_header())
    assert time.perf_counter() - started < 1.0


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's own note, once per process
@pytest.mark.parametrize("size", [(12_000, 8_000), (50_000, 50_000)], ids=["past-pillow-warning", "past-pillow-error"])
def test_huge_headers_are_refused_by_our_limit(size):
    # 96 MP is past Pillow's warning threshold (89 MP) but under its error threshold: our limit refuses it.
    data = _huge_png_header(*size)
    for check in (load_image, ImageData):
        with pytest.raises(InvalidInput) as caught:
            check(data)
        assert caught.value.code == "image_too_large"


def test_pixel_limit_is_configurable(demo_dir, photo):
    with Engine(Settings(max_image_pixels=1000)) as engine:
        det = load_model(demo_dir["object-detection"], task="object-detection", engine=engine)
        with pytest.raises(InvalidInput, match="over the limit of 1,000"):
            det(photo)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° when shown
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    assert load_image(buffer.getvalue()).size == (20, 40)


@pytest.mark.parametrize(
    ("task", "args", "kwargs", "error", "message"),
    [
        ("text-generation", ("",), {}, InvalidInput, "prompt is empty"),  # empty prompt
        ("text-generation", ("   \n",), {}, InvalidInput, "prompt is empty"),  # whitespace prompt
        ("text-generation", (None,), {}, InvalidInput, "prompt must be text"),  # no prompt at all
        ("text-generation", (42,), {}, InvalidInput, "prompt must be text"),  # not text
        ("text-generation", ("hi",), {"max_new_tokens": 0}, InvalidInput, "max_new_tokens=0"),  # zero tokens
        ("text-generation", ("hi",), {"max_new_tokens": -5}, InvalidInput, "greater than or equal to 1"),  # negative
        ("text-generation", ("hi",), {"max_new_tokens": 10**6}, InvalidInput, "less than or equal to 4096"),  # absurd
        ("text-generation", ("hi",), {"max_new_tokens": 1020}, InvalidInput, "context of 1024"),  # over context
        ("text-generation", ("hi",), {"max_tokens": 5}, InvalidInput, "did you mean 'max_new_tokens'"),  # typo
        ("text-generation", ("hi",), {"temperature": -1}, InvalidInput, "temperature=-1"),  # negative temperature
        ("text-generation", ("hi",), {"top_p": 0}, InvalidInput, "top_p=0"),  # zero nucleus
        ("text-generation", ("hi",), {"max_new_tokens": "many"}, InvalidInput, "valid integer"),  # not a number
        ("object-detection", ("PHOTO",), {"threshold": 1.5}, InvalidInput, "between 0 and 1"),  # threshold > 1
        ("object-detection", ("PHOTO",), {"threshold": -0.1}, InvalidInput, "threshold=-0.1"),  # threshold < 0
        ("object-detection", ("PHOTO",), {"prompt": "cats"}, InvalidInput, "takes no prompt"),  # prompt for detection
        ("object-detection", (), {}, InvalidInput, "needs an image"),  # no image
        ("image-to-text", (), {"prompt": "hi"}, InvalidInput, "needs an image"),  # prompt but no image
        ("image-to-text", ("PHOTO",), {"prompt": 3}, InvalidInput, "prompt must be text"),  # prompt not text
    ],
)
def test_bad_call_table(demo_dir, session_engine, photo, task, args, kwargs, error, message):
    model = load_model(demo_dir[task], task=task, engine=session_engine)
    args = tuple(photo if arg == "PHOTO" else arg for arg in args)
    with pytest.raises(error) as caught:
        model(*args, **kwargs)
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)  # InvalidInput is also a ValueError


def test_empty_optional_prompt_means_plain_caption(demo_dir, session_engine, photo):
    cap = load_model(demo_dir["image-to-text"], task="image-to-text", engine=session_engine)
    assert cap(photo, prompt="  ", max_new_tokens=4).text == cap(photo, max_new_tokens=4).text


def test_stream_of_detection_is_refused(demo_dir, session_engine):
    det = load_model(demo_dir["object-detection"], task="object-detection", engine=session_engine)
    with pytest.raises(InvalidInput, match="no text to stream"):
        det.stream(b"")


def test_unknown_task_lists_supported_ones(demo_dir):
    with pytest.raises(UnsupportedTask) as caught:
        load_model(demo_dir["text-generation"], task="text-generaton")
    message = str(caught.value)
    assert "did you mean 'text-generation'" in message.lower()
    for task in ("image-text-to-text", "image-to-text", "object-detection", "text-generation"):
        assert task in message


@pytest.mark.parametrize(
    ("model_id", "task", "message"),
    [
        ("/no/such/model/dir", "text-generation", "there is no such directory"),  # missing directory
        ("./missing-model", "text-generation", "there is no such directory"),  # relative path
        ("hustvl/yolos-tiny", "object-detection", "not reachable offline"),  # hub id, hub unreachable
        ("not a valid id!!", "object-detection", "neither a local directory nor a valid"),  # nonsense
        ("EMPTY_DIR", "text-generation", "no config.json"),  # a directory without a model
        ("text-generation", "object-detection", "cannot do object-detection"),  # wrong task
        ("object-detection", "image-to-text", "cannot do image-to-text"),  # wrong task
    ],
)
def test_model_load_errors_say_why(demo_dir, engine, tmp_path, model_id, task, message):
    model_id = demo_dir.get(model_id, model_id)
    if model_id == "EMPTY_DIR":
        model_id = str(tmp_path)
    with pytest.raises(ModelLoadError) as caught:
        load_model(model_id, task=task, backend="local", engine=engine)
    assert message in str(caught.value)


def test_broken_weights_are_a_model_load_error(demo_dir, tmp_path, engine):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(demo_dir["object-detection"], broken)
    (broken / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="could not be loaded"):
        load_model(str(broken), task="object-detection", engine=engine)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (Settings(remote_enabled=False), "REMOTE_INFERENCE_ENABLED=true"),  # disabled
        (Settings(remote_enabled=True), "REMOTE_INFERENCE_ENDPOINT"),  # enabled without an endpoint
    ],
)
def test_remote_without_configuration_says_what_to_set(demo_dir, settings, message):
    with pytest.raises(RemoteNotConfigured, match=message):
        load_model(demo_dir["text-generation"], task="text-generation", backend="remote", settings=settings)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backend": "gpu"}, "backend 'gpu' is not one of"),  # unknown backend
        ({"model_id": "  "}, "model_id is empty"),  # blank id
    ],
)
def test_bad_load_model_arguments(demo_dir, kwargs, message):
    arguments = {"model_id": demo_dir["text-generation"], "task": "text-generation", **kwargs}
    with pytest.raises(InvalidInput, match=message):
        load_model(**arguments)


def test_import_inference_does_not_import_torch():
    code = "import sys, inference; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_png_header_check_decodes_no_pixels():
    # A PNG whose pixel data is damaged: the header check (all a remote call needs) passes without
    # touching the pixels; decoding fails as it should.
    data = bytearray(_png(64, 64))
    idat = data.index(b"IDAT")
    data[idat + 8:idat + 24] = b"\xff" * 16
    header = ImageData(bytes(data))
    assert header.size == (64, 64) and header.format == "PNG"
    with pytest.raises(InvalidInput, match="damaged"):
        load_image(bytes(data))
