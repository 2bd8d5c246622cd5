"""Prometheus metrics, from ``prometheus-client`` (no hand-written exposition).

Each app has its own registry (so tests can build many apps). With ``PROMETHEUS_MULTIPROC_DIR``
set (``uvicorn --workers N``), prometheus-client keeps the values in files in that directory
and ``/metrics`` aggregates every worker's, as its multiprocess mode documents.

On the request path there is one counter increment per accepted notification and one
middleware observation per request; everything about batches is recorded by the writer, once
per batch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.records import Entry

__all__ = ["CONTENT_TYPE", "HttpMetrics", "Metrics", "SinkMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_UNMATCHED = "<unmatched>"
_REJECTED_BY_STATUS = {
    401: "unauthorized",
    413: "too_large",
    422: "invalid",
    503: "unavailable",
}
_NOTIFY_ROUTE = "/send-notification/{email}"


class Metrics:
    """Every metric of one app."""

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        self.registry = registry = CollectorRegistry()
        self.accepted = Counter(
            "notify_notifications_accepted",
            "Notifications accepted (answered 200).",
            registry=registry,
        )
        self.written = Counter(
            "notify_notifications_written",
            "Notification lines written to the log.",
            registry=registry,
        )
        self.failed = Counter(
            "notify_write_failures",
            "Failed attempts to write a batch, by log file.",
            ["sink"],
            registry=registry,
        )
        self.rejected = Counter(
            "notify_notifications_rejected",
            "POSTs not accepted, by reason.",
            ["reason"],
            registry=registry,
        )
        self.queue_depth = Gauge(
            "notify_queue_depth",
            "Lines held by a log writer (admitted, not yet written).",
            ["sink"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.sink_up = Gauge(
            "notify_sink_up",
            "1 when the log file's last write succeeded, else 0.",
            ["sink"],
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.batch_size = Histogram(
            "notify_batch_lines",
            "Lines per write.",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 4096),
            registry=registry,
        )
        self.write_seconds = Histogram(
            "notify_write_seconds",
            "Time to write one batch, retries included.",
            buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
            registry=registry,
        )
        self.http_requests = Counter(
            "notify_http_requests",
            "HTTP requests, by route, method and status.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.http_seconds = Histogram(
            "notify_http_request_seconds",
            "HTTP request latency, by route and method.",
            ["route", "method"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
            registry=registry,
        )
        self._http_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._sinks: list[SinkMetrics] = []

    def for_sink(self, name: str) -> SinkMetrics:
        sink = SinkMetrics(self, name)
        self._sinks.append(sink)
        return sink

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._http_children.get(key)
        if children is None:  # label lookups once per (route, method, status), not per request
            children = (
                self.http_requests.labels(route, method, str(status)),
                self.http_seconds.labels(route, method),
            )
            self._http_children[key] = children
        children[0].inc()
        children[1].observe(seconds)
        if route == _NOTIFY_ROUTE and method == "POST" and status != 200:
            self.rejected.labels(_REJECTED_BY_STATUS.get(status, str(status))).inc()

    def exposition(self) -> bytes:
        """The text format: this process's registry, or every worker's in multiprocess mode."""
        for sink in self._sinks:
            sink.refresh()
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
            registry, path=str(self.multiprocess_dir)
        )
        return generate_latest(registry)

    def process_exited(self) -> None:
        """In multiprocess mode, drop this worker's live gauges."""
        if self.multiprocess_dir is not None:
            multiprocess.mark_process_dead(  # type: ignore[no-untyped-call]
                os.getpid(), str(self.multiprocess_dir)
            )


class SinkMetrics:
    """A sink listener recording one log file's batches (once per batch, never per line)."""

    def __init__(self, metrics: Metrics, sink: str) -> None:
        self._metrics = metrics
        self._up = metrics.sink_up.labels(sink)
        self._failed = metrics.failed.labels(sink)
        self._depth = metrics.queue_depth.labels(sink)
        self._held: Callable[[], int] = lambda: 0
        self._up.set(1)

    def track(self, held: Callable[[], int]) -> None:
        """Read the sink's held lines from ``held`` (at each batch, and at each scrape)."""
        self._held = held

    def refresh(self) -> None:
        self._depth.set(self._held())

    def written(self, entries: Sequence[Entry], attempts: int, seconds: float) -> None:
        self._metrics.written.inc(len(entries))
        self._metrics.batch_size.observe(len(entries))
        self._metrics.write_seconds.observe(seconds)
        self._up.set(1)
        self.refresh()

    def failed(self, entries: Sequence[Entry], error: str, attempts: int) -> None:
        self._failed.inc()
        self._up.set(0)
        self.refresh()


class HttpMetrics:
    """ASGI middleware: count and time every HTTP request by route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path_format", _UNMATCHED)
            elapsed = time.perf_counter() - started
            self.metrics.observe_http(template, scope["method"], status, elapsed)
