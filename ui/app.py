"""What every page needs before its first widget."""

from __future__ import annotations

import streamlit as st


def require_navigation() -> None:
    """Make sure the page runs inside ``streamlit_app.py`` (its st.navigation, sidebar and settings).

    Streamlit treats a ``pages/`` folder as a legacy multipage app until ``st.navigation`` has run once in
    the process; so when a freshly started server is first asked for a page URL (a share link, say), it
    runs that page on its own. Switch the process to navigation mode and rerun: the same page then comes
    up through the entry script.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()
