"""Resources of one process: built by ``create_app``, opened and closed by the lifespan."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from starlette.types import Message, Send

from config import Settings
from service.metrics import Metrics
from service.records import RENDERERS
from service.services import NotificationService
from service.sinks.base import Listeners, Sink
from service.sinks.file import FileSink, FileSinkOptions, FileSinks, RetryPolicy
from service.sinks.queue import QueueSink, QueueSinkOptions
from service.status import Idempotency, Ledger, LocalLedger, StatusStore

__all__ = [
    "Runtime",
    "StartupError",
    "file_sink_options",
    "one_line_startup_errors",
    "os_error_reason",
    "start_sinks",
]

logger = logging.getLogger("service")


class StartupError(Exception):
    """The service cannot start; ``str()`` is the one line to show the operator."""


def file_sink_options(settings: Settings, *, waiting: bool) -> FileSinkOptions:
    """How file sinks behave under ``settings``; ``waiting`` when every line's caller waits
    for its write (``NOTIFY_ACK=write``, or a worker): no linger, and refuse while failing."""
    return FileSinkOptions(
        queue_size=settings.queue_size,
        batch_size=settings.batch_size,
        batch_delay=0.0 if waiting else settings.batch_delay,
        drain_timeout=settings.shutdown_timeout,
        retry=RetryPolicy(initial=settings.retry_initial, maximum=settings.retry_max),
        fsync=settings.fsync,
        fsync_interval=settings.fsync_interval,
        rotate_bytes=settings.rotate_bytes,
        rotate_keep=settings.rotate_keep,
        check_interval=settings.file_check_interval,
        refuse_while_failing=waiting,
    )


class Runtime:
    """Everything long-lived: the sinks and the services that write to them.

    Built without I/O in ``create_app`` so routers can bind the services when they are built;
    the sinks are opened when the lifespan starts and drained and closed when it ends. With
    ``NOTIFY_BACKEND=redis`` the one sink is a queue sink handing lines to Redis, and worker
    processes (``service.worker``) run the file sinks.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.statuses = statuses = StatusStore(settings.status_max_entries, settings.status_ttl)
        self.metrics = metrics = Metrics(settings.prometheus_multiproc_dir)
        self.sinks: list[FileSink | QueueSink] = []
        self._closers: list[Callable[[], Awaitable[None]]] = []  # after the sinks, at shutdown
        if settings.backend == "redis":
            self.notifications = self._queue_backend()
            return

        def file_sink(path: Path) -> FileSink:
            sink_metrics = metrics.for_sink(str(path))
            listeners = Listeners(statuses, sink_metrics)
            options = file_sink_options(settings, waiting=settings.ack == "write")
            sink = FileSink(path, options, spool_path=settings.spool_for(path), listener=listeners)
            sink_metrics.track(lambda: sink.held)
            return sink

        files = FileSinks(file_sink)
        notifications = files.for_path(settings.log_path)
        queries = files.for_path(settings.effective_query_log_path)
        self.sinks.extend(files)
        self.notifications = self._service(notifications, queries, self._local_ledger())

    def _service(self, notifications: Sink, queries: Sink, ledger: Ledger) -> NotificationService:
        settings = self.settings
        return NotificationService(
            notifications=notifications,
            queries=queries,
            statuses=self.statuses,
            ledger=ledger,
            render=RENDERERS[settings.log_format],
            on_accept=self.metrics.count_accepted,
            ack_timeout=settings.ack_timeout,
        )

    def _local_ledger(self) -> LocalLedger:
        settings = self.settings
        keys = Idempotency(settings.status_max_entries, settings.idempotency_ttl)
        return LocalLedger(self.statuses, keys)

    def _queue_backend(self) -> NotificationService:
        # Imported here: the Redis packages are an optional extra, needed only for this backend.
        from service.broker import RedisPublisher, build_broker
        from service.redis_ledger import RedisLedger

        settings = self.settings
        broker = build_broker(settings)
        self._closers.append(broker.connection_pool.disconnect)
        ledger = RedisLedger(
            broker.redis(),
            settings.redis_stream,
            status_ttl=settings.status_ttl,
            idempotency_ttl=settings.idempotency_ttl,
            local=self.statuses,
        )
        options = QueueSinkOptions(
            queue_size=settings.queue_size,
            batch_size=settings.batch_size,
            batch_delay=settings.batch_delay if settings.ack == "background" else 0.0,
            drain_timeout=settings.shutdown_timeout,
            retry=RetryPolicy(initial=settings.retry_initial, maximum=settings.retry_max),
            check_interval=settings.file_check_interval,
        )
        queue = QueueSink(
            RedisPublisher(broker, ledger.queued), options, spool_path=settings.queue_spool()
        )
        self.metrics.for_sink(queue.health().name).track(lambda: queue.held)
        self.sinks.append(queue)
        return self._service(queue.lane("notification"), queue.lane("query"), ledger)

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        started = await start_sinks(self.sinks)
        logger.info("writing notifications to %s", ", ".join(_describe(sink) for sink in started))
        # Everything built so far lives as long as the process: move it out of the collector's
        # generations so full collections stop re-scanning it (about 60k objects; measured in
        # bench/, this made GC time per request 3x smaller).
        gc.freeze()
        try:
            yield
        finally:
            await asyncio.gather(*(sink.aclose() for sink in started))
            for close in self._closers:
                await close()
            self.metrics.process_exited()


async def start_sinks(sinks: Iterable[FileSink | QueueSink]) -> list[FileSink | QueueSink]:
    """Start every sink, in order; if one cannot start, close those started and raise
    ``StartupError`` with the one line naming the file and the reason."""
    started: list[FileSink | QueueSink] = []
    for sink in sinks:
        try:
            await sink.start()
        except (OSError, ValueError) as exc:
            await asyncio.gather(*(opened.aclose() for opened in started))
            raise StartupError(_start_failure(sink, exc)) from None
        started.append(sink)
    return started


def _describe(sink: FileSink | QueueSink) -> str:
    return str(sink.path) if isinstance(sink, FileSink) else sink.health().name


def _start_failure(sink: FileSink | QueueSink, exc: OSError | ValueError) -> str:
    if isinstance(sink, FileSink):
        reason = os_error_reason(exc, sink.path) if isinstance(exc, OSError) else str(exc)
        return f"cannot open log file {sink.path}: {reason}"
    reason = os_error_reason(exc, sink.spool_path) if isinstance(exc, OSError) else str(exc)
    return f"cannot read the queue spool {sink.spool_path}: {reason}"


def one_line_startup_errors(send: Send) -> Send:
    """Wrap a lifespan ``send`` so that a ``StartupError`` is reported as its one line.

    Starlette reports a failed startup with the whole traceback; for an operator's error such
    as an unwritable log path, the line naming the path and the reason is all that helps.
    """

    async def send_one_line(message: Message) -> None:
        text = message.get("message", "")
        if message["type"] == "lifespan.startup.failed" and text:
            last = text.strip().splitlines()[-1]
            prefix = f"{StartupError.__module__}.{StartupError.__qualname__}: "
            if last.startswith(prefix):
                message = {**message, "message": last.removeprefix(prefix)}
        await send(message)

    return send_one_line


def os_error_reason(exc: OSError, path: Path) -> str:
    """Why opening ``path`` failed, naming the file at fault when it is another one."""
    reason = exc.strerror or str(exc)
    if exc.filename is not None and os.fspath(exc.filename) != os.fspath(path):
        return f"{reason} ({exc.filename})"
    return reason
