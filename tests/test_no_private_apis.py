"""No private name of another library: what such a name does can change in any release, without notice."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(path for folder in ("inference", "ui", "pages") for path in (ROOT / folder).rglob("*.py")) + [
    ROOT / "streamlit_app.py"]
#: Private modules and attributes of httpx, httpcore, Streamlit and transformers, the libraries we lean on most closely.
PRIVATE = re.compile(r"\b(httpx|httpcore|streamlit|transformers)\._|\._pool\b|_network_backend|streamlit\.runtime|"
                     r"PagesManager|\._model_mapping\b")


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: str(path.relative_to(ROOT)))
def test_no_private_name_of_httpx_httpcore_or_streamlit(path):
    offending = [f"{index}: {line.strip()}" for index, line in enumerate(path.read_text().splitlines(), 1)
                 if PRIVATE.search(line)]
    assert offending == []
