"""Process-wide objects for the app, cached with ``st.cache_resource``, and the app's configuration."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import streamlit as st

from inference import Engine, InferenceError, Model, Settings, load_model
from inference.demo_models import build_demo_models, hub_reachable, is_cached, is_demo_model
from inference.loopback import LoopbackServer
from inference.remote import endpoint_host
from inference.tasks import TASKS

#: Where the app builds the offline demo models when the hub cannot be reached.
DEMO_DIR = Path(os.environ.get("INFERENCE_DEMO_MODELS_DIR", Path.home() / ".cache" / "inference-studio" / "demo-models"))
ASSETS = Path(__file__).resolve().parent.parent / "assets"


def read_secrets() -> dict[str, Any]:
    """``st.secrets`` as a dict, or an empty one when no secrets.toml exists."""
    try:
        return dict(st.secrets)
    except (FileNotFoundError, KeyError):
        return {}


def app_settings() -> Settings:
    """Settings from .streamlit/secrets.toml and the environment; a bad value is shown, not fatal."""
    try:
        return Settings.from_mapping(read_secrets())
    except InferenceError as exc:
        st.session_state["settings_error"] = f"The configuration is not valid: {exc}"
        # Every field explicit, so nothing is read from the faulty environment again.
        return Settings(remote_enabled=False, remote_endpoints=(), remote_token=None, remote_timeout=120.0,
                        upload_max_edge=1024, server_tokens=(), max_model_memory=None,
                        max_image_pixels=40_000_000, device="auto", dtype="auto")


@st.cache_resource(show_spinner=False)
def get_engine() -> Engine:
    """The one engine of this app process: shared by every page, rerun and browser session."""
    return Engine(app_settings())


@st.cache_data(ttl=300, show_spinner=False)
def hub_is_reachable() -> bool:
    return hub_reachable()


@st.cache_resource(show_spinner="Building the offline demo models (a few seconds, once)…")
def demo_models() -> dict[str, str]:
    return {task: str(path) for task, path in build_demo_models(DEMO_DIR).items()}


def default_model(task: str) -> str:
    """The task's default hub model, or its offline demo model when the hub is out of reach."""
    hub_id = TASKS[task].default_model
    if is_cached(hub_id) or hub_is_reachable():
        return hub_id
    return demo_models()[task]


def is_demo(model_id: str) -> bool:
    return is_demo_model(model_id)


@st.cache_resource(show_spinner="Starting the loopback server on this machine…")
def loopback_server() -> LoopbackServer:
    """The bundled reference server on 127.0.0.1, serving every task's default model under its own id."""
    models = {default_model(task): default_model(task) for task in TASKS}
    return LoopbackServer(models).start()


def remote_target() -> tuple[Settings, str]:
    """(settings for remote calls, a label for the endpoint). Starts the loopback server when none is set."""
    settings = app_settings()
    if settings.remote_configured:
        return settings, ", ".join(endpoint_host(url) for url in settings.remote_endpoints)
    server = loopback_server()
    return server.settings(settings), LoopbackServer.label


def get_model(model_id: str, task: str, backend: str) -> Model:
    """A model handle on ``backend`` ("local" or "remote"); the first local load shows what is loading."""
    engine = get_engine()
    if backend == "remote":
        settings, _ = remote_target()
        return load_model(model_id, task=task, backend="remote", engine=engine, settings=settings)
    if not engine.loaded(model_id):
        with st.status(f"Loading {model_id} for {task}…", expanded=False) as status:
            try:
                model = load_model(model_id, task=task, backend="local", engine=engine)
            except InferenceError:
                status.update(label=f"Could not load {model_id}", state="error")
                raise
            status.update(label=f"Loaded {model_id} on {model.info.device} in {model.info.load_ms / 1000:.1f} s",
                          state="complete")
            return model
    return load_model(model_id, task=task, backend="local", engine=engine)


def format_bytes(size: float) -> str:
    """``1536`` → ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} GiB"  # pragma: no cover - unreachable
