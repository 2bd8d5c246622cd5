"""Resources of one process: built by ``create_app``, opened and closed by the lifespan."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from starlette.types import Message, Send

from config import Settings
from service.metrics import Metrics
from service.records import RENDERERS
from service.services import NotificationService
from service.sinks.base import Listeners
from service.sinks.file import FileSink, FileSinkOptions, FileSinks, RetryPolicy
from service.status import Idempotency, StatusStore

__all__ = ["Runtime", "StartupError", "one_line_startup_errors"]

logger = logging.getLogger("service")


class StartupError(Exception):
    """The service cannot start; ``str()`` is the one line to show the operator."""


class Runtime:
    """Everything long-lived: the sinks and the services that write to them.

    Built without I/O in ``create_app`` so routers can bind the services when they are built;
    the files are opened when the lifespan starts and drained and closed when it ends.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        options = FileSinkOptions(
            queue_size=settings.queue_size,
            batch_size=settings.batch_size,
            batch_delay=settings.batch_delay if settings.ack == "background" else 0.0,
            drain_timeout=settings.shutdown_timeout,
            retry=RetryPolicy(initial=settings.retry_initial, maximum=settings.retry_max),
            fsync=settings.fsync,
            fsync_interval=settings.fsync_interval,
            rotate_bytes=settings.rotate_bytes,
            rotate_keep=settings.rotate_keep,
            check_interval=settings.file_check_interval,
            refuse_while_failing=settings.ack == "write",
        )
        statuses = StatusStore(settings.status_max_entries, settings.status_ttl)
        self.metrics = metrics = Metrics(settings.prometheus_multiproc_dir)

        def file_sink(path: Path) -> FileSink:
            sink_metrics = metrics.for_sink(str(path))
            listeners = Listeners(statuses, sink_metrics)
            sink = FileSink(path, options, spool_path=settings.spool_for(path), listener=listeners)
            sink_metrics.track(lambda: sink.held)
            return sink

        self.sinks = FileSinks(file_sink)
        self.notifications = NotificationService(
            notifications=self.sinks.for_path(settings.log_path),
            queries=self.sinks.for_path(settings.effective_query_log_path),
            statuses=statuses,
            idempotency=Idempotency(settings.status_max_entries, settings.idempotency_ttl),
            render=RENDERERS[settings.log_format],
            on_accept=metrics.accepted.inc,
            ack_timeout=settings.ack_timeout,
        )

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        for sink in self.sinks:
            try:
                await sink.start()
            except OSError as exc:
                await self.sinks.aclose()
                reason = _reason(exc, sink.path)
                raise StartupError(f"cannot open log file {sink.path}: {reason}") from None
        paths = ", ".join(str(sink.path) for sink in self.sinks)
        logger.info("writing notifications to %s", paths)
        # Everything built so far lives as long as the process: move it out of the collector's
        # generations so full collections stop re-scanning it (about 60k objects; measured in
        # bench/, this made GC time per request 3x smaller).
        gc.freeze()
        try:
            yield
        finally:
            await self.sinks.aclose()
            self.metrics.process_exited()


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


def _reason(exc: OSError, path: Path) -> str:
    reason = exc.strerror or str(exc)
    if exc.filename is not None and os.fspath(exc.filename) != os.fspath(path):
        return f"{reason} ({exc.filename})"
    return reason
