"""Inference Studio: run Hugging Face models locally or on a remote endpoint, side by side."""

import streamlit as st

st.set_page_config(page_title="Inference Studio", page_icon=":material/model_training:", layout="wide")

page = st.navigation([
    st.Page("pages/status.py", title="Engine status", icon=":material/memory:", default=True),
])
page.run()
