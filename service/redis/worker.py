"""``notify-worker`` (also ``python -m service.redis.worker``): a worker of the Redis backend
(``NOTIFY_BACKEND=redis``). It takes batches of lines from the Redis stream and writes them
with the same file sinks, and the same settings, as the local backend; with email or webhooks
on, it also delivers the outbox in Redis.

Run it with ``make worker``, or on any machine that has the project installed with the
``redis`` extra and the same ``NOTIFY_*`` settings. It stops at once, with one line, when a
setting is invalid or a log cannot be opened. Otherwise it runs until SIGTERM or SIGINT, then
finishes the batches it is writing, closes its logs and channels, and exits 0.

Its loop (``consume``) reads up to ``BATCHES_AT_ONCE`` batches (``service.redis.stream``:
new ones, and on a timer those a dead worker left), writes them together (their lines share
the log's writes), and acknowledges those written. A batch that was not written (the log
failing, a write longer than half the idle timeout) stays pending in Redis and is taken over
later, by this worker or another. While Redis cannot be reached the loop backs off and reads
again, with one log line when that starts and one when it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from redis.exceptions import RedisError

from config import Settings, settings_help, settings_or_exit
from service.channels.base import Channel
from service.channels.registry import lease_seconds
from service.logs import configure_logging
from service.metrics import Metrics
from service.outbox.delivery import OutboxDepth, close_dispatchers, dispatchers
from service.outbox.redis import RedisOutbox
from service.records import Kind
from service.redis.delivery import DeliveryService
from service.redis.errors import describe_redis_error
from service.redis.ledger import RedisLedger
from service.redis.monitor import WorkerMonitor, monitor_app
from service.redis.stream import Entry, RedisStream, StreamReader
from service.redis.writes import WriteLedger
from service.retry import Backoff, Episode
from service.runtime import (
    StartupError,
    build_delivery_channels,
    check_spool_places,
    log_sinks,
    start_sinks,
)
from service.sinks.core import BatchSink
from service.sinks.file import LogFile
from service.sinks.fs import os_error_reason, process_token
from service.tasks import run_main

__all__ = ["BATCHES_AT_ONCE", "Worker", "consume", "main", "parser", "run"]

logger = logging.getLogger("service.redis.worker")

BATCHES_AT_ONCE = 100
"""The most batches a worker reads, and writes, at a time."""


class Worker:
    """What a worker process owns: its file sinks and what it does with a batch
    (``delivery``); the statuses and write intents in Redis; with email or webhooks on, the
    channels and a dispatcher each; with ``NOTIFY_WORKER_PORT``, its monitor. An async context
    manager: entering starts them (``StartupError`` if they cannot be), leaving stops them in
    reverse: the monitor, the dispatchers (their sends in flight finish), the channels, the
    logs."""

    def __init__(self, settings: Settings, stream: RedisStream) -> None:
        self._settings = settings
        self._redis = stream.redis
        self.metrics = Metrics()  # this process's write side: the local backend's names
        ledger = RedisLedger(
            stream.redis,
            settings.redis_stream,
            status_ttl=settings.status_ttl,
            idempotency_ttl=settings.idempotency_ttl,
        )
        # Where each write goes, so that a batch taken over is not written twice.
        writes = WriteLedger(stream.redis, settings.redis_stream, ttl=settings.status_ttl)
        files = log_sinks(settings, self.metrics, waiting=True, guard=writes)
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
        self._sinks = list(files)
        self.delivery = DeliveryService(
            notifications,
            queries,
            ledger,
            # Give up on a batch well before Redis hands it to another worker.
            timeout=settings.redis_idle_timeout / 2,
            files=logs,
            writes=writes,
        )
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Worker:
        try:
            await self._start(self._stack)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    async def _start(self, stack: contextlib.AsyncExitStack) -> None:
        settings = self._settings
        await check_spool_places(settings)
        sinks = self._sinks
        await start_sinks(sinks)
        stack.push_async_callback(self._close_sinks)
        channels = build_delivery_channels(settings)
        if channels:
            await self._start_deliveries(channels, stack)
        if settings.worker_port:
            app = monitor_app(
                self.metrics,
                lambda: [sink.health() for sink in sinks],
                settings.redis_url,
                settings.redis_timeout,
            )
            monitor = WorkerMonitor(app, settings.worker_host, settings.worker_port)
            monitor.start()
            stack.push_async_callback(asyncio.to_thread, monitor.stop)
        paths = ", ".join(sink.target.name for sink in sinks)
        logger.info("worker writing redis stream %s to %s", settings.redis_stream, paths)

    async def _start_deliveries(
        self, channels: list[Channel], stack: contextlib.AsyncExitStack
    ) -> None:
        """Deliver the outbox in Redis: a dispatcher per channel (email, each webhook URL),
        as the API does with the local backend."""
        settings = self._settings
        for channel in channels:  # closed after their dispatchers have stopped
            stack.push_async_callback(channel.aclose)
        outbox = RedisOutbox(
            self._redis,
            settings.redis_stream,
            lease_seconds=lease_seconds(channels),
            ttl=settings.status_ttl,
        )
        await outbox.open()  # gives back at once the leases of this machine's dead workers
        counter = OutboxDepth(
            outbox, settings.file_check_interval, keep_delivered=settings.status_ttl
        )
        await counter.start()
        stack.push_async_callback(counter.aclose)
        self.metrics.track_outbox(lambda: counter.depth)
        started = dispatchers(settings, outbox, channels, self.metrics.deliveries)
        stack.push_async_callback(close_dispatchers, started)
        for dispatcher in started:
            await dispatcher.start()
        targets = ", ".join(f"{channel.target} as {channel.name}" for channel in channels)
        logger.info("worker delivering to %s", targets)

    async def _close_sinks(self) -> None:
        for sink in self._sinks:
            await sink.aclose()


async def consume(
    reader: StreamReader, delivery: DeliveryService, stopping: asyncio.Event, backoff: Backoff
) -> None:
    """Read, write and acknowledge batches until ``stopping`` is set; the batches read by
    then are written (or left pending) first."""
    reading = Episode(
        logger,
        "redis",
        failing="cannot read the stream: {error}; retrying",
        recovered="reading the stream again after {seconds:.1f} s",
    )
    failures = 0
    while not stopping.is_set():
        try:
            entries = await reader.read(BATCHES_AT_ONCE)
        except (RedisError, OSError) as exc:
            reading.fail(describe_redis_error(exc))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff.delay(failures)):
                    await stopping.wait()
            failures += 1
            continue
        if reading.recover() is not None:
            failures = 0
        if entries:
            await _write(reader, delivery, entries)


async def _write(reader: StreamReader, delivery: DeliveryService, entries: list[Entry]) -> None:
    """Write the batches together; acknowledge (and delete) those written."""
    outcomes = await asyncio.gather(
        *(delivery.deliver(entry.records) for entry in entries), return_exceptions=True
    )
    written: list[bytes] = []
    for entry, outcome in zip(entries, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            logger.error("a batch failed to be written; left for later", exc_info=outcome)
        elif outcome:
            written.append(entry.id)
    if not written:
        return
    try:
        await reader.ack(written)
    except (RedisError, OSError) as exc:  # another worker takes them over and skips the lines
        logger.error(
            "redis: cannot acknowledge %d written batches: %s",
            len(written),
            describe_redis_error(exc),
        )


async def run(settings: Settings) -> None:
    """Work until SIGTERM or SIGINT, then finish the batches under way and return."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    stream = RedisStream(settings)
    try:
        async with Worker(settings, stream) as worker:
            reader = StreamReader(
                stream,
                process_token(),  # the consumer's name: machine, process, and a random part
                idle_timeout=settings.redis_idle_timeout,
                reclaim_interval=settings.redis_reclaim_interval,
            )
            backoff = Backoff(initial=0.05, maximum=settings.retry_max)
            await consume(reader, worker.delivery, stopping, backoff)
            logger.info("worker stopping: closing its logs and channels")
    finally:
        await stream.aclose()
    logger.info("worker stopped")


