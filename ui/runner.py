"""Running a page's call on the chosen backends: streamed, side by side, or repeated; results kept in the session."""

from __future__ import annotations

from typing import Any

import streamlit as st

from inference import InferenceError
from inference.compare import Outcome, run_both, run_repeated, text_parity

from . import components as ui
from . import sidebar, state

BACKENDS = {"Local": ("local",), "Remote": ("remote",), "Compare": ("local", "remote")}


def run(prefix: str, label: str, task: str, model_id: str, mode: str, args: tuple, kwargs: dict[str, Any], *,
        stream: bool = False) -> bool:
    """Run once on the mode's backends and keep the outcomes under ``{prefix}_last``.

    One backend with ``stream``: the text is written into the page as it is generated (returns True).
    Two backends: both run at once; one failing never hides the other's result.
    """
    outcomes: dict[str, Outcome] = {}
    streamed = False
    try:
        models = {backend: state.get_model(model_id, task, backend) for backend in BACKENDS[mode]}
    except InferenceError as exc:
        ui.show_error(exc)
        return False
    if len(models) == 1 and stream:
        (backend, model), = models.items()
        try:
            text_stream = model.stream(*args, **kwargs)
            st.write_stream(text_stream)
            outcomes[backend] = Outcome(backend, result=text_stream.result)
            streamed = True
        except InferenceError as exc:
            outcomes[backend] = Outcome(backend, error=exc)
    else:
        spinner = "Running on both backends at once…" if len(models) > 1 else f"Running {model_id}…"
        with st.spinner(spinner):
            outcomes = run_both({backend: (lambda m=model: m(*args, **kwargs)) for backend, model in models.items()})
    for outcome in outcomes.values():
        ui.record(label, outcome)
    if "remote" in models:
        sidebar.count_remote_run()
    st.session_state[f"{prefix}_last"] = outcomes
    st.session_state.pop(f"{prefix}_stats", None)
    return streamed


def repeat(prefix: str, task: str, model_id: str, mode: str, args: tuple, kwargs: dict[str, Any], n: int) -> None:
    """Run ``n`` rounds on the mode's backends with a progress bar; keep the latencies under ``{prefix}_stats``."""
    try:
        models = {backend: state.get_model(model_id, task, backend) for backend in BACKENDS[mode]}
    except InferenceError as exc:
        ui.show_error(exc)
        return
    bar = st.progress(0.0, text="Running…")
    stats = run_repeated({backend: (lambda m=model: m(*args, **kwargs)) for backend, model in models.items()}, n,
                         progress=lambda done, total: bar.progress(done / total, text=f"Round {done} of {total}"))
    bar.empty()
    if "remote" in models:
        sidebar.count_remote_run()
    for item in stats.values():
        for error in dict.fromkeys(item.errors):  # each distinct error once
            st.error(f"{ui.BACKEND_LABEL[item.backend]}: {error}", icon=":material/error:")
    st.session_state[f"{prefix}_stats"] = stats


def last(prefix: str) -> dict[str, Outcome]:
    return st.session_state.get(f"{prefix}_last", {})


def render_text(prefix: str, streamed: bool) -> None:
    """The kept text outcomes: one column per backend with timings, and their parity in Compare."""
    outcomes = last(prefix)
    if outcomes:
        columns = st.columns(len(outcomes)) if len(outcomes) > 1 else [st.container()]
        for column, (backend, outcome) in zip(columns, outcomes.items(), strict=True):
            with column:
                if len(outcomes) > 1:
                    st.subheader(ui.BACKEND_LABEL[backend])
                if outcome.error is not None:
                    ui.show_error(outcome.error)
                    continue
                if not streamed:  # a streamed answer is on the page already
                    st.markdown(outcome.result.text or "*(empty answer)*")
                ui.timing_metrics(outcome.result, compact=len(outcomes) > 1)
        if len(outcomes) == 2 and all(outcome.ok for outcome in outcomes.values()):
            ui.text_diff(text_parity(outcomes["local"].result.text, outcomes["remote"].result.text))
    render_stats(prefix)


def render_stats(prefix: str) -> None:
    if f"{prefix}_stats" in st.session_state:
        st.subheader("Repeated runs")
        ui.repeated_runs(st.session_state[f"{prefix}_stats"])


def buttons(prefix: str, mode: str, action: str) -> tuple[bool, bool, Any]:
    """The run button (and, in Compare, "Run N times"); returns (run, repeat, slot for the share box)."""
    first = st.columns(2, vertical_alignment="bottom")
    go = first[0].button(action, type="primary", key=f"{prefix}_go", icon=":material/play_arrow:", width="stretch")
    again = False
    if mode == "Compare":
        second = st.columns(2, vertical_alignment="bottom")
        second[0].number_input("Runs", 2, 50, key=f"{prefix}_runs", help="rounds of local and remote at once")
        again = second[1].button("Run N times", key=f"{prefix}_repeat", icon=":material/repeat:", width="stretch")
    return go, again, first[1]
