"""Inference Studio's home page: what the studio is, the backends at a glance, links to the three tasks.

Streamlit's classic multipage layout: this script is the home page (``/``) and the task pages are found in
``pages/``. Every page opens with ``ui.app.start`` (config, sidebar, our navigation) and ends with
``ui.app.finish`` (the sidebar's status).
"""

import streamlit as st

from ui import app, home

home.forward_old_share_link()
mode = app.start(app.HOME)

st.title(app.HOME.title)
st.markdown(
    "Run Hugging Face models **locally** (transformers + torch) or on a **remote inference endpoint**, show the "
    "two side by side, and share a demo as a link. Pick a backend in the sidebar, then a task:"
)
home.task_links()
st.subheader("Backends", divider="gray")
home.backend_status(mode)
app.finish()
