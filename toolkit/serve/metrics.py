"""The server's Prometheus metrics, through prometheus-client, in a registry of the server's own (never the
process-wide default one, so two servers in one process, or a user's own metrics, do not mix).

Where Triton has a metric, its name and meaning are Triton's (``nv_inference_*``, labels ``model`` and ``version``),
so that dashboards made for Triton work: the request success and failure counts, the inference count (images) and
the execution count (model runs; their ratio is the mean batch size), the cumulative request, queue and compute
durations in microseconds, and the pending request count. prometheus-client writes a counter's samples with a
``_total`` suffix, which Triton's names do not have, so these counters are exposed as untyped metrics under their
exact Triton names. What Triton has no metric for is ``yolokit_*``: duration histograms (request, queue, decode,
compute), the batch size histogram and the requests in flight; the process's CPU time and memory come from
prometheus-client's process collector (``process_*``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

# failure reasons, as Triton labels them
REJECTED = "REJECTED"  # queue full, shutting down, timed out waiting
CANCELED = "CANCELED"  # the client went away
BACKEND = "BACKEND"  # the model failed
OTHER = "OTHER"  # bad input

TRITON_COUNTERS = {
    "nv_inference_request_success": "Number of successful inference requests (a request of several images counts 1)",
    "nv_inference_request_failure": "Number of failed inference requests, by reason (REJECTED, CANCELED, BACKEND, "
                                    "OTHER)",
    "nv_inference_count": "Number of inferences performed (images; a batch of n counts n)",
    "nv_inference_exec_count": "Number of model executions (batches) performed",
    "nv_inference_request_duration_us": "Cumulative end-to-end inference request handling time, in microseconds",
    "nv_inference_queue_duration_us": "Cumulative time requests waited in the batch queue, in microseconds",
    "nv_inference_compute_input_duration_us": "Cumulative time spent decoding and letterboxing inputs, in "
                                              "microseconds",
    "nv_inference_compute_infer_duration_us": "Cumulative time spent running the model and its NMS, in microseconds "
                                              "(each image charged its whole batch's time, as Triton charges each "
                                              "request of a batch)",
    "nv_inference_compute_output_duration_us": "Cumulative time spent encoding outputs, in microseconds",
}

SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZES = (1, 2, 4, 8, 16, 32, 64)


class _TritonCounters:
    """Triton's counters under their exact names (see the module's docstring), as a prometheus-client collector."""

    def __init__(self, model: str, version: str) -> None:
        self.labels = {"model": model, "version": version}
        self.values: dict[tuple[str, str], float] = {}
        self.lock = threading.Lock()

    def add(self, name: str, value: float, reason: str = "") -> None:
        with self.lock:
            self.values[(name, reason)] = self.values.get((name, reason), 0.0) + value

    def collect(self) -> Iterator[Any]:
        from prometheus_client.metrics_core import Metric

        with self.lock:
            values = dict(self.values)
        for name, doc in TRITON_COUNTERS.items():
            metric = Metric(name, doc, "unknown")
            reasons = sorted(r for n, r in values if n == name)
            if name == "nv_inference_request_failure":
                for reason in (REJECTED, CANCELED, BACKEND, OTHER):
                    metric.add_sample(name, {**self.labels, "reason": reason}, values.get((name, reason), 0.0))
            else:
                metric.add_sample(name, self.labels, sum(values.get((name, r), 0.0) for r in reasons or [""]))
            yield metric


class ServerMetrics:
    """Every metric of one served model; :meth:`exposition` is the ``/metrics`` body. Safe to update from any
    thread (the batcher's instances report from theirs)."""

    def __init__(self, model: str, version: str = "1") -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

        self.registry = CollectorRegistry(auto_describe=True)
        self.triton = _TritonCounters(model, version)
        self.registry.register(self.triton)  # type: ignore[arg-type]
        ProcessCollector(registry=self.registry)
        labels = ("model", "version")
        self._labels = (model, version)
        self.pending = Gauge("nv_inference_pending_request_count", "Images waiting in the batch queue for a model "
                             "instance", labels, registry=self.registry).labels(*self._labels)
        self.in_flight = Gauge("yolokit_requests_in_flight", "Inference requests admitted and not yet answered "
                               "(decoding, queued or running)", labels, registry=self.registry).labels(*self._labels)

        def histogram(name: str, doc: str, buckets: tuple[float, ...] = SECONDS) -> Any:
            return Histogram(name, doc, labels, buckets=buckets, registry=self.registry).labels(*self._labels)

        self.request_seconds = histogram("yolokit_request_duration_seconds", "Inference request handling time, from "
                                         "arrival to the response (successful requests)")
        self.queue_seconds = histogram("yolokit_queue_duration_seconds", "Time an image waited in the batch queue")
        self.decode_seconds = histogram("yolokit_decode_duration_seconds", "Time spent decoding and letterboxing "
                                        "one image")
        self.compute_seconds = histogram("yolokit_compute_duration_seconds", "Time one model execution (a batch: "
                                         "the model and its NMS) took")
        self.batch_size = histogram("yolokit_batch_size", "Images per model execution", SIZES)
        self.node_executions = Counter("yolokit_node_executions", "Model executions by the Ray node whose replica ran "
                                       "them (yolokit serve --engine ray)", (*labels, "node"), registry=self.registry)

    # ------------------------------------------------------------------------------ the batcher's Observer
    def queued(self, depth: int) -> None:
        self.pending.set(depth)

    def executed(self, size: int, seconds: float, waits: list[float], node: str = "") -> None:
        self.triton.add("nv_inference_count", size)
        self.triton.add("nv_inference_exec_count", 1)
        self.triton.add("nv_inference_compute_infer_duration_us", seconds * size * 1e6)
        self.compute_seconds.observe(seconds)
        self.batch_size.observe(size)
        for w in waits:
            self.queue_seconds.observe(w)
        self.triton.add("nv_inference_queue_duration_us", sum(waits) * 1e6)
        if node:
            self.node_executions.labels(*self._labels, node).inc()

    # ------------------------------------------------------------------------------ a request's outcome
    def decoded(self, seconds: list[float]) -> None:
        for s in seconds:
            self.decode_seconds.observe(s)
        self.triton.add("nv_inference_compute_input_duration_us", sum(seconds) * 1e6)

    def encoded(self, seconds: float) -> None:
        self.triton.add("nv_inference_compute_output_duration_us", seconds * 1e6)

    def succeeded(self, seconds: float) -> None:
        self.triton.add("nv_inference_request_success", 1)
        self.triton.add("nv_inference_request_duration_us", seconds * 1e6)
        self.request_seconds.observe(seconds)

    def failed(self, reason: str, seconds: float) -> None:
        self.triton.add("nv_inference_request_failure", 1, reason)
        self.triton.add("nv_inference_request_duration_us", seconds * 1e6)

    def exposition(self) -> tuple[bytes, str]:
        """The ``/metrics`` body and its content type (Prometheus text format)."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
