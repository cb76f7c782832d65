"""Image to text: a caption, or an answer to a question about the image (image-text-to-text)."""

import streamlit as st

from ui import app, runner, sidebar, state
from ui import components as ui

mode = app.start(app.IMAGE_TO_TEXT)

P = "i2t"
SHARED = {
    "model": ui.Shared(f"{P}_model", str),
    "prompt": ui.Shared(f"{P}_prompt", str),
    "max_new_tokens": ui.Shared(f"{P}_max_new_tokens", ui.bounded(int, 1, 256)),
    "sample": ui.Shared(f"{P}_sample", ui.one_of(*ui.samples())),
}
ui.setup_page(P, SHARED, {
    f"{P}_model": lambda: state.default_model("image-to-text"),
    f"{P}_prompt": "", f"{P}_max_new_tokens": 40, f"{P}_runs": 5, f"{P}_source": "Sample", f"{P}_sample": "cat",
})

st.title("Image to text")
st.caption(f"Backend: **{mode}**. Leave the prompt empty for a caption; ask a question to run image-text-to-text.")

left, right = st.columns([2, 3], gap="large")
with left:
    picked = ui.image_picker(P)
    if picked.data:
        st.image(picked.data, caption=picked.label, width="stretch")
with right:
    st.text_input("Model", key=f"{P}_model",
                  help="A captioning model (BLIP, ...) or a vision-language chat model (SmolVLM, LLaVA, ...)")
    st.text_input("Prompt (optional)", key=f"{P}_prompt", placeholder="e.g. What colour is the cat?")
    st.slider("Max new tokens", 1, 256, key=f"{P}_max_new_tokens")
    model_id = st.session_state[f"{P}_model"].strip()
    ui.demo_note(model_id)
    prompt = st.session_state[f"{P}_prompt"].strip() or None
    task = "image-text-to-text" if prompt else "image-to-text"
    st.caption(f"Task: `{task}`")
    params = {"max_new_tokens": st.session_state[f"{P}_max_new_tokens"]}

    args, kwargs = (picked.data,), {"prompt": prompt, **params}
    runner.forget_stale(P, runner.inputs_key(task, model_id, mode, args, kwargs))
    go, again, share_slot = runner.buttons(P, mode, "Describe" if not prompt else "Ask")
    with share_slot:
        ui.share_box({**sidebar.share_params(), "model": model_id, "prompt": prompt or "",
                      "max_new_tokens": params["max_new_tokens"], "sample": picked.sample})
    streamed = False
    if (go or again) and not picked.data:
        ui.need_image(picked)
    elif go:
        streamed = runner.run(P, "image to text", task, model_id, mode, args, kwargs, stream=True)
    elif again:
        runner.repeat(P, "image to text", task, model_id, mode, args, kwargs, st.session_state[f"{P}_runs"])
    runner.render_text(P, streamed)

ui.history()
ui.remember([item.key for item in SHARED.values()] + [f"{P}_runs", f"{P}_source"])
app.finish()
