"""Drawing and converting detections, with supervision doing the work."""

from __future__ import annotations

from typing import Any

import numpy as np
import supervision as sv
from PIL import Image

from .images import load_image

__all__ = ["annotate_detections", "detections_from_list", "detections_to_list", "labels_for"]


def labels_for(detections: sv.Detections) -> list[str]:
    """``"cat 0.93"`` for each detection, ``"#3 cat 0.93"`` when it is tracked (its ``tracker_id``; -1, not tracked
    yet, shows none)."""
    names = detections.data.get("class_name")
    confidences = detections.confidence if detections.confidence is not None else [None] * len(detections)
    labels = []
    for index, confidence in enumerate(confidences):
        name = str(names[index]) if names is not None else str(detections.class_id[index])
        if detections.tracker_id is not None and detections.tracker_id[index] >= 0:
            name = f"#{int(detections.tracker_id[index])} {name}"
        labels.append(name if confidence is None else f"{name} {confidence:.2f}")
    return labels


def annotate_detections(
    image: Any,
    detections: sv.Detections,
    *,
    color: sv.Color | sv.ColorPalette | None = None,
    labels: list[str] | None = None,
) -> Image.Image:
    """A copy of ``image`` with boxes and ``label confidence`` tags drawn by supervision.

    Line width and text size follow the image's resolution so labels stay readable on
    thumbnails and 12-megapixel photos alike. ``color`` fixes one colour for all boxes (used to tell
    local from remote apart in comparisons); by default colours follow the class.
    """
    scene = load_image(image, max_pixels=10**9).copy()
    resolution = scene.size
    thickness = sv.calculate_optimal_line_thickness(resolution_wh=resolution)
    text_scale = sv.calculate_optimal_text_scale(resolution_wh=resolution)
    palette = color if color is not None else sv.ColorPalette.DEFAULT
    lookup = sv.ColorLookup.INDEX if color is not None else sv.ColorLookup.CLASS
    box = sv.BoxAnnotator(color=palette, thickness=thickness, color_lookup=lookup)
    label = sv.LabelAnnotator(
        color=palette, text_scale=text_scale, text_thickness=max(1, thickness // 2), color_lookup=lookup,
        smart_position=True,
    )
    if len(detections) == 0:
        return scene
    scene = box.annotate(scene, detections)
    return label.annotate(scene, detections, labels=labels if labels is not None else labels_for(detections))


def detections_to_list(detections: sv.Detections) -> list[dict[str, Any]]:
    """The wire protocol's shape: ``[{"label", "score", "box": {"xmin", "ymin", "xmax", "ymax"}}]``."""
    names = detections.data.get("class_name")
    out = []
    for index in range(len(detections)):
        xmin, ymin, xmax, ymax = (round(float(v), 2) for v in detections.xyxy[index])
        out.append({
            "label": str(names[index]) if names is not None else str(int(detections.class_id[index])),
            "score": round(float(detections.confidence[index]), 4) if detections.confidence is not None else None,
            "box": {"xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax},
        })
    return out


def detections_from_list(items: list[dict[str, Any]], classes: tuple[str, ...] | list[str] = ()) -> sv.Detections:
    """Build ``sv.Detections`` from the wire shape: ``[{"label", "score", "box": {"xmin", ...}}]``.

    Class ids follow ``classes`` where the label is known, so colours match the local model's.
    """
    if not items:
        return sv.Detections.empty()
    labels = [item["label"] for item in items]
    class_index = {name: index for index, name in enumerate(classes)}
    for label in labels:
        class_index.setdefault(label, len(class_index))  # labels the model did not list get ids after its own
    return sv.Detections(
        xyxy=np.array([(box["xmin"], box["ymin"], box["xmax"], box["ymax"]) for box in (item["box"] for item in items)],
                      dtype=np.float32),
        confidence=np.array([item["score"] for item in items], dtype=np.float32),
        class_id=np.array([class_index[label] for label in labels], dtype=int),
        data={"class_name": np.array(labels)},
    )
