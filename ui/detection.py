"""The object detection page's results: annotated images, tables, downloads and the Compare parity."""

from __future__ import annotations

import numpy as np
import streamlit as st
import supervision as sv

from inference import DetectionResult
from inference.annotate import annotate_detections, labels_for
from inference.compare import detection_parity

from . import components as ui
from . import runner, sidebar

TASK = "object-detection"
LOCAL_COLOUR, REMOTE_COLOUR = sv.Color.from_hex("#ef6c00"), sv.Color.from_hex("#1565c0")


def run(prefix: str, model_id: str, mode: str, picked: ui.PickedImage, params: dict) -> None:
    """Detect on the mode's backends; the result keeps the picture its boxes belong to."""
    runner.run(prefix, "object detection", TASK, model_id, mode, (picked.data,), params)
    st.session_state[f"{prefix}_image"] = picked.data
    st.session_state.pop(f"{prefix}_classes", None)  # a new result shows every class again


def preview(prefix: str, picked: ui.PickedImage) -> None:
    """The picked image, while there is no result to draw on it."""
    if not any(outcome.ok for outcome in runner.last(prefix).values()) and picked.data:
        st.image(picked.data, caption=picked.label, width="stretch")


def render(prefix: str) -> None:
    """The kept outcomes: errors, then per backend the annotated image, timings, table and downloads.

    A class filter applies to every backend; with several results, the parity of each against the reference column,
    and with two, both sets on one picture.
    """
    outcomes = runner.last(prefix)
    results = {backend: outcome.result for backend, outcome in outcomes.items() if outcome.ok}
    for outcome in outcomes.values():
        if outcome.error is not None:
            ui.show_error(outcome.error, backend=outcome.backend if len(outcomes) > 1 else None)
    if results:
        image = st.session_state[f"{prefix}_image"]
        found = sorted({name for result in results.values() for name in result.class_names})
        st.session_state.setdefault(f"{prefix}_classes", found)
        st.session_state[f"{prefix}_classes"] = [c for c in st.session_state[f"{prefix}_classes"] if c in found]
        shown = st.multiselect("Show classes", found, key=f"{prefix}_classes", placeholder="Every class is hidden")

        def visible(result: DetectionResult) -> sv.Detections:
            names = np.array(result.class_names)
            return result.detections[np.isin(names, shown)] if len(result.detections) else result.detections

        columns = st.columns(len(results)) if len(results) > 1 else [st.container()]
        for column, (backend, result) in zip(columns, results.items(), strict=True):
            with column:
                if len(outcomes) > 1:
                    st.subheader(ui.label(backend))
                _one_result(prefix, backend, result, visible(result), narrow=len(results) > 1)
        reference = sidebar.reference(tuple(outcomes)) if len(outcomes) > 1 else None
        others = [backend for backend in results if backend != reference] if reference in results else []
        for other in others:
            a, b = ui.lower(ui.label(reference)), ui.lower(ui.label(other))
            st.subheader("Parity" if len(others) == 1 else f"Parity: {a} and {b}")
            ui.parity_metrics(detection_parity(results[reference], results[other]), reference, other)
        if len(results) == 2 and others:
            first, second = visible(results[reference]), visible(results[others[0]])
            a, b = ui.lower(ui.label(reference)), ui.lower(ui.label(others[0]))
            tag_a, tag_b = ("L", "R") if (a, b) == ("local", "remote") else (a[:1].upper(), b[:1].upper())
            if tag_a == tag_b:
                tag_a, tag_b = "1", "2"
            overlay = annotate_detections(image, first, color=LOCAL_COLOUR,
                                          labels=[f"{tag_a} {x}" for x in labels_for(first)])
            overlay = annotate_detections(overlay, second, color=REMOTE_COLOUR,
                                          labels=[f"{tag_b} {x}" for x in labels_for(second)])
            st.image(overlay, caption=f"Both on one picture: {a} in orange ({tag_a}), {b} in blue ({tag_b})",
                     width="stretch")
    runner.render_stats(prefix)


def _one_result(prefix: str, backend: str, result: DetectionResult, shown: sv.Detections, *, narrow: bool) -> None:
    annotated = annotate_detections(st.session_state[f"{prefix}_image"], shown)
    st.image(annotated, caption=f"{len(shown)} of {len(result.detections)} detections shown", width="stretch")
    ui.timing_metrics(result, compact=narrow)
    st.dataframe(ui.detection_table(result), hide_index=True, width="stretch", height=180)
    d1, d2 = st.columns(2)
    d1.download_button("PNG" if narrow else "Annotated PNG", ui.png_bytes(annotated),
                       file_name=f"detections-{backend}.png", help="the annotated image",
                       mime="image/png", key=f"{prefix}_png_{backend}", icon=":material/download:")
    d2.download_button("JSON" if narrow else "Detections JSON", ui.detections_json(result),
                       help="every detection with label, score and box",
                       file_name=f"detections-{backend}.json", mime="application/json",
                       key=f"{prefix}_json_{backend}", icon=":material/data_object:")
