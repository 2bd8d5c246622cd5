"""The worker (``NOTIFY_BACKEND=redis``): takes batches of lines from the Redis stream and
writes them with the same file sinks, and the same settings, as the local backend.

Run it with ``make worker``, or on any machine that has the project installed with the
``redis`` extra and the same ``NOTIFY_*`` settings::

    taskiq worker service.worker:broker --workers 1

``broker`` is built from the environment when taskiq first asks for it; importing this module
does nothing else.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

from taskiq import Context, TaskiqDepends, TaskiqEvents, TaskiqState

from config import Settings
from service.broker import TASK_NAME, NotificationBroker, build_broker
from service.lifespan import StartupError, file_sink_options
from service.redis_ledger import RedisLedger
from service.services.delivery import DeliveryService
from service.sinks.file import FileSink, FileSinks

__all__ = ["Worker", "build_worker"]

logger = logging.getLogger("service.worker")


class Worker:
    """A worker process's resources: its file sinks and the ledger, and what it does with a
    delivered batch."""

    def __init__(self, settings: Settings, broker: NotificationBroker) -> None:
        options = file_sink_options(settings, waiting=True)

        def file_sink(path: Path) -> FileSink:
            return FileSink(path, options, spool_path=settings.spool_for(path))

        self.sinks = FileSinks(file_sink)
        self.ledger = RedisLedger(
            broker.redis(),
            settings.redis_stream,
            status_ttl=settings.status_ttl,
            idempotency_ttl=settings.idempotency_ttl,
        )
        self.delivery = DeliveryService(
            self.sinks.for_path(settings.log_path),
            self.sinks.for_path(settings.effective_query_log_path),
            self.ledger,
            # Give up on a batch well before Redis hands it to another worker.
            timeout=settings.redis_idle_timeout / 2,
        )
        self._stream = settings.redis_stream

    async def start(self, state: TaskiqState) -> None:
        for sink in self.sinks:
            try:
                await sink.start()
            except OSError as exc:
                await self.sinks.aclose()
                raise StartupError(f"cannot open log file {sink.path}: {exc.strerror}") from None
        paths = ", ".join(str(sink.path) for sink in self.sinks)
        logger.info("worker writing redis stream %s to %s", self._stream, paths)

    async def stop(self, state: TaskiqState) -> None:
        await self.sinks.aclose()


def build_worker(settings: Settings) -> NotificationBroker:
    """The broker of a worker process, with the task that writes a batch registered."""
    broker = build_broker(settings)
    worker = Worker(settings, broker)

    async def write_lines(batch: list[Any], context: Annotated[Context, TaskiqDepends()]) -> None:
        """Write a batch of lines; acknowledge it only once they are in the log."""
        if await worker.delivery.deliver(batch):
            await context.ack()

    broker.register_task(write_lines, task_name=TASK_NAME, ack_type="manual")
    broker.add_event_handler(TaskiqEvents.WORKER_STARTUP, worker.start)
    broker.add_event_handler(TaskiqEvents.WORKER_SHUTDOWN, worker.stop)
    return broker


def __getattr__(name: str) -> NotificationBroker:
    # `taskiq worker service.worker:broker` looks `broker` up: build it then, once.
    if name == "broker":
        from service.main import configure_logging, settings_or_exit

        settings = settings_or_exit()
        configure_logging(settings.log_level)
        # taskiq logs every task it runs at INFO: one line per batch is noise here.
        logging.getLogger("taskiq.receiver.receiver").setLevel(logging.WARNING)
        broker = build_worker(settings)
        globals()["broker"] = broker
        return broker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
