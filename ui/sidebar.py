"""The sidebar every page shares: backend mode, remote status and local status."""

from __future__ import annotations

import streamlit as st

from inference import InferenceError
from inference.loopback import LoopbackServer

from . import state

MODES = ("Local", "Remote", "Compare")
MODE_HELP = "Local runs models in this process; Remote calls the endpoint; Compare runs both side by side."


#: Counts this session's runs that called the remote endpoint: the sidebar asks the endpoint again after each.
REMOTE_RUNS_KEY = "_remote_runs"


@st.cache_data(ttl=15, show_spinner=False)
def _remote_health(endpoints: tuple[str, ...], _settings, runs: int) -> tuple[bool, str, list[dict]]:
    """(reachable, message, served models) for the endpoint, cached briefly and until the next remote run.

    ``runs`` (this session's count of remote runs) is part of the cache key: a run may have loaded a model
    there, so the status is asked again after it. (``_settings`` is left out of the key: the endpoints are in it.)
    """
    engine = state.get_engine()
    client = engine.remote_client(_settings)
    try:
        client.health()
    except InferenceError as exc:
        return False, str(exc), []
    try:
        return True, "reachable", client.models(max_age=0)
    except InferenceError as exc:
        return True, f"reachable; model list unavailable ({exc})", []


def count_remote_run() -> None:
    """Note that a run called the remote endpoint (its models' status may have changed)."""
    st.session_state[REMOTE_RUNS_KEY] = st.session_state.get(REMOTE_RUNS_KEY, 0) + 1


def restore_mode() -> None:
    """Take the backend mode from a share link (``?mode=compare``) on the session's first run."""
    if not st.session_state.get("_restored:mode"):
        st.session_state["_restored:mode"] = True
        wanted = st.query_params.get("mode", "").strip().lower()
        for mode in MODES:
            if wanted == mode.lower():
                st.session_state[MODE_KEY] = mode


def mode_param() -> str:
    """The mode as it goes in a share link."""
    return st.session_state.get(MODE_KEY, "Local").lower()


#: The mode lives in a plain session key: Streamlit drops a widget's own state when the page changes.
MODE_KEY, WIDGET_KEY = "backend_mode", "_backend_mode_widget"


def _keep_choice() -> None:
    # segmented_control can be clicked off (None): keep the previous mode then.
    st.session_state[MODE_KEY] = st.session_state[WIDGET_KEY] or st.session_state[MODE_KEY]


def render() -> str:
    """Draw the sidebar; returns the backend mode ("Local", "Remote" or "Compare")."""
    st.session_state.setdefault(MODE_KEY, "Local")
    st.session_state[WIDGET_KEY] = st.session_state[MODE_KEY]
    with st.sidebar:
        st.segmented_control("Backend", MODES, key=WIDGET_KEY, help=MODE_HELP, width="stretch",
                             on_change=_keep_choice)
        mode = st.session_state[MODE_KEY]
        if "settings_error" in st.session_state:
            st.error(st.session_state["settings_error"])
    return mode


def render_status() -> None:
    """The remote and local status, drawn after the page ran: they show what the run just did."""
    with st.sidebar:
        _remote_section(active=st.session_state.get(MODE_KEY) in ("Remote", "Compare"))
        _local_section()


def _remote_section(active: bool) -> None:
    st.subheader("Remote", divider="gray")
    settings = state.app_settings()
    if not settings.remote_configured:
        st.caption(
            "No remote endpoint is configured. To use yours, set `REMOTE_INFERENCE_ENABLED=true`, "
            "`REMOTE_INFERENCE_ENDPOINT` and `REMOTE_INFERENCE_TOKEN` in the environment or in "
            "`.streamlit/secrets.toml`. Until then Remote and Compare use the "
            f"**{LoopbackServer.label}**."
        )
        if not active:
            return
    try:
        target, label = state.remote_target()
    except InferenceError as exc:
        st.error(f"The remote backend is not available: {exc}")
        return
    reachable, message, served = _remote_health(target.remote_endpoints, target,
                                                st.session_state.get(REMOTE_RUNS_KEY, 0))
    st.markdown(f"**Endpoint:** {label}")
    if reachable:
        st.success(message.capitalize(), icon=":material/check_circle:")
    else:
        st.error(message, icon=":material/error:")
    if served:
        lines = [f"- `{_short(str(item.get('id')))}` · {item.get('task') or 'starting'} · {item.get('status')}"
                 for item in served]
        st.markdown("**Served models**\n" + "\n".join(lines))


def _local_section() -> None:
    st.subheader("Local", divider="gray")
    engine = state.get_engine()
    status = engine.status()
    st.markdown(f"**Device:** {status['device']}")
    st.caption(f"{state.format_bytes(status['used_bytes'])} used of a "
               f"{state.format_bytes(status['budget_bytes'])} budget")
    if not status["models"]:
        st.caption("No model loaded yet: models load on first use and stay loaded for every page and session.")
    for index, model in enumerate(status["models"]):
        short = _short(model["model_id"])
        left, right = st.columns([3, 2], vertical_alignment="center")
        left.markdown(f"`{short}`  \n{model['dtype']} · {state.format_bytes(model['memory_bytes'])}",
                      help=model["model_id"])
        if right.button("Unload", key=f"unload-{index}-{model['model_id']}", help=f"Free {model['model_id']}",
                        width="stretch"):
            engine.unload(model["model_id"])
            st.toast(f"Unloaded {short}")
            st.rerun()


def _short(model_id: str) -> str:
    """``org/name`` stays; a long directory path shows its last two parts."""
    return "/".join(model_id.rstrip("/").split("/")[-2:])
