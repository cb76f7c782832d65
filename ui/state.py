"""Process-wide objects for the app, cached with ``st.cache_resource``."""

from __future__ import annotations

from typing import Any

import streamlit as st

from inference import Engine, Settings


def read_secrets() -> dict[str, Any]:
    """``st.secrets`` as a dict, or an empty one when no secrets.toml exists."""
    try:
        return dict(st.secrets)
    except (FileNotFoundError, KeyError):
        return {}


@st.cache_resource(show_spinner=False)
def get_engine() -> Engine:
    """The one engine of this app process: shared by every page, rerun and browser session."""
    return Engine(Settings.from_mapping(read_secrets()))


def format_bytes(size: float) -> str:
    """``1536`` → ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} TiB"  # pragma: no cover - unreachable
