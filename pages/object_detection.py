"""Object detection: boxes, labels and confidences drawn with supervision; local and remote side by side."""

import numpy as np
import streamlit as st
import supervision as sv

from inference.annotate import annotate_detections, labels_for
from inference.compare import detection_parity
from ui import app, runner, sidebar, state
from ui import components as ui

mode = app.start(app.OBJECT_DETECTION)

TASK, P = "object-detection", "od"
LOCAL_COLOUR, REMOTE_COLOUR = sv.Color.from_hex("#ef6c00"), sv.Color.from_hex("#1565c0")
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
st.caption(f"Backend: **{mode}**. Boxes are drawn with supervision; Compare matches local and remote boxes by IoU.")

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
        ui.share_box({"mode": sidebar.mode_param(), "model": model_id, "threshold": params["threshold"],
                      "sample": picked.sample})
    if (go or again) and not picked.data:
        ui.need_image(picked)
    elif go:
        runner.run(P, "object detection", TASK, model_id, mode, (picked.data,), params)
        st.session_state[f"{P}_image"] = picked.data  # the picture these boxes belong to
        st.session_state.pop(f"{P}_classes", None)  # a new result shows every class again
    elif again:
        runner.repeat(P, "object detection", TASK, model_id, mode, (picked.data,), params, st.session_state[f"{P}_runs"])
    if not any(outcome.ok for outcome in runner.last(P).values()) and picked.data:
        st.image(picked.data, caption=picked.label, width="stretch")

with right:
    outcomes = runner.last(P)
    results = {backend: outcome.result for backend, outcome in outcomes.items() if outcome.ok}
    for outcome in outcomes.values():
        if outcome.error is not None:
            ui.show_error(outcome.error, backend=outcome.backend if len(outcomes) > 1 else None)
    if results:
        image = st.session_state[f"{P}_image"]
        found = sorted({name for result in results.values() for name in result.class_names})
        st.session_state.setdefault(f"{P}_classes", found)
        st.session_state[f"{P}_classes"] = [c for c in st.session_state[f"{P}_classes"] if c in found]
        shown = st.multiselect("Show classes", found, key=f"{P}_classes", placeholder="Every class is hidden")

        def visible(result):
            names = np.array(result.class_names)
            return result.detections[np.isin(names, shown)] if len(result.detections) else result.detections

        columns = st.columns(len(results)) if len(results) > 1 else [st.container()]
        for column, (backend, result) in zip(columns, results.items(), strict=True):
            with column:
                if len(outcomes) > 1:
                    st.subheader(ui.BACKEND_LABEL[backend])
                annotated = annotate_detections(image, visible(result))
                st.image(annotated, caption=f"{len(visible(result))} of {len(result.detections)} detections shown",
                         width="stretch")
                ui.timing_metrics(result, compact=len(results) > 1)
                st.dataframe(ui.detection_table(result), hide_index=True, width="stretch", height=180)
                d1, d2 = st.columns(2)
                narrow = len(results) > 1
                d1.download_button("PNG" if narrow else "Annotated PNG", ui.png_bytes(annotated),
                                   file_name=f"detections-{backend}.png", help="the annotated image",
                                   mime="image/png", key=f"{P}_png_{backend}", icon=":material/download:")
                d2.download_button("JSON" if narrow else "Detections JSON", ui.detections_json(result),
                                   help="every detection with label, score and box",
                                   file_name=f"detections-{backend}.json", mime="application/json",
                                   key=f"{P}_json_{backend}", icon=":material/data_object:")
        if len(results) == 2:
            st.subheader("Parity")
            parity = detection_parity(results["local"], results["remote"])
            ui.parity_metrics(parity)
            overlay = annotate_detections(image, visible(results["local"]), color=LOCAL_COLOUR,
                                          labels=[f"L {label}" for label in labels_for(visible(results["local"]))])
            overlay = annotate_detections(overlay, visible(results["remote"]), color=REMOTE_COLOUR,
                                          labels=[f"R {label}" for label in labels_for(visible(results["remote"]))])
            st.image(overlay, caption="Both on one picture: local in orange (L), remote in blue (R)", width="stretch")
    runner.render_stats(P)

ui.history()
ui.remember([item.key for item in SHARED.values()] + [f"{P}_runs", f"{P}_source"])
app.finish()
