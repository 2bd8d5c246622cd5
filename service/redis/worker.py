"""The worker (``NOTIFY_BACKEND=redis``): takes batches of lines from the Redis stream and
writes them with the same file sinks, and the same settings, as the local backend.

Run it with ``make worker``, or on any machine that has the project installed with the
``redis`` extra and the same ``NOTIFY_*`` settings::

    python -m service.redis.worker          # checks settings and log paths, then taskiq's worker
    taskiq worker service.redis.worker:broker --workers 1   # taskiq's own command, unchecked

``python -m service.redis.worker`` stops at once, with one line, when a setting is invalid or a log
cannot be opened. taskiq's command starts the worker in a child process and restarts it every
time it dies, so there such a worker would retry for ever instead of failing.

``broker`` is built from the environment when taskiq first asks for it; importing this module
does nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from taskiq import Context, TaskiqDepends, TaskiqEvents, TaskiqState
from taskiq.cli.worker.args import WorkerArgs
from taskiq.cli.worker.run import run_worker

from config import Settings, settings_or_exit
from service.channels.base import Channel
from service.channels.registry import lease_seconds
from service.logs import configure_logging
from service.metrics import Metrics
from service.outbox.delivery import OutboxDepth, dispatchers
from service.outbox.dispatcher import Dispatcher
from service.outbox.redis import RedisOutbox
from service.records import Kind
from service.redis.broker import TASK_NAME, NotificationBroker, build_broker
from service.redis.delivery import DeliveryService
from service.redis.ledger import RedisLedger
from service.redis.monitor import WorkerMonitor, monitor_app
from service.redis.writes import WriteLedger
from service.runtime import build_delivery_channels, check_spool_places, log_sinks, start_sinks
from service.sinks.core import BatchSink
from service.sinks.file import LogFile
from service.sinks.fs import os_error_reason

__all__ = ["Worker", "build_worker", "main"]

logger = logging.getLogger("service.redis.worker")


class Worker:
    """A worker process's resources, built when the worker starts (on its event loop): its
    file sinks and what it does with a delivered batch; and the ledger, in Redis."""

    def __init__(self, settings: Settings, broker: NotificationBroker) -> None:
        self._settings = settings
        self.ledger = RedisLedger(
            broker.redis(),
            settings.redis_stream,
            status_ttl=settings.status_ttl,
            idempotency_ttl=settings.idempotency_ttl,
        )
        # Where each write goes, so that a batch taken over is not written twice.
        self.writes = WriteLedger(broker.redis(), settings.redis_stream, ttl=settings.status_ttl)
        self._sinks: list[BatchSink] = []
        self._delivery: DeliveryService | None = None
        self.metrics = Metrics()  # this process's write side: the local backend's names
        self._monitor: WorkerMonitor | None = None
        self._redis = broker.redis()
        self._channels: list[Channel] = []
        self._dispatchers: list[Dispatcher] = []
        self._counter: OutboxDepth | None = None

    @property
    def delivery(self) -> DeliveryService:
        if self._delivery is None:
            raise RuntimeError("the worker has not started")
        return self._delivery

    async def start(self, state: TaskiqState) -> None:
        settings = self._settings
        await check_spool_places(settings)
        files = log_sinks(settings, self.metrics, waiting=True, guard=self.writes)
        notifications = files.for_path(settings.log_path)
        queries = files.for_path(settings.effective_query_log_path)
        logs: dict[Kind, LogFile] = {}
        kinds: tuple[tuple[Kind, BatchSink], ...] = (
            ("notification", notifications),
            ("query", queries),
        )
        for kind, sink in kinds:
            if isinstance(sink.target, LogFile):
                logs[kind] = sink.target
        self._delivery = DeliveryService(
            notifications,
            queries,
            self.ledger,
            # Give up on a batch well before Redis hands it to another worker.
            timeout=settings.redis_idle_timeout / 2,
            files=logs,
            writes=self.writes,
        )
        self._sinks = list(files)
        await start_sinks(self._sinks)
        channels = build_delivery_channels(settings)
        if channels:
            await self._start_deliveries(channels)
        if settings.worker_port:
            sinks = self._sinks
            app = monitor_app(
                self.metrics,
                lambda: [sink.health() for sink in sinks],
                settings.redis_url,
                settings.redis_timeout,
            )
            self._monitor = WorkerMonitor(app, settings.worker_host, settings.worker_port)
            self._monitor.start()
        paths = ", ".join(sink.target.name for sink in self._sinks)
        logger.info("worker writing redis stream %s to %s", settings.redis_stream, paths)

    async def _start_deliveries(self, channels: list[Channel]) -> None:
        """Deliver the outbox in Redis: a dispatcher per channel (email, each webhook URL),
        as the API does with the local backend."""
        settings = self._settings
        self._channels = channels
        outbox = RedisOutbox(
            self._redis,
            settings.redis_stream,
            lease_seconds=lease_seconds(channels),
            ttl=settings.status_ttl,
        )
        await outbox.open()  # gives back at once the leases of this machine's dead workers
        counter = self._counter = OutboxDepth(
            outbox, settings.file_check_interval, keep_delivered=settings.status_ttl
        )
        await counter.start()
        self.metrics.track_outbox(lambda: counter.depth)
        self._dispatchers = dispatchers(settings, outbox, channels, self.metrics.deliveries)
        for dispatcher in self._dispatchers:
            await dispatcher.start()
        targets = ", ".join(f"{channel.target} as {channel.name}" for channel in channels)
        logger.info("worker delivering to %s", targets)

    async def stop(self, state: TaskiqState) -> None:
        if self._monitor is not None:
            await asyncio.to_thread(self._monitor.stop)
            self._monitor = None
        for dispatcher in self._dispatchers:  # claim nothing more; sends in flight finish
            await dispatcher.aclose()
        if self._counter is not None:
            await self._counter.aclose()
        for channel in self._channels:
            await channel.aclose()
        self._dispatchers, self._channels, self._counter = [], [], None
        for sink in self._sinks:
            await sink.aclose()
        self._sinks, self._delivery = [], None


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


def _check_log(path: Path) -> None:
    """Open ``path`` for appending as the file sink will (making its directories), or raise
    ``OSError``. Runs before any event loop: this is a command-line check."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o644))


def main(argv: Sequence[str] = ()) -> int:
    """``python -m service.redis.worker [taskiq worker options]``: check, then run one."""
    settings = settings_or_exit()
    for path in dict.fromkeys([settings.log_path, settings.effective_query_log_path]):
        try:
            _check_log(path)
        except OSError as exc:
            reason = os_error_reason(exc, path)
            raise SystemExit(f"error: cannot open log file {path}: {reason}") from None
    args = WorkerArgs.from_cli(["service.redis.worker:broker", "--workers", "1", *argv])
    return run_worker(args) or 0


def __getattr__(name: str) -> NotificationBroker:
    # `taskiq worker service.redis.worker:broker` looks `broker` up: build it then, once.
    if name == "broker":
        settings = settings_or_exit()
        configure_logging(settings.log_level, json_lines=settings.log_json)
        # taskiq logs every task it runs at INFO: one line per batch is noise here.
        logging.getLogger("taskiq.receiver.receiver").setLevel(logging.WARNING)
        broker = build_worker(settings)
        globals()["broker"] = broker
        return broker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
