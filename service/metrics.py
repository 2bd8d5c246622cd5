"""Prometheus metrics, from ``prometheus-client`` (no hand-written exposition).

Each app has its own registry (so tests can build many apps). With ``PROMETHEUS_MULTIPROC_DIR``
set (``uvicorn --workers N``), prometheus-client keeps the values in files in that directory
and ``/metrics`` aggregates every worker's, as its multiprocess mode documents.

On the request path there is one count per accepted notification and one middleware
observation per request; everything about batches is recorded by the writer, once per batch.
In a single process those per-request numbers are plain Python numbers (``Tallies``), handed to
prometheus-client as metric families when ``/metrics`` is scraped (its custom-collector API):
a prometheus-client ``Counter.inc`` plus ``Histogram.observe``, with their locks, cost about
four times as much, on every request. In multiprocess mode the values must go through
prometheus-client's files, so there they are prometheus-client objects updated directly.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.records import Kind

__all__ = [
    "CONTENT_TYPE",
    "DeliveryMetrics",
    "DirectMetrics",
    "HttpMetrics",
    "Metrics",
    "SinkMetrics",
    "Tallies",
    "TemplatedRoute",
    "note_route",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
"""The methods HTTP defines (RFC 9110, PATCH): any other is counted as ``OTHER``, so that a
client cannot add series to ``/metrics`` by inventing methods (h11 passes any token)."""
_UNMATCHED = "<unmatched>"
_REJECTED_BY_STATUS = {
    401: "unauthorized",
    413: "too_large",
    422: "invalid",
    503: "unavailable",
}
_NOTIFY_ROUTE = "/send-notification/{email}"
_HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_ACCEPTED = ("notify_notifications_accepted", "Notifications accepted (answered 200).")
_HTTP_REQUESTS = ("notify_http_requests", "HTTP requests, by route, method and status.")
_HTTP_SECONDS = ("notify_http_request_seconds", "HTTP request latency, by route and method.")


class Metrics:
    """Every metric of one app."""

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        self.registry = registry = CollectorRegistry()
        self.written = Counter(
            "notify_notifications_written",
            "Notifications written to the log (found query lines are counted apart, in "
            "notify_lines_written_total).",
            registry=registry,
        )
        self.lines_written = Counter(
            "notify_lines_written",
            "Lines written to the log, by kind: notification, or query (found query: ...).",
            ["kind"],
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
        self.deliveries = DeliveryMetrics(registry)
        self.outbox_depth = Gauge(
            "notify_outbox_depth",
            "Deliveries pending in the outbox (queued or retrying), as last counted.",
            registry=registry,
            multiprocess_mode="max",
        )
        self._outbox_depth: Callable[[], int] | None = None
        self._sinks: dict[str, SinkMetrics] = {}
        self.per_request: Tallies | DirectMetrics
        if multiprocess_dir is None:
            self.per_request = Tallies()
            registry.register(self.per_request)
        else:
            self.per_request = DirectMetrics(registry)
        self.count_accepted = self.per_request.count_accepted
        self._observe_http = self.per_request.observe_http

    def for_sink(self, name: str) -> SinkMetrics:
        """The metrics of the sink ``name``: one per name, kept across lifespan runs (each run
        tells it, with ``track``, where its current sink's held lines are)."""
        sink = self._sinks.get(name)
        if sink is None:
            sink = self._sinks[name] = SinkMetrics(self, name)
        return sink

    def track_outbox(self, depth: Callable[[], int]) -> None:
        """Read the outbox's depth from ``depth`` at each scrape."""
        self._outbox_depth = depth

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        self._observe_http(route, method, status, seconds)
        if route == _NOTIFY_ROUTE and method == "POST" and status != 200:
            self.rejected.labels(_REJECTED_BY_STATUS.get(status, str(status))).inc()

    def exposition(self) -> bytes:
        """The text format: this process's registry, or every worker's in multiprocess mode."""
        for sink in self._sinks.values():
            sink.refresh()
        if self._outbox_depth is not None:
            self.outbox_depth.set(self._outbox_depth())
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


class _HttpTally:
    """Requests of one (route, method, status): how many, their total time, and how many fell
    in each latency bucket (not cumulative; the last one is +Inf)."""

    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.count = 0
        self.sum = 0.0
        self.buckets = [0] * (len(_HTTP_BUCKETS) + 1)


class Tallies:
    """The per-request metrics of one process as plain numbers; a prometheus-client collector,
    written as its documentation's "Custom Collectors" shows (``CounterMetricFamily``,
    ``HistogramMetricFamily`` and their ``add_metric``).

    ``collect`` gives the samples that ``DirectMetrics``'s prometheus-client objects give for
    the same observations: names, labels, buckets and sums (a test compares); not their
    ``_created`` series, which that API does not document.
    """

    def __init__(self) -> None:
        self.accepted = 0
        self._http: dict[tuple[str, str, int], _HttpTally] = {}

    def count_accepted(self) -> None:
        self.accepted += 1

    def track_outbox(self, depth: Callable[[], int]) -> None:
        """Read the outbox's depth from ``depth`` at each scrape."""
        self._outbox_depth = depth

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        tally = self._http.get((route, method, status))
        if tally is None:
            tally = self._http[(route, method, status)] = _HttpTally()
        tally.count += 1
        tally.sum += seconds
        tally.buckets[bisect_left(_HTTP_BUCKETS, seconds)] += 1  # le: bound >= seconds

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(*_ACCEPTED)
        yield CounterMetricFamily(*_HTTP_REQUESTS, labels=["route", "method", "status"])
        yield HistogramMetricFamily(*_HTTP_SECONDS, labels=["route", "method"])

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(*_ACCEPTED, value=self.accepted)
        requests = CounterMetricFamily(*_HTTP_REQUESTS, labels=["route", "method", "status"])
        by_route: dict[tuple[str, str], list[_HttpTally]] = {}
        for (route, method, status), tally in self._http.items():
            requests.add_metric([route, method, str(status)], tally.count)
            by_route.setdefault((route, method), []).append(tally)
        yield requests
        seconds = HistogramMetricFamily(*_HTTP_SECONDS, labels=["route", "method"])
        for (route, method), tallies in by_route.items():
            per_bucket = [sum(column) for column in zip(*(t.buckets for t in tallies), strict=True)]
            buckets, cumulative = [], 0
            for bound, count in zip((*_HTTP_BUCKETS, float("inf")), per_bucket, strict=True):
                cumulative += count
                buckets.append((_bucket_label(bound), float(cumulative)))
            seconds.add_metric([route, method], buckets, sum(t.sum for t in tallies))
        yield seconds


def _bucket_label(bound: float) -> str:
    """A bucket's ``le`` label: ``+Inf``, or Python's shortest form of the bound (``0.0005``,
    ``1.0``), as the text format takes any float; the same labels as prometheus-client's own
    histograms give these bounds (a test compares), so a series keeps its labels whether the
    service runs as one process or several."""
    return "+Inf" if bound == float("inf") else repr(bound)


class DirectMetrics:
    """The per-request metrics as prometheus-client objects (multiprocess mode)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.accepted = Counter(*_ACCEPTED, registry=registry)
        self.http_requests = Counter(
            *_HTTP_REQUESTS, ["route", "method", "status"], registry=registry
        )
        self.http_seconds = Histogram(
            *_HTTP_SECONDS, ["route", "method"], buckets=_HTTP_BUCKETS, registry=registry
        )
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def count_accepted(self) -> None:
        self.accepted.inc()

    def track_outbox(self, depth: Callable[[], int]) -> None:
        """Read the outbox's depth from ``depth`` at each scrape."""
        self._outbox_depth = depth

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:  # label lookups once per (route, method, status), not per request
            children = (
                self.http_requests.labels(route, method, str(status)),
                self.http_seconds.labels(route, method),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


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

    def written(
        self, ids: Sequence[str], attempts: int, seconds: float, kinds: Sequence[Kind] = ()
    ) -> None:
        notifications = kinds.count("notification") if kinds else len(ids)
        if notifications:
            self._metrics.written.inc(notifications)
        lines = self._metrics.lines_written
        if kinds:
            queries = len(kinds) - notifications
            if notifications:
                lines.labels("notification").inc(notifications)
            if queries:
                lines.labels("query").inc(queries)
        else:
            lines.labels("notification").inc(len(ids))
        self._metrics.batch_size.observe(len(ids))
        self._metrics.write_seconds.observe(seconds)
        self._up.set(1)
        self.refresh()

    def failed(self, ids: Sequence[str], error: str, attempts: int) -> None:
        self._failed.inc()
        self._up.set(0)
        self.refresh()


class DeliveryMetrics:
    """A delivery listener: outcomes per channel, and acknowledged-to-delivered latency."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._outcomes = Counter(
            "notify_deliveries",
            "Delivery outcomes by channel: delivered, retried (a temporary failure), dead.",
            ["channel", "outcome"],
            registry=registry,
        )
        self._seconds = Histogram(
            "notify_delivery_seconds",
            "From the notification's acknowledgement to its delivery, by channel.",
            ["channel"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 300, 3600),
            registry=registry,
        )
        self._disabled = Gauge(
            "notify_channel_disabled",
            "1 while a delivery channel is disabled (a webhook URL answered 410 Gone), else 0.",
            ["channel"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self._concurrency = Gauge(
            "notify_channel_concurrency",
            "A delivery channel's concurrency window: sends in flight at most now (summed over "
            "the processes that deliver it).",
            ["channel"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._delivered: dict[str, tuple[Counter, Histogram]] = {}
        """Each channel's delivered counter and latency histogram: label lookups once per
        channel, not per email (a fifth of what recording a delivery cost)."""

    def delivered(self, channel: str, seconds: float) -> None:
        children = self._delivered.get(channel)
        if children is None:
            children = self._delivered[channel] = (
                self._outcomes.labels(channel, "delivered"),
                self._seconds.labels(channel),
            )
        count, latency = children
        count.inc()
        latency.observe(seconds)

    def retried(self, channel: str) -> None:
        self._outcomes.labels(channel, "retried").inc()

    def dead(self, channel: str, count: int = 1) -> None:
        self._outcomes.labels(channel, "dead").inc(count)

    def disabled(self, channel: str, disabled: bool) -> None:
        self._disabled.labels(channel).set(1 if disabled else 0)

    def concurrency(self, channel: str, window: int) -> None:
        self._concurrency.labels(channel).set(window)


_ROUTE = "notify_route"
"""Where in a request's state the route notes its template for ``HttpMetrics``."""


def note_route(scope: Scope, template: str) -> None:
    """Tell ``HttpMetrics`` the route template the request of ``scope`` matched, in the
    request's state: the ASGI scope's ``state`` dict (the ASGI spec's per-request copy of the
    lifespan's state), which Starlette's documented ``request.state`` wraps. The dict itself
    rather than ``request.state``: that would make a ``State`` object (and, in the middleware,
    a ``Request``) for every request."""
    state = scope.get("state")
    if state is not None:
        state[_ROUTE] = template


class TemplatedRoute(APIRoute):
    """FastAPI's ``APIRoute`` that notes its path template for ``HttpMetrics`` before its
    handler runs (FastAPI's documented way for per-route behaviour: a custom ``APIRoute`` class,
    given to ``APIRouter(route_class=...)``). Noted first, so a request the route refuses
    (422, 413, 401) is counted under the route too."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        template = self.path_format

        async def handle_and_note(request: Request) -> Response:
            note_route(request.scope, template)
            return await handle(request)

        return handle_and_note


class HttpMetrics:
    """ASGI middleware: count and time every HTTP request by route template and status. The
    template is the one the route noted (``TemplatedRoute``, ``note_route``); a request no
    route took (404, 405) is ``<unmatched>``."""

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

        # Set first: where the lifespan's state is one dict for every request (asgi-lifespan's
        # test harness; the ASGI spec and uvicorn give each request a copy), no earlier
        # request's route is left in it.
        state = scope.get("state")
        if state is None:  # a server without lifespan state
            state = scope["state"] = {}
        state[_ROUTE] = _UNMATCHED
        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            template = state[_ROUTE]
            elapsed = time.perf_counter() - started
            method = scope["method"]  # a label: only the methods HTTP defines, else OTHER
            self.metrics.observe_http(
                template, method if method in _METHODS else "OTHER", status, elapsed
            )
