"""Object detection: boxes, labels and confidences drawn with supervision; local and remote side by side; on an
image, a video clip (tracked, frame by frame) or the live camera."""

import streamlit as st

from inference.settings import parse_flag
from ui import app, detection, live, runner, sidebar, state, video
from ui import components as ui

mode = app.start(app.OBJECT_DETECTION)

TASK, P = detection.TASK, "od"
SOURCES = (*ui.IMAGE_SOURCES, "Video", "Live camera")
SHARED = {
    "model": ui.Shared(f"{P}_model", str),
    "threshold": ui.Shared(f"{P}_threshold", ui.bounded(float, 0.0, 1.0)),
    "sample": ui.Shared(f"{P}_sample", ui.one_of(*ui.samples())),
    "source": ui.Shared(f"{P}_source", ui.one_of(*SOURCES)),
    "stride": ui.Shared(f"{P}_stride", ui.bounded(int, 1, 30)),
    "max_edge": ui.Shared(f"{P}_max_edge", ui.one_of(*video.MAX_EDGES)),
    "track": ui.Shared(f"{P}_track", parse_flag),
}
ui.setup_page(P, SHARED, {
    f"{P}_model": lambda: state.default_model(TASK),
    f"{P}_threshold": 0.5, f"{P}_runs": 5, f"{P}_source": "Sample", f"{P}_sample": "astronaut",
    f"{P}_stride": 1, f"{P}_max_edge": "640 px", f"{P}_track": True,
})

st.title("Object detection")
st.caption(f"Backend: **{mode}**. Boxes are drawn with supervision; Compare matches every column's boxes with the "
           "reference's by IoU. Video and the live camera track objects across frames (ByteTrack).")

source = ui.source_control(P, SOURCES, label="Input")
left, right = st.columns([2, 3], gap="large")
with left:
    if source in ("Video", "Live camera"):
        clip = video.clip_picker(P) if source == "Video" else None
    else:
        picked = ui.image_picker(P, source)
    st.text_input("Model", key=f"{P}_model", help="A DETR-style detector: DETR, YOLOS, RT-DETR, ...")
    st.slider("Confidence threshold", 0.0, 1.0, step=0.05, key=f"{P}_threshold")
    model_id = st.session_state[f"{P}_model"].strip()
    ui.demo_note(model_id)
    params = {"threshold": st.session_state[f"{P}_threshold"]}
    share = {**sidebar.share_params(), "model": model_id, "threshold": params["threshold"], "source": source}
    if source in ("Video", "Live camera"):
        options = video.options(P, stride=source == "Video")
        share.update(max_edge=st.session_state[f"{P}_max_edge"], track=str(options["track"]).lower())
        if source == "Video":
            share.update(stride=options["stride"])
    if source == "Video":
        video_params = {**params, **options}
        video.forget_stale(P, video.inputs_key(model_id, mode, clip, video_params))
        go, stop_slot, share_slot = video.buttons(P)
    elif source == "Live camera":
        backend = live.backend_choice(P, mode)
        go, share_slot = False, st.container()
    else:
        share["sample"] = picked.sample
        runner.forget_stale(P, runner.inputs_key(TASK, model_id, mode, (picked.data,), params))
        go, again, share_slot = runner.buttons(P, mode, "Detect")
    with share_slot:
        ui.share_box(share)
    if source in ui.IMAGE_SOURCES:
        if (go or again) and not picked.data:
            ui.need_image(picked)
        elif go:
            detection.run(P, model_id, mode, picked, params)
        elif again:
            runner.repeat(P, "object detection", TASK, model_id, mode, (picked.data,), params,
                          st.session_state[f"{P}_runs"])
        detection.preview(P, picked)
    elif source == "Video":
        if go and clip.path is None:
            video.need_clip(clip)
        elif go:
            video.run(P, model_id, mode, clip, video_params)
        video.stop_button(P, stop_slot)
        video.preview(clip)

with right:
    if source != "Video":
        video.stop_running(P)  # another source is on screen
    if source in ui.IMAGE_SOURCES:
        detection.render(P)
    elif source == "Video":
        video.render(P)
    else:
        live.stream(P, model_id, backend, params["threshold"], options)

ui.history()
ui.remember([item.key for item in SHARED.values()] + [f"{P}_runs", f"{P}_clip"])
app.finish()
