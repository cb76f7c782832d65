"""Text generation: a prompt, answered token by token, locally, remotely or both side by side."""

import streamlit as st

from ui import app, runner, sidebar, state
from ui import components as ui

mode = app.start(app.TEXT_GENERATION)

TASK, P = "text-generation", "tg"
SHARED = {
    "model": ui.Shared(f"{P}_model", str),
    "prompt": ui.Shared(f"{P}_prompt", str),
    "max_new_tokens": ui.Shared(f"{P}_max_new_tokens", ui.bounded(int, 1, 1024)),
    "temperature": ui.Shared(f"{P}_temperature", ui.bounded(float, 0.0, 2.0)),
    "top_p": ui.Shared(f"{P}_top_p", ui.bounded(float, 0.05, 1.0)),
    "seed": ui.Shared(f"{P}_seed", ui.bounded(int, 0, 2**31 - 1)),
}
ui.setup_page(P, SHARED, {
    f"{P}_model": lambda: state.default_model(TASK),
    f"{P}_prompt": "Write a haiku about the sea.",
    f"{P}_max_new_tokens": 64, f"{P}_temperature": 0.0, f"{P}_top_p": 0.95, f"{P}_seed": 0, f"{P}_runs": 5,
})

st.title("Text generation")
st.caption(f"Backend: **{mode}**. Answers stream in as they are generated; Compare runs its columns at once.")

left, right = st.columns([3, 2], gap="large")
with left:
    st.text_area("Prompt", key=f"{P}_prompt", height=140)
with right:
    st.text_input("Model", key=f"{P}_model", help="A Hugging Face model id or a local directory")
    st.slider("Max new tokens", 1, 1024, key=f"{P}_max_new_tokens")
    c1, c2, c3 = st.columns(3)
    c1.slider("Temperature", 0.0, 2.0, step=0.05, key=f"{P}_temperature", help="0 = greedy (deterministic)")
    c2.slider("Top-p", 0.05, 1.0, step=0.05, key=f"{P}_top_p", help="used when temperature > 0")
    c3.number_input("Seed", 0, 2**31 - 1, key=f"{P}_seed", help="used when temperature > 0")
model_id = st.session_state[f"{P}_model"].strip()
ui.demo_note(model_id)

prompt = st.session_state[f"{P}_prompt"]
params = {"max_new_tokens": st.session_state[f"{P}_max_new_tokens"]}
if st.session_state[f"{P}_temperature"] > 0:
    params.update(temperature=st.session_state[f"{P}_temperature"], top_p=st.session_state[f"{P}_top_p"],
                  seed=st.session_state[f"{P}_seed"])

runner.forget_stale(P, runner.inputs_key(TASK, model_id, mode, (prompt,), params))
generate, repeat, share_slot = runner.buttons(P, mode, "Generate")
with share_slot:
    ui.share_box({**sidebar.share_params(), "model": model_id, "prompt": prompt, **{
        name: st.session_state[item.key] for name, item in SHARED.items() if name not in ("model", "prompt")}})

streamed = False
if generate:
    streamed = runner.run(P, "text generation", TASK, model_id, mode, (prompt,), params, stream=True)
if repeat:
    runner.repeat(P, "text generation", TASK, model_id, mode, (prompt,), params, st.session_state[f"{P}_runs"])
runner.render_text(P, streamed)

ui.history()
ui.remember([item.key for item in SHARED.values()] + [f"{P}_runs"])
app.finish()
