"""Prometheus metrics, one registry per app (so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
METHODS = frozenset({"GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH"})


def method_label(method: str) -> str:
    """The ``method`` label of a request: one of :data:`METHODS`, else ``other`` (so that no client can add
    series by inventing methods)."""
    return method if method in METHODS else "other"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("hugie_requests", "HTTP requests handled.", ["method", "route", "status"], registry=r)
        self.latency = Histogram("hugie_request_latency_seconds", "HTTP request latency.", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("hugie_batch_size", "Passes per model call (after micro-batching).",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_requests = Histogram("hugie_batch_requests", "Requests merged into one model call.",
                                        buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("hugie_queue_depth", "Passes waiting for the model.", registry=r)
        self.inflight = Gauge("hugie_inflight_requests", "HTTP requests being handled.", registry=r)
        self.errors = Counter("hugie_errors", "Error responses by code.", ["code"], registry=r)
        self.model_seconds = Histogram("hugie_model_call_seconds", "Time inside one model call.",
                                       buckets=LATENCY_BUCKETS, registry=r)

    method_label = staticmethod(method_label)
