"""Inference Studio: run Hugging Face models locally or on a remote endpoint, side by side."""

import streamlit as st

from ui import sidebar

st.set_page_config(page_title="Inference Studio", page_icon=":material/model_training:", layout="wide")

page = st.navigation([
    st.Page("pages/text_generation.py", title="Text generation", icon=":material/edit_note:", default=True),
    st.Page("pages/image_to_text.py", title="Image to text", icon=":material/image_search:"),
    st.Page("pages/object_detection.py", title="Object detection", icon=":material/center_focus_strong:"),
])
sidebar.restore_mode()
sidebar.render()
page.run()
sidebar.render_status()
