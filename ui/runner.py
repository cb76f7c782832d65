"""Running a page's call on the chosen backends: streamed, side by side (up to four columns), or repeated; results
kept in the session."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import streamlit as st

from inference import InferenceError, Model
from inference.compare import Outcome, RunStats, run_both, run_repeated, text_parity

from . import components as ui
from . import sidebar, state

def inputs_key(task: str, model_id: str, mode: str, args: tuple, kwargs: dict[str, Any]) -> str:
    """A fingerprint of everything a run depends on (its columns, images by content), to tell whose results are
    shown."""
    digest = hashlib.sha256()
    for part in (task, model_id, mode, sidebar.targets(mode), *args, json.dumps(kwargs, sort_keys=True, default=str)):
        digest.update(part if isinstance(part, bytes) else repr(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def forget_stale(prefix: str, key: str) -> None:
    """Results belong to the inputs that made them: once the inputs on screen differ, drop the results."""
    if st.session_state.get(f"{prefix}_inputs", key) != key:
        for name in ("last", "stats", "inputs"):
            st.session_state.pop(f"{prefix}_{name}", None)


def models_for(model_id: str, task: str, mode: str) -> tuple[dict[str, Model], dict[str, Outcome]]:
    """(model handles, outcomes of the backends whose model could not be had): one failing spares the other."""
    models, failed = {}, {}
    for backend in sidebar.targets(mode):
        try:
            models[backend] = state.get_model(model_id, task, backend)
        except InferenceError as exc:
            failed[backend] = Outcome(backend, error=exc)
    return models, failed


def run(prefix: str, label: str, task: str, model_id: str, mode: str, args: tuple, kwargs: dict[str, Any], *,
        stream: bool = False) -> bool:
    """Run once on the mode's backends and keep the outcomes under ``{prefix}_last``.

    One backend with ``stream``: the text is written into the page as it is generated (returns True).
    Several backends: all run at once; one failing never hides the others' results. Whatever happens, the
    outcomes kept are this run's: an error replaces the results of an earlier run.
    """
    key = inputs_key(task, model_id, mode, args, kwargs)
    models, outcomes = models_for(model_id, task, mode)
    streamed = False
    if len(models) == 1 and not outcomes and stream:
        (backend, model), = models.items()
        try:
            with st.spinner(_running(model_id, models)):
                text_stream = model.stream(*args, **kwargs)
                st.write_stream(text_stream)
            outcomes[backend] = Outcome(backend, result=text_stream.result)
            streamed = True
        except InferenceError as exc:
            outcomes[backend] = Outcome(backend, error=exc)
    elif models:
        with st.spinner(_running(model_id, models)):
            outcomes.update(run_both({backend: (lambda m=model: m(*args, **kwargs))
                                      for backend, model in models.items()}))
    outcomes = {backend: outcomes[backend] for backend in sidebar.targets(mode)}  # the columns' order
    settings = _history_settings(mode, model_id, task, args, kwargs)
    for outcome in outcomes.values():
        ui.record(label, outcome, settings)
    if sidebar.targets(mode) != ("local",):
        sidebar.count_remote_run()
    st.session_state[f"{prefix}_last"] = outcomes
    st.session_state[f"{prefix}_inputs"] = key
    st.session_state.pop(f"{prefix}_stats", None)
    return streamed


def repeat(prefix: str, label: str, task: str, model_id: str, mode: str, args: tuple, kwargs: dict[str, Any],
           n: int) -> None:
    """Run ``n`` rounds on the mode's backends with a progress bar; keep the latencies under ``{prefix}_stats``.

    Every run lands in the history, like a single run.
    """
    key = inputs_key(task, model_id, mode, args, kwargs)
    models, failed = models_for(model_id, task, mode)
    settings = _history_settings(mode, model_id, task, args, kwargs)
    stats = {backend: RunStats(backend) for backend in sidebar.targets(mode)}
    for outcome in failed.values():
        stats[outcome.backend].errors.append(str(outcome.error))
        ui.record(label, outcome, settings)
    if models:
        bar = st.progress(0.0, text=f"Round 1 of {n}…")

        def on_round(done: int, outcomes: dict[str, Outcome]) -> None:
            for outcome in outcomes.values():
                ui.record(label, outcome, {**settings, "round": f"{done}/{n}"})
            bar.progress(done / n, text=f"Round {done} of {n}")

        stats.update(run_repeated({backend: (lambda m=model: m(*args, **kwargs)) for backend, model in models.items()},
                                  n, on_round=on_round))
        bar.empty()
    if sidebar.targets(mode) != ("local",):
        sidebar.count_remote_run()
    st.session_state[f"{prefix}_stats"] = stats
    st.session_state[f"{prefix}_inputs"] = key


def _running(model_id: str, models: dict[str, Model]) -> str:
    """What the spinner says while a run is under way."""
    if len(models) > 1:
        where = "on both backends at once" if len(models) == 2 else f"on {len(models)} backends at once"
    else:
        where = f"on the {ui.lower(ui.label(next(iter(models))))} backend"
    return f"Running {model_id} {where} (a model's first run also loads it)…"


def _history_settings(mode: str, model_id: str, task: str, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The settings of a run as its history row shows them: mode, model, task, prompt and parameters."""
    settings: dict[str, Any] = {"mode": mode, "model": model_id, "task": task}
    if args and isinstance(args[0], str):
        settings["prompt"] = args[0]
    settings.update({name: value for name, value in kwargs.items() if value is not None})
    return settings


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
                    st.subheader(ui.label(backend))
                if outcome.error is not None:
                    ui.show_error(outcome.error)
                    continue
                if not streamed:  # a streamed answer is on the page already
                    st.markdown(outcome.result.text or "*(empty answer)*")
                ui.timing_metrics(outcome.result, compact=len(outcomes) > 1)
        if len(outcomes) > 1:
            reference = sidebar.reference(tuple(outcomes))
            for backend, outcome in outcomes.items():  # every column against the reference, where both answered
                if backend != reference and outcome.ok and outcomes[reference].ok:
                    ui.text_diff(text_parity(outcomes[reference].result.text, outcome.result.text), reference, backend)
    render_stats(prefix)


def render_stats(prefix: str) -> None:
    if f"{prefix}_stats" in st.session_state:
        stats = st.session_state[f"{prefix}_stats"]
        st.subheader("Repeated runs")
        for item in stats.values():
            for error in dict.fromkeys(item.errors):  # each distinct error once
                st.error(f"{ui.label(item.backend)}: {error}", icon=":material/error:")
        ui.repeated_runs(stats)


def buttons(prefix: str, mode: str, action: str) -> tuple[bool, bool, Any]:
    """The run button (and, in Compare, "Run N times"); returns (run, repeat, slot for the share box)."""
    first = st.columns(2, vertical_alignment="bottom")
    go = first[0].button(action, type="primary", key=f"{prefix}_go", icon=":material/play_arrow:", width="stretch")
    again = False
    if mode == "Compare":
        second = st.columns(2, vertical_alignment="bottom")
        second[0].number_input("Runs", 2, 50, key=f"{prefix}_runs", help="rounds of every column at once")
        again = second[1].button("Run N times", key=f"{prefix}_repeat", icon=":material/repeat:", width="stretch")
    return go, again, first[1]
