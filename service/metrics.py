"""Prometheus metrics: one registry per app, an ASGI middleware timing every request."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "striate_requests_total", "HTTP requests", ["model", "endpoint", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "striate_request_duration_seconds",
            "HTTP request latency",
            ["model", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "striate_batch_size",
            "images per onnxruntime call",
            ["model", "version", "graph"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "striate_inference_duration_seconds",
            "onnxruntime call time",
            ["model", "version", "graph"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "striate_queue_depth", "images waiting for a batch", ["model", "version", "graph"], registry=r
        )
        self.models_loaded = Gauge("striate_models_loaded", "model versions loaded", registry=r)
        self.models_broken = Gauge("striate_models_broken", "bundles that failed to load", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times each request by model (path parameter `name`) and route template."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics
        # (model, endpoint, method, status) -> (counter, histogram) children: `labels()` takes a lock
        # and builds a key each call; a request then costs one dict lookup, one add, one observe.
        self._children: dict[tuple[str, str, str, int], tuple] = {}

    def _series(self, model: str, endpoint: str, method: str, status: int) -> tuple:
        key = (model, endpoint, method, status)
        series = self._children.get(key)
        if series is None:
            series = self._children[key] = (
                self.metrics.requests.labels(model, endpoint, method, str(status)),
                self.metrics.latency.labels(model, endpoint),
            )
        return series

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            # unknown names (404) get no label of their own: clients must not grow the label set
            model = (scope.get("path_params") or {}).get("name", "") if status[0] != 404 else ""
            counter, histogram = self._series(model, endpoint, scope["method"], status[0])
            counter.inc()
            histogram.observe(time.perf_counter() - start)
