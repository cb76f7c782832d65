"""Local vs remote: run the same call on both backends at once, and say how far the answers agree."""

from __future__ import annotations

import difflib
import math
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InferenceError
from .types import DetectionResult, Result

__all__ = [
    "DetectionParity",
    "Outcome",
    "RunStats",
    "TextParity",
    "detection_parity",
    "percentile",
    "run_both",
    "run_repeated",
    "text_parity",
]


@dataclass(frozen=True)
class Outcome:
    """One backend's answer: a result or the error it raised (never both)."""

    backend: str
    result: Result | None = None
    error: InferenceError | None = None
    wall_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.result is not None


def _attempt(backend: str, call: Callable[[], Result]) -> Outcome:
    started = time.perf_counter()
    try:
        result = call()
    except InferenceError as exc:  # anything else is a bug and must surface
        return Outcome(backend, error=exc, wall_ms=(time.perf_counter() - started) * 1000)
    return Outcome(backend, result=result, wall_ms=(time.perf_counter() - started) * 1000)


def run_both(calls: dict[str, Callable[[], Result]]) -> dict[str, Outcome]:
    """Run each backend's call at the same time; one failing never hides the other's answer.

    Example:
        >>> outcomes = run_both({"local": lambda: local(photo), "remote": lambda: remote(photo)})
        >>> outcomes["remote"].error  # e.g. RemoteUnavailable, while outcomes["local"].result is fine
    """
    with ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="inference-compare") as pool:
        futures = {name: pool.submit(_attempt, name, call) for name, call in calls.items()}
        return {name: future.result() for name, future in futures.items()}


# --------------------------------------------------------------------------- text


@dataclass(frozen=True)
class TextParity:
    """Whether two texts agree and, if not, a word-level diff."""

    equal: bool
    #: (op, words_a, words_b) with op in "equal", "replace", "delete", "insert" (difflib's opcodes).
    ops: tuple[tuple[str, str, str], ...]
    similarity: float


def text_parity(a: str, b: str) -> TextParity:
    """Compare two answers word by word."""
    words_a, words_b = a.split(), b.split()
    matcher = difflib.SequenceMatcher(a=words_a, b=words_b, autojunk=False)
    ops = tuple(
        (tag, " ".join(words_a[i1:i2]), " ".join(words_b[j1:j2])) for tag, i1, i2, j1, j2 in matcher.get_opcodes()
    )
    return TextParity(equal=a.strip() == b.strip(), ops=ops, similarity=round(matcher.ratio(), 4))


# --------------------------------------------------------------------------- detections


@dataclass(frozen=True)
class DetectionParity:
    """Boxes of two detection results matched one-to-one by IoU (same label)."""

    #: (index in a, index in b, IoU, score b - score a)
    matched: tuple[tuple[int, int, float, float], ...]
    only_a: tuple[int, ...]
    only_b: tuple[int, ...]
    iou_threshold: float

    @property
    def max_score_delta(self) -> float:
        return max((abs(delta) for *_, delta in self.matched), default=0.0)

    @property
    def agree(self) -> bool:
        return not self.only_a and not self.only_b


def detection_parity(a: DetectionResult, b: DetectionResult, iou_threshold: float = 0.5) -> DetectionParity:
    """Match boxes of ``a`` and ``b``: same label and IoU >= ``iou_threshold``, best total IoU first."""
    import supervision as sv
    from scipy.optimize import linear_sum_assignment

    det_a, det_b = a.detections, b.detections
    if len(det_a) == 0 or len(det_b) == 0:
        return DetectionParity((), tuple(range(len(det_a))), tuple(range(len(det_b))), iou_threshold)
    iou = sv.box_iou_batch(det_a.xyxy, det_b.xyxy)
    names_a, names_b = a.class_names, b.class_names
    same_label = np.array([[name_a == name_b for name_b in names_b] for name_a in names_a])
    score = np.where(same_label & (iou >= iou_threshold), iou, 0.0)
    rows, cols = linear_sum_assignment(score, maximize=True)
    matched = []
    for row, col in zip(rows, cols, strict=True):
        if score[row, col] > 0:
            delta = float(det_b.confidence[col] - det_a.confidence[row]) if det_a.confidence is not None else 0.0
            matched.append((int(row), int(col), round(float(iou[row, col]), 4), round(delta, 4)))
    used_a = {m[0] for m in matched}
    used_b = {m[1] for m in matched}
    return DetectionParity(
        tuple(matched),
        tuple(i for i in range(len(det_a)) if i not in used_a),
        tuple(j for j in range(len(det_b)) if j not in used_b),
        iou_threshold,
    )


# --------------------------------------------------------------------------- repeated runs


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0-1) by linear interpolation (numpy's default); NaN for no values."""
    import numpy as np

    return float(np.percentile(values, q * 100)) if len(values) else math.nan


@dataclass
class RunStats:
    """Latencies of repeated runs of one backend."""

    backend: str
    total_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.total_ms)

    def summary(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "n": self.n,
            "p50_ms": round(percentile(self.total_ms, 0.5), 2) if self.total_ms else None,
            "p95_ms": round(percentile(self.total_ms, 0.95), 2) if self.total_ms else None,
            "mean_ms": round(statistics.fmean(self.total_ms), 2) if self.total_ms else None,
            "errors": len(self.errors),
        }


def run_repeated(calls: dict[str, Callable[[], Result]], n: int,
                 on_round: Callable[[int, dict[str, Outcome]], None] | None = None) -> dict[str, RunStats]:
    """Run every backend ``n`` times (both at once each round); latencies are the results' ``total_ms``.

    ``on_round(done, outcomes)`` is called after each round with its outcomes (for a progress bar, a history).
    """
    stats = {name: RunStats(name) for name in calls}
    for round_index in range(n):
        outcomes = run_both(calls)
        for name, outcome in outcomes.items():
            if outcome.ok:
                assert outcome.result is not None
                stats[name].total_ms.append(outcome.result.timings.total_ms)
            else:
                stats[name].errors.append(str(outcome.error))
        if on_round is not None:
            on_round(round_index + 1, outcomes)
    return stats


def summarize(result: Result) -> dict[str, Any]:
    """A flat row for a run-history table."""
    return {"source": result.source, "model_id": result.model_id, "task": result.task,
            **result.timings.to_dict(), "output": result.brief}
