"""The link between the entry script and its pages."""

from __future__ import annotations

import streamlit as st

#: Set by the entry script on every run (ui.sidebar.render); its absence means the entry script never ran.
ENTRY_MARK = "backend_mode"


def require_navigation() -> None:
    """Make sure the page runs inside ``streamlit_app.py`` (its navigation, sidebar and settings).

    Streamlit treats a ``pages/`` folder as a legacy multipage app until ``st.navigation`` has run once in
    the process, so a fresh server first asked for a page URL (a share link, say) runs that page on its
    own, before the entry script has ever run in the session. Then switch the process to navigation mode
    and rerun: the page comes up through the entry script.
    """
    if ENTRY_MARK in st.session_state:
        return
    from streamlit.runtime.pages_manager import PagesManager

    PagesManager.uses_pages_directory = False
    st.rerun()
