"""The home page's parts: old share links forwarded, the task pages, the backends at a glance."""

from __future__ import annotations

import streamlit as st

from inference.loopback import LoopbackServer
from inference.settings import endpoint_host

from . import app, state

#: Settings only a text generation share link holds. Text generation was the app's page at ``/`` until the
#: home page came, so its share links so far point at ``/``.
TEXT_GENERATION_SETTINGS = ("model", "prompt", "max_new_tokens", "temperature", "top_p", "seed")


def forward_old_share_link() -> None:
    """Send a text generation share link made for ``/`` on to ``/text_generation``, its settings with it."""
    if any(name in st.query_params for name in TEXT_GENERATION_SETTINGS):
        st.switch_page(app.TEXT_GENERATION.link(), query_params=st.query_params.to_dict())


def task_links() -> None:
    """One column per task page: its link and what it does."""
    for column, page in zip(st.columns(len(app.PAGES)), app.PAGES, strict=True):
        with column.container(border=True, height="stretch"):
            st.page_link(page.link())
            st.caption(page.summary)


def backend_status(mode: str) -> None:
    """Where runs go: the mode, the local device and models, and the remote endpoint."""
    engine = state.get_engine().status()
    settings = state.app_settings()
    if settings.remote_configured:
        remote = "your endpoint at " + ", ".join(endpoint_host(url) for url in settings.remote_endpoints)
    else:
        remote = f"the **{LoopbackServer.label}** (no endpoint is configured)"
    loaded = len(engine["models"])
    st.markdown(
        f"- **Backend:** {mode}, chosen in the sidebar for every page.\n"
        f"- **Local:** {engine['device']}, {loaded} model{'s' if loaded != 1 else ''} loaded, "
        f"{state.format_bytes(engine['used_bytes'])} of a {state.format_bytes(engine['budget_bytes'])} budget.\n"
        f"- **Remote:** {remote}."
    )
