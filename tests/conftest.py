"""Shared fixtures: tiny random-weight models built once per session, sample images, fresh engines.

Nothing here downloads anything: HF_HUB_OFFLINE is forced before transformers is imported.
"""

from __future__ import annotations

import io
import os

import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The app builds its offline demo models here; the tests' own demo models live in the same place.
os.environ["INFERENCE_DEMO_MODELS_DIR"] = tempfile.mkdtemp(prefix="inference-demo-models-")
for _variable in list(os.environ):
    # Tests describe their own configuration; a developer's shell must not leak into them.
    if _variable.startswith(("REMOTE_INFERENCE_", "INFERENCE_")) and _variable not in (
            "INFERENCE_DEMO_MODELS_DIR", "INFERENCE_VLLM_PYTHON", "INFERENCE_RAY_PYTHON"):
        del os.environ[_variable]
# The app's offline text default is the real SmolLM2 (inference.bundled); the app tests run on the instant demo
# models, and the tests of the bundled model say so.
os.environ["INFERENCE_OFFLINE_MODELS"] = "demo"

import numpy as np
import pytest
from PIL import Image

from inference import Engine, Settings
from inference.demo_models import build_demo_models


@pytest.fixture(scope="session")
def demo_dir() -> dict[str, str]:
    """task → directory of its tiny demo model (built once, in seconds; the app uses the same ones)."""
    built = build_demo_models(os.environ["INFERENCE_DEMO_MODELS_DIR"])
    return {task: str(path) for task, path in built.items()}


@pytest.fixture(scope="session")
def session_engine() -> Engine:
    """One engine shared by tests that only call models (loading each demo model once)."""
    engine = Engine(Settings())
    yield engine
    engine.close()


@pytest.fixture
def engine() -> Engine:
    """A fresh engine for tests that look at the cache itself."""
    engine = Engine(Settings())
    yield engine
    engine.close()


def _photo(width: int = 320, height: int = 240, seed: int = 0) -> Image.Image:
    """A deterministic RGB test picture: a gradient with a few coloured blocks."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    array = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                      np.full_like(x, 128)], axis=-1).astype(np.uint8)
    for _ in range(4):
        x0, y0 = rng.integers(0, width // 2), rng.integers(0, height // 2)
        array[y0:y0 + height // 4, x0:x0 + width // 4] = rng.integers(0, 255, 3)
    return Image.fromarray(array)


@pytest.fixture(scope="session")
def photo() -> Image.Image:
    return _photo()


@pytest.fixture(scope="session")
def photo_png(photo) -> bytes:
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def photo_path(tmp_path, photo_png) -> str:
    path = tmp_path / "photo.png"
    path.write_bytes(photo_png)
    return str(path)


@pytest.fixture
def make_photo():
    return _photo


# --------------------------------------------------------------------------- servers on loopback

import contextlib
import socket
import threading
import time

import uvicorn

from inference.server import create_app, http_protocol

TOKEN = "tok-4f1d9b7e2c8a6350"  # the bearer token of the test servers; tests assert it never leaks


def _loopback_socket() -> socket.socket:  # noqa: D103
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.contextmanager
def serve(app, *, timeout: float = 30.0):
    """Run ``app`` under uvicorn on a free 127.0.0.1 port in a thread; yields the base URL."""
    sock = _loopback_socket()
    # The reference server's own HTTP protocol (with its header deadline), as `python -m inference.server` runs it.
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                           http=http_protocol()))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def served_demo_models(demo_dir) -> dict[str, str]:
    return {"tg": demo_dir["text-generation"], "cap": demo_dir["image-to-text"],
            "vlm": demo_dir["image-text-to-text"], "det": demo_dir["object-detection"]}


def wait_loaded(base_url: str, count: int, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while httpx.get(f"{base_url}/health").json()["loaded"] < count:
        if time.monotonic() > deadline:
            raise RuntimeError("the test server did not load its models")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def server_url(demo_dir) -> str:
    """The reference server with the four demo models, token-protected, on loopback."""
    app = create_app(served_demo_models(demo_dir), settings=Settings(server_tokens=(TOKEN,)), concurrency=2)
    with serve(app) as url:
        wait_loaded(url, 4)
        yield url


@pytest.fixture(scope="session")
def remote_settings(server_url) -> Settings:
    return Settings(remote_enabled=True, remote_endpoints=(f"{server_url}/inference",), remote_token=TOKEN,
                    remote_timeout=30)


@pytest.fixture
def unused_port() -> int:
    """A loopback port nothing listens on (bound, then closed: connections are refused)."""
    sock = _loopback_socket()
    port = sock.getsockname()[1]
    sock.close()
    return port