def parser() -> argparse.ArgumentParser:
    """The command line: ``--help``; everything else is a setting."""
    return argparse.ArgumentParser(
        prog="notify-worker",
        description="A worker of the Redis backend (NOTIFY_BACKEND=redis): reads batches of "
        "lines from the stream NOTIFY_REDIS_STREAM (consumer group 'writers'), writes them to "
        "NOTIFY_LOG_PATH and NOTIFY_QUERY_LOG_PATH, and acknowledges each batch once it is "
        "written; takes over the batches of a worker that died; with email or webhooks on, "
        "delivers the outbox in Redis. Start as many as needed, on any machine, with the API's "
        "settings. Exits 1 at once if a setting is invalid or a log cannot be opened; runs "
        "until SIGTERM or SIGINT, then finishes the batches it is writing and exits 0.",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _check_log(path: Path) -> None:
    """Open ``path`` for appending as the file sink will (making its directories), or raise
    ``OSError``. Runs before any event loop: this is a command-line check."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o644))


def main(argv: Sequence[str] | None = None) -> int:
    """``notify-worker``: check the settings and the logs, then work."""
    parser().parse_args(argv)
    settings = settings_or_exit()
    for path in dict.fromkeys([settings.log_path, settings.effective_query_log_path]):
        try:
            _check_log(path)
        except OSError as exc:
            reason = os_error_reason(exc, path)
            raise SystemExit(f"error: cannot open log file {path}: {reason}") from None
    configure_logging(settings.log_level, json_lines=settings.log_json)
    try:
        run_main(run(settings))  # uvloop when installed, as taskiq's worker ran on before
    except StartupError as exc:
        raise SystemExit(f"error: {exc}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
