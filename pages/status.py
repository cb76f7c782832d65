"""Engine status: device, memory budget and the models loaded in this process."""

import pandas as pd
import streamlit as st

from ui.state import format_bytes, get_engine

engine = get_engine()
status = engine.status()

st.title("Inference Studio")
st.caption("Run Hugging Face models locally or on a remote endpoint, and compare them side by side.")

left, middle, right = st.columns(3)
left.metric("Device", status["device"])
middle.metric("Models loaded", len(status["models"]))
right.metric("Memory used / budget", f"{format_bytes(status['used_bytes'])} / {format_bytes(status['budget_bytes'])}")

if status["models"]:
    table = pd.DataFrame(status["models"])[["model_id", "family", "device", "dtype", "memory_bytes", "load_ms", "uses"]]
    st.dataframe(table, hide_index=True, width="stretch")
    for model in status["models"]:
        if st.button(f"Unload {model['model_id']}", key=f"unload-{model['model_id']}-{model['dtype']}"):
            engine.unload(model["model_id"])
            st.rerun()
else:
    st.info("No model is loaded yet. Models load on first use and stay cached for every page and session.")
