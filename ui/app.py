"""The frame every page shares: page config, the mode from a share link, our navigation and the sidebar.

The app is Streamlit's classic multipage layout: ``streamlit_app.py`` is the home page and Streamlit finds
the task pages in ``pages/`` (URL paths ``/text_generation``, ``/image_to_text``, ``/object_detection``).
``client.showSidebarNavigation = false`` in ``.streamlit/config.toml`` hides Streamlit's own navigation,
whose labels come from file names ("streamlit app", "text generation"); ``navigation()`` draws ours with
``st.page_link`` instead. Each page opens with ``start()`` and ends with ``finish()``, so a page behaves the
same whether it is the first one a session opens (a share link), reached by a link, or run alone under
``AppTest.from_file``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from . import sidebar, state, video

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class PageInfo:
    """A page of the app: its script (relative to the repository root), title and icon."""

    script: str
    title: str
    icon: str
    summary: str = ""

    def link(self) -> st.Page:
        # An absolute path: the link resolves the same when a page is AppTest's main script.
        return st.Page(ROOT / self.script, title=self.title, icon=self.icon, default=self is HOME)


HOME = PageInfo("streamlit_app.py", "Inference Studio", ":material/model_training:")
#: The task pages, in the navigation's order.
PAGES = (
    PageInfo("pages/text_generation.py", "Text generation", ":material/edit_note:",
             "A prompt, answered token by token, with time to first token and tokens/s."),
    PageInfo("pages/image_to_text.py", "Image to text", ":material/image_search:",
             "A caption for a photo, or an answer to a question about it."),
    PageInfo("pages/object_detection.py", "Object detection", ":material/center_focus_strong:",
             "Boxes, labels and confidences drawn on the image, with a table and downloads."),
)
TEXT_GENERATION, IMAGE_TO_TEXT, OBJECT_DETECTION = PAGES


def start(page: PageInfo) -> str:
    """Open a page: its config, the mode from a share link, the sidebar with our navigation.

    Returns the backend mode ("Local", "Remote" or "Compare").
    """
    title = HOME.title if page is HOME else f"{page.title} · {HOME.title}"
    st.set_page_config(page_title=title, page_icon=page.icon, layout="wide")
    state.model_libraries()  # torch and transformers start importing in their own thread, once per app process
    if page is not OBJECT_DETECTION:
        video.stop_every_run()  # a clip runs while its page is shown (what was done stays for later)
    sidebar.restore_mode()
    navigation()
    return sidebar.render()


def finish() -> None:
    """Close a page: the sidebar's remote and local status, which show what the page's run just did."""
    sidebar.render_status()


def navigation() -> None:
    """Our navigation at the top of the sidebar: the studio's name (the home page), then the task pages."""
    with st.sidebar:
        st.page_link(HOME.link())
        with st.container(key="nav", gap=None):
            for page in PAGES:
                st.page_link(page.link())
