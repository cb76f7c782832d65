"""Prometheus metrics of the reference server (``GET /metrics``), named the way vLLM's and TGI's are.

Counters and histograms are recorded as requests end; gauges (requests running and waiting per model, each model's
state and load time) are read from the gates and the engine when Prometheus scrapes. Each app has its own registry,
so several servers in one process (the tests) never mix their figures.

    inference_studio_requests_total{model, task, route, status}       counter
    inference_studio_request_duration_seconds{model, task, route}     histogram: the whole request, streams included
    inference_studio_request_queue_duration_seconds{model}            histogram: waiting for a slot at the model's gate
    inference_studio_request_inference_duration_seconds{model, task}  histogram: running on the model (load excluded;
                                                                      a batch's whole run)
    inference_studio_request_batch_wait_duration_seconds{model}       histogram: waiting for a batch to close
    inference_studio_batch_size{model}                                histogram: requests per batch
    inference_studio_requests_running{model} / _requests_waiting{model}  gauges
    inference_studio_model_state{model, state}                        gauge, 1 for the model's current state
    inference_studio_model_load_duration_seconds{model}               gauge, the last load of the model
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

PREFIX = "inference_studio"
#: Latency buckets in seconds: from a tiny detector on a GPU (ms) to a long generation on a CPU (minutes).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
STATES = ("not loaded", "loading", "loaded", "unloaded", "error")


class Metrics:
    """The server's metrics. ``snapshot`` gives the gauges' current figures (gates, models) at scrape time."""

    def __init__(self, snapshot: Callable[[], list[dict[str, Any]]], served: Collection[str] = ()) -> None:
        self.served = frozenset(served)
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(f"{PREFIX}_requests", "Requests answered, by model, task, route and HTTP status.",
                                ("model", "task", "route", "status"), registry=self.registry)
        self.duration = Histogram(f"{PREFIX}_request_duration_seconds", "Whole requests, streams included.",
                                  ("model", "task", "route"), buckets=BUCKETS, registry=self.registry)
        self.queue = Histogram(f"{PREFIX}_request_queue_duration_seconds", "Time waiting for a slot at the gate.",
                               ("model",), buckets=BUCKETS, registry=self.registry)
        self.inference = Histogram(f"{PREFIX}_request_inference_duration_seconds",
                                   "Time running on the model (a model load excluded).", ("model", "task"),
                                   buckets=BUCKETS, registry=self.registry)
        self.batch_wait = Histogram(f"{PREFIX}_request_batch_wait_duration_seconds",
                                    "Time a batched request waited for its batch to close.", ("model",),
                                    buckets=BUCKETS, registry=self.registry)
        self.batch_size = Histogram(f"{PREFIX}_batch_size", "Requests per batch run on the model.", ("model",),
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.registry.register(_Gauges(snapshot))

    def observe_request(self, scope: dict[str, Any], status: int, seconds: float) -> None:
        """One answered request (``RequestLogMiddleware`` calls it): counted by route, model, task and status."""
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"  # a route's template, never a client's path
        state = scope.get("state", {})
        model, task = self.model_label(str(state.get("model_id", ""))), str(state.get("task", ""))
        self.requests.labels(model, task, template, str(status)).inc()
        self.duration.labels(model, task, template).observe(seconds)

    def observe_prediction(self, call: Any, prediction: Any, queue_ms: float) -> None:
        """A request's wait at its gate, for a batch, and its time on the model when it answered in one piece (a
        stream's is in the request duration)."""
        from ..types import Raw, Timings

        model = self.model_label(call.spec.model_id)
        self.queue.labels(model).observe(queue_ms / 1000)
        if prediction.batch_ms is not None:
            self.batch_wait.labels(model).observe(prediction.batch_ms / 1000)
        if isinstance(prediction.outcome, Raw):
            self.inference.labels(model, call.request.spec.name).observe(
                Timings.from_raw(prediction.outcome).total_ms / 1000)

    def model_label(self, model_id: str) -> str:
        """A served model's id, else ``other``: what a client names must not grow the label set without bound."""
        return model_id if model_id in self.served or not model_id else "other"

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


class _Gauges(Collector):
    """Gauges read when Prometheus scrapes: nothing to keep in step as requests come and go."""

    def __init__(self, snapshot: Callable[[], list[dict[str, Any]]]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        running = GaugeMetricFamily(f"{PREFIX}_requests_running", "Requests running on the model.", labels=["model"])
        waiting = GaugeMetricFamily(f"{PREFIX}_requests_waiting", "Requests waiting at the model's gate.",
                                    labels=["model"])
        state = GaugeMetricFamily(f"{PREFIX}_model_state", "1 for the model's current state.",
                                  labels=["model", "state"])
        load = GaugeMetricFamily(f"{PREFIX}_model_load_duration_seconds", "The model's last load.", labels=["model"])
        for model in self.snapshot():
            running.add_metric([model["id"]], model["running"])
            waiting.add_metric([model["id"]], model["waiting"])
            for name in STATES:
                state.add_metric([model["id"], name], 1.0 if model["status"] == name else 0.0)
            if model.get("load_s") is not None:
                load.add_metric([model["id"]], model["load_s"])
        yield from (running, waiting, state, load)
