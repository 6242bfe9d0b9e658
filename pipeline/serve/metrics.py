"""Prometheus metrics of one app, in a registry of its own (two apps in one process,
as the tests run them, do not share counters). `GET /metrics` renders it."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (the response's Content-Type)

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("upscaler_requests_total", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.latency = Histogram("upscaler_request_seconds", "HTTP request latency by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("upscaler_queue_depth", "upscale requests admitted and not yet answered",
                                 registry=r)
        self.queue_capacity = Gauge("upscaler_queue_capacity", "upscale requests admitted at most (--queue-size)",
                                    registry=r)
        self.waiting = Gauge("upscaler_batch_queue_images", "decoded images waiting for the inference thread",
                             registry=r)
        self.in_flight = Gauge("upscaler_requests_in_flight", "HTTP requests being handled", registry=r)
        self.images = Counter("upscaler_images_total", "images upscaled and returned", registry=r)
        self.failures = Counter("upscaler_image_failures_total", "upscale requests refused or failed, by status",
                                ["status"], registry=r)
        self.batches = Counter("upscaler_batches_total", "Upscaler.upscale calls (forward batches)", registry=r)
        self.batch_images = Counter("upscaler_batch_images_total", "images in those calls", registry=r)
        self.infer_seconds = Histogram("upscaler_infer_seconds", "seconds per Upscaler.upscale call",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.jobs = Counter("upscaler_jobs_total", "batch jobs by final state", ["state"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
