"""Prometheus metrics: one registry per app, an ASGI middleware timing every request.

With several worker processes (service/workers.py) every worker writes its series to files in one
directory (prometheus_client's multiprocess mode, chosen by PROMETHEUS_MULTIPROC_DIR before the
first metric exists) and any worker's `/metrics` reports the sum over all of them, including the
requests of workers that have since died. Gauges cover the live workers: the queue depth is summed,
models loaded and broken bundles are the most any worker reports (a worker still starting holds none).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own switch to multiprocess mode

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
            "striate_queue_depth",
            "images waiting for a batch",
            ["model", "version", "graph"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.models_loaded = Gauge(
            "striate_models_loaded", "model versions loaded", registry=r, multiprocess_mode="livemax"
        )
        self.models_broken = Gauge(
            "striate_models_broken", "bundles that failed to load", registry=r, multiprocess_mode="livemax"
        )

    def render(self) -> bytes:
        """This process's series or, in multiprocess mode, every worker's, aggregated."""
        if not os.environ.get(MULTIPROCESS_DIR_ENV):
            return generate_latest(self.registry)
        shared = CollectorRegistry()
        MultiProcessCollector(shared)
        return generate_latest(shared)


@contextlib.contextmanager
def multiprocess_metrics(workers: int) -> Iterator[Path | None]:
    """prometheus_client's multiprocess mode for the processes started inside the block (they inherit
    the environment): in PROMETHEUS_MULTIPROC_DIR if the operator set it (created, and emptied of an
    earlier run's files, as prometheus_client requires); else, for several workers, in a fresh
    temporary directory removed after; else (one worker) not at all: its in-memory registry is whole."""
    given = os.environ.get(MULTIPROCESS_DIR_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        yield path
        return
    if workers == 1:
        yield None
        return
    path = Path(tempfile.mkdtemp(prefix="striate-metrics-"))
    os.environ[MULTIPROCESS_DIR_ENV] = str(path)
    try:
        yield path
    finally:
        os.environ.pop(MULTIPROCESS_DIR_ENV, None)
        shutil.rmtree(path, ignore_errors=True)


def worker_exited(pid: int) -> None:
    """Drop a dead worker's gauges (its counters and histograms stay in the totals)."""
    if os.environ.get(MULTIPROCESS_DIR_ENV):
        mark_process_dead(pid)


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
