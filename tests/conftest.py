"""Shared fixtures: tiny random-weight models built once per session, sample images, fresh engines.

Nothing here downloads anything: HF_HUB_OFFLINE is forced before transformers is imported.
"""

from __future__ import annotations

import io
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
for _variable in list(os.environ):
    # Tests describe their own configuration; a developer's shell must not leak into them.
    if _variable.startswith(("REMOTE_INFERENCE_", "INFERENCE_")):
        del os.environ[_variable]

import numpy as np
import pytest
from PIL import Image

from inference import Engine, Settings
from inference.demo_models import build_demo_models


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> dict[str, str]:
    """task → directory of its tiny demo model (built once, in seconds)."""
    built = build_demo_models(tmp_path_factory.mktemp("demo-models"))
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
