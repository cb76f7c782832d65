"""The sidebar every page shares: backend mode, remote status and local status."""

from __future__ import annotations

import streamlit as st

from inference import InferenceError
from inference.backends import endpoint_status
from inference.loopback import LoopbackServer

from . import state
from .components import label

MODES = ("Local", "Remote", "Compare")
MODE_HELP = "Local runs models in this process; Remote calls an endpoint; Compare runs several side by side."
#: Most columns Compare shows at once.
MAX_COLUMNS = 4
#: Plain session keys (Streamlit drops a widget's own state when the page changes): the Remote mode's endpoint,
#: Compare's columns and the column the others are compared with.
ENDPOINT_KEY, COLUMNS_KEY, REFERENCE_KEY = "remote_endpoint", "compare_columns", "compare_reference"
DEFAULT_COLUMNS = ("local", "remote")


#: Counts this session's runs that called the remote endpoint: the sidebar asks the endpoint again after each.
REMOTE_RUNS_KEY = "_remote_runs"


@st.cache_data(ttl=15, show_spinner=False)
def _remote_health(endpoints: tuple[str, ...], _settings, runs: int) -> tuple[bool, str, list[dict]]:
    """(reachable, message, served models) for the endpoint, cached briefly and until the next remote run.

    ``runs`` (this session's count of remote runs) is part of the cache key: a run may have loaded a model
    there, so the status is asked again after it. (``_settings`` is left out of the key: the endpoints are in it.)
    """
    return endpoint_status(state.get_engine().remote_client(_settings))


@st.cache_data(ttl=15, show_spinner=False)
def _endpoint_health(name: str, _settings, runs: int) -> tuple[str, bool, str, list[dict]]:
    """(protocol, reachable, message, served models) of a named endpoint, cached as ``_remote_health`` is."""
    client = state.get_engine().remote_client(_settings, name)
    reachable, message, served = endpoint_status(client)
    return client.protocol, reachable, message, served


def count_remote_run() -> None:
    """Note that a run called the remote endpoint (its models' status may have changed)."""
    st.session_state[REMOTE_RUNS_KEY] = st.session_state.get(REMOTE_RUNS_KEY, 0) + 1


def restore_mode() -> None:
    """Take the backend mode and its endpoints from a share link (``?mode=compare&columns=local,vllm``) on the
    session's first run. Links name endpoints, never their URLs or tokens: a name this app does not have is skipped."""
    if not st.session_state.get("_restored:mode"):
        st.session_state["_restored:mode"] = True
        wanted = st.query_params.get("mode", "").strip().lower()
        for mode in MODES:
            if wanted == mode.lower():
                st.session_state[MODE_KEY] = mode
        known = ("local", *state.endpoint_names())
        if st.query_params.get("endpoint", "") in known[1:]:
            st.session_state[ENDPOINT_KEY] = st.query_params["endpoint"]
        columns = [name for name in st.query_params.get("columns", "").split(",") if name in known]
        if columns:
            st.session_state[COLUMNS_KEY] = list(dict.fromkeys(columns))[:MAX_COLUMNS]
        if st.query_params.get("reference", "") in known:
            st.session_state[REFERENCE_KEY] = st.query_params["reference"]


def targets(mode: str) -> tuple[str, ...]:
    """Where a run goes, in column order: "local", "remote" (REMOTE_INFERENCE_* or the loopback server) and named
    endpoints."""
    if mode == "Local":
        return ("local",)
    names = state.endpoint_names()
    if mode == "Remote":
        chosen = st.session_state.get(ENDPOINT_KEY, "remote")
        return (chosen if chosen in names else "remote",)
    chosen = [name for name in st.session_state.get(COLUMNS_KEY, DEFAULT_COLUMNS) if name in ("local", *names)]
    return tuple(chosen) or DEFAULT_COLUMNS  # one column is allowed: it runs, with nothing to compare it with


def reference(columns: tuple[str, ...]) -> str:
    """The column every other one is compared with (Local by default)."""
    chosen = st.session_state.get(REFERENCE_KEY, "local")
    if chosen in columns:
        return chosen
    return "local" if "local" in columns else columns[0]  # as the widget shows it


def share_params() -> dict[str, str]:
    """The mode and its endpoints as a share link carries them: names only."""
    mode = st.session_state.get(MODE_KEY, "Local")
    params = {"mode": mode.lower()}
    chosen = targets(mode)
    if mode == "Remote" and chosen != ("remote",):
        params["endpoint"] = chosen[0]
    if mode == "Compare" and chosen != DEFAULT_COLUMNS:
        params["columns"] = ",".join(chosen)
    if mode == "Compare" and reference(chosen) != "local":
        params["reference"] = reference(chosen)
    return params


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
        names = state.endpoint_names()
        if len(names) > 1 and mode == "Remote":
            _kept_widget(st.selectbox, "Endpoint", names, ENDPOINT_KEY, "remote",
                         help="Remote is the REMOTE_INFERENCE_* endpoint (or the server on this machine); the "
                              "others are the [endpoints.NAME] tables of secrets.toml")
        if len(names) > 1 and mode == "Compare":
            _kept_widget(st.multiselect, "Columns", ("local", *names), COLUMNS_KEY, list(DEFAULT_COLUMNS),
                         max_selections=MAX_COLUMNS, help=f"two to {MAX_COLUMNS} backends, run at once")
            columns = targets(mode)
            _kept_widget(st.selectbox, "Parity reference", columns, REFERENCE_KEY, "local" if "local" in columns
                         else columns[0], help="every other column's answer is compared with this one's")
    return mode


def _kept_widget(widget, title: str, options, key: str, default, **kwargs) -> None:
    """A sidebar choice kept in a plain session key across pages (as the mode is)."""
    st.session_state.setdefault(key, default)
    value = st.session_state[key]
    valid = [item for item in value if item in options] if isinstance(value, list) else value
    if not isinstance(value, list) and value not in options:
        valid = default if default in options else options[0]
    st.session_state[f"_{key}_widget"] = valid

    def keep() -> None:
        chosen = st.session_state[f"_{key}_widget"]
        st.session_state[key] = chosen if chosen not in (None, []) else st.session_state[key]

    widget(title, options, key=f"_{key}_widget", format_func=label, on_change=keep, **kwargs)


def render_status() -> None:
    """The remote and local status, drawn after the page ran: they show what the run just did."""
    with st.sidebar:
        _remote_section(active="remote" in targets(st.session_state.get(MODE_KEY, "Local")))
        _endpoints_section()
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


def _endpoints_section() -> None:
    """Each named endpoint: its name, protocol, host (never a token or a path), reachability and models."""
    settings = state.app_settings()
    if not settings.endpoints:
        return
    st.subheader("Endpoints", divider="gray")
    for endpoint in settings.endpoints:
        protocol, reachable, message, served = _endpoint_health(endpoint.name, settings,
                                                                st.session_state.get(REMOTE_RUNS_KEY, 0))
        found = " (found by probing)" if endpoint.protocol == "auto" and protocol != "auto" else ""
        st.markdown(f"**{endpoint.name}** · {protocol}{found} · {', '.join(endpoint.hosts)}")
        if reachable:
            names = ", ".join(f"`{_short(str(item.get('id')))}`" for item in served[:8])
            st.caption(f"Reachable{': ' + names if names else ''}")
        else:
            st.error(message, icon=":material/error:")


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
