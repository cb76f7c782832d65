"""Object detection: boxes, labels and confidences drawn with supervision; local and remote side by side."""

import streamlit as st

from ui import app, detection, runner, sidebar, state
from ui import components as ui

mode = app.start(app.OBJECT_DETECTION)

TASK, P = detection.TASK, "od"
SHARED = {
    "model": ui.Shared(f"{P}_model", str),
    "threshold": ui.Shared(f"{P}_threshold", ui.bounded(float, 0.0, 1.0)),
    "sample": ui.Shared(f"{P}_sample", ui.one_of(*ui.samples())),
}
ui.setup_page(P, SHARED, {
    f"{P}_model": lambda: state.default_model(TASK),
    f"{P}_threshold": 0.5, f"{P}_runs": 5, f"{P}_source": "Sample", f"{P}_sample": "astronaut",
})

st.title("Object detection")
st.caption(f"Backend: **{mode}**. Boxes are drawn with supervision; Compare matches every column's boxes with the reference's by IoU.")

left, right = st.columns([2, 3], gap="large")
with left:
    picked = ui.image_picker(P)
    st.text_input("Model", key=f"{P}_model", help="A DETR-style detector: DETR, YOLOS, RT-DETR, ...")
    st.slider("Confidence threshold", 0.0, 1.0, step=0.05, key=f"{P}_threshold")
    model_id = st.session_state[f"{P}_model"].strip()
    ui.demo_note(model_id)
    params = {"threshold": st.session_state[f"{P}_threshold"]}
    runner.forget_stale(P, runner.inputs_key(TASK, model_id, mode, (picked.data,), params))
    go, again, share_slot = runner.buttons(P, mode, "Detect")
    with share_slot:
        ui.share_box({**sidebar.share_params(), "model": model_id, "threshold": params["threshold"],
                      "sample": picked.sample})
    if (go or again) and not picked.data:
        ui.need_image(picked)
    elif go:
        detection.run(P, model_id, mode, picked, params)
    elif again:
        runner.repeat(P, "object detection", TASK, model_id, mode, (picked.data,), params, st.session_state[f"{P}_runs"])
    detection.preview(P, picked)

with right:
    detection.render(P)

ui.history()
ui.remember([item.key for item in SHARED.values()] + [f"{P}_runs", f"{P}_source"])
app.finish()
