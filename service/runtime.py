"""What one lifespan run owns: built, started, drained and closed per run.

``create_app`` builds the app once; every run of its lifespan (uvicorn's start, each
``TestClient`` block, each ``--reload``) builds a new ``Runtime`` on its own event loop: the
sinks and their sender tasks, the status store, the Redis connections. Nothing loop-bound
outlives its run, so the same app starts again, any number of times.
"""

from __future__ import annotations

import asyncio
import logging
import stat
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from config import Settings
from service.channels.base import Channel
from service.channels.registry import build_channels, lease_seconds
from service.ledger.sqlite import SqliteLedger
from service.metrics import Metrics
from service.outbox.base import Outbox
from service.outbox.delivery import OutboxDepth, dispatchers
from service.outbox.dispatcher import Dispatcher
from service.outbox.load import LoopLoad
from service.outbox.sqlite import SqliteOutbox
from service.outbox.writer import OutboxIntake, outbox_sink
from service.records import RENDERERS
from service.retry import Backoff
from service.services import NotificationService
from service.services.health import HealthService
from service.sinks.base import Lines, Listeners, SinkListener, SinkUnavailable
from service.sinks.core import BatchOptions, BatchSink
from service.sinks.file import FileOptions, FileSinks, WriteGuard, file_sink
from service.sinks.fs import os_error_reason
from service.status import Ledger, Statuses, StatusStore

if TYPE_CHECKING:  # imported where it is used: the redis extra is optional
    from service.redis.stream import RedisStream

__all__ = [
    "Current",
    "Runtime",
    "StartupError",
    "batch_options",
    "build_delivery_channels",
    "check_spool_places",
    "file_options",
    "ledger_place",
    "log_sinks",
    "sqlite_outbox",
    "start_sinks",
]

logger = logging.getLogger("service")


class StartupError(Exception):
    """The service cannot start; ``str()`` is the one line to show the operator."""


def build_delivery_channels(settings: Settings) -> list[Channel]:
    """``build_channels``, with what stops it as a ``StartupError``."""
    try:
        return build_channels(settings)
    except ValueError as exc:
        raise StartupError(f"cannot start: {exc}") from None


def sqlite_outbox(settings: Settings, channels: Sequence[Channel]) -> SqliteOutbox:
    """The local backend's outbox (``NOTIFY_OUTBOX_PATH``) as every process that shares it
    opens it, the API and ``service.deliver`` alike: leased for ``channels``' longest attempt,
    each commit fsynced with ``NOTIFY_FSYNC=batch``."""
    return SqliteOutbox(
        settings.effective_outbox_path(),
        lease_seconds=lease_seconds(channels),
        durable=settings.fsync == "batch",
    )


def batch_options(
    settings: Settings, *, waiting: bool, linger: float | None = None
) -> BatchOptions:
    """How sinks batch under ``settings``; ``waiting`` when every line's caller waits for
    its delivery (``NOTIFY_ACK=write``, or a worker): no linger, and refuse while failing.
    Otherwise a batch lingers ``linger`` seconds for more (default ``NOTIFY_BATCH_DELAY``)."""
    return BatchOptions(
        queue_size=settings.queue_size,
        batch_size=settings.batch_size,
        batch_delay=0.0 if waiting else settings.batch_delay if linger is None else linger,
        drain_timeout=settings.shutdown_timeout,
        retry=Backoff(initial=settings.retry_initial, maximum=settings.retry_max),
        check_interval=settings.file_check_interval,
        refuse_while_failing=waiting,
    )


def file_options(settings: Settings) -> FileOptions:
    """How log files are written under ``settings``."""
    return FileOptions(
        fsync=settings.fsync,
        fsync_interval=settings.fsync_interval,
        rotate_bytes=settings.rotate_bytes,
        rotate_keep=settings.rotate_keep,
        check_interval=settings.file_check_interval,
    )


def log_sinks(
    settings: Settings,
    metrics: Metrics,
    *,
    waiting: bool,
    statuses: SinkListener | None = None,
    guard: WriteGuard | None = None,
) -> FileSinks:
    """The sinks of the log and the query log (one, when both paths are one file), each
    recorded in ``metrics`` and, when given, in ``statuses``; ``guard``: told of each write
    (a Redis worker's write intents)."""
    options = batch_options(settings, waiting=waiting)
    writing = file_options(settings)

    def make_sink(path: Path) -> BatchSink:
        sink_metrics = metrics.for_sink(str(path))
        listener = sink_metrics if statuses is None else Listeners(statuses, sink_metrics)
        sink = file_sink(
            path,
            options,
            writing,
            spool_path=settings.spool_for(path),
            listener=listener,
            guard=guard,
        )
        sink_metrics.track(lambda: sink.held)
        return sink

    files = FileSinks(make_sink)
    files.for_path(settings.log_path)
    files.for_path(settings.effective_query_log_path)
    return files


async def start_sinks(sinks: Sequence[BatchSink]) -> None:
    """Start every sink, in order; if one cannot start, close those started and raise
    ``StartupError`` with the one line naming what and why."""
    started: list[BatchSink] = []
    for sink in sinks:
        try:
            await sink.start()
        except (OSError, ValueError) as exc:
            await asyncio.gather(*(opened.aclose() for opened in started))
            description = sink.target.description
            if isinstance(exc, OSError):
                reason = os_error_reason(exc, Path(sink.target.name))
            else:
                reason = str(exc)
            raise StartupError(f"cannot open {description}: {reason}") from None
        started.append(sink)


def _spool_problem(settings: Settings) -> str | None:
    """Why a log path needs an explicit spool: it is not a regular file or a FIFO (a device
    such as ``/dev/full``, a socket), and its spool would go beside it (in ``/dev``)."""
    logs = [(settings.log_path, settings.spool_path is None)]
    if settings.query_log_path is not None and settings.query_log_path != settings.log_path:
        logs.append((settings.query_log_path, True))
    for path, default_spool in logs:
        try:
            mode = path.stat().st_mode
        except OSError:
            continue  # missing: made as a regular file; unreadable: the open says why
        special = stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISSOCK(mode)
        if default_spool and special:  # (a directory: the open says what is wrong)
            if path != settings.log_path:
                return (
                    f"NOTIFY_QUERY_LOG_PATH={path} is not a regular file or a FIFO, and its "
                    f"spool would be made beside it, in {path.parent}"
                )
            return (
                f"NOTIFY_LOG_PATH={path} is not a regular file or a FIFO: set "
                f"NOTIFY_SPOOL_PATH to a file for the lines not written by shutdown (none is "
                f"made in {path.parent})"
            )
    return None


def ledger_place(settings: Settings) -> Path:
    """Where the local ledger goes: ``NOTIFY_LEDGER_PATH``, or beside the log; for a log that
    is a device (``/dev/full``), ``<log name>.ledger`` in the spool's directory, which such a
    log needs set (nothing is made beside a device). Blocking (a ``stat``): run on a thread."""
    beside = settings.effective_ledger_path()
    if settings.ledger_path is not None or settings.spool_path is None:
        return beside
    try:
        mode = settings.log_path.stat().st_mode
    except OSError:
        return beside
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISSOCK(mode):
        return settings.spool_path.parent / (settings.log_path.name + ".ledger")
    return beside


async def check_spool_places(settings: Settings) -> None:
    """``StartupError`` when a log needs an explicit spool (see ``_spool_problem``)."""
    problem = await asyncio.to_thread(_spool_problem, settings)
    if problem is not None:
        raise StartupError(problem)


_NOT_RUNNING = (
    "the service is not running (its lifespan has not started): serve the app with uvicorn; "
    "in tests, enter its lifespan: 'with TestClient(app) as client:' (not a bare "
    "TestClient(app)), or httpx.AsyncClient inside asgi_lifespan.LifespanManager(app)"
)


class Current:
    """Which run is current: the one object the routes hold, built once per app. Each
    lifespan run sets its ``Runtime`` here while it runs and clears it at its end; nothing
    else is kept, so nothing of one run outlives it. The routes reach the run's services
    through it, and nothing else of the run."""

    def __init__(self) -> None:
        self._runtime: Runtime | None = None

    @property
    def runtime(self) -> Runtime:
        """The running runtime; ``SinkUnavailable`` (503) when no lifespan runs."""
        runtime = self._runtime
        if runtime is None:
            raise SinkUnavailable(_NOT_RUNNING)
        return runtime

    @property
    def notifications(self) -> NotificationService:
        """The running run's notification service (503 when none runs). Every request asks:
        one property, as ``runtime`` is, not two."""
        runtime = self._runtime
        if runtime is None:
            raise SinkUnavailable(_NOT_RUNNING)
        return runtime.notifications

    @property
    def health(self) -> HealthService:
        """The running run's health (503 when none runs)."""
        return self.runtime.health

    def set(self, runtime: Runtime | None) -> None:
        self._runtime = runtime


async def _nothing() -> None:
    """A step's closing that has nothing to do."""


_Step = tuple[Callable[[], Awaitable[None]] | None, Callable[[], Awaitable[object]]]
"""What to do to open one part of a run (None: nothing), and to close it."""


class Runtime:
    """Everything one run owns: the sinks, the services that write to them, the outbox and
    the dispatchers that deliver it, the statuses.

    An async context manager: entering opens the parts in order on an ``AsyncExitStack``
    (``StartupError`` if one cannot be opened, and those opened are closed again), leaving
    closes them in the reverse order: the dispatchers stop claiming and finish their sends,
    the sinks drain (or spool), then the outbox, the channels' connections and Redis close.
    With ``NOTIFY_BACKEND=redis`` the one log sink hands lines to a Redis stream, and worker
    processes (``service.redis.worker``) write the log and deliver. With
    ``NOTIFY_DELIVERY=external`` the local backend only adds to the outbox, and a delivery
    process (``service.deliver``) delivers.
    """

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.statuses = StatusStore(settings.status_max_entries, settings.status_ttl)
        self.sinks: list[BatchSink] = []
        self.dispatchers: list[Dispatcher] = []
        self.ledger: SqliteLedger | None = None
        """The local backend's statuses and Idempotency-Keys, shared by its processes. It
        opens after the log sinks, and closes after them, so their last outcomes are in it."""
        self._steps: list[_Step] = []
        """The parts' openings and closings, in the order they open (they close in reverse)."""
        self._stack = AsyncExitStack()
        self._load: LoopLoad | None = None
        """Whether requests saturate the event loop (local dispatchers step back then)."""
        self._stream: RedisStream | None = None
        if settings.backend == "redis":
            self._stream = self._redis_stream()
        self.channels = build_delivery_channels(settings)
        self._intake: OutboxIntake | None = None
        self._outbox: Outbox | None = None
        if self.channels:
            self._outbox_and_dispatchers()
        if settings.backend == "redis":
            self.notifications = self._redis_backend()
        else:
            self.notifications = self._local_backend()
        self._steps.append((self._start_sinks, self._close_sinks))
        if self.ledger is not None:  # opened once the logs are (their errors come first)
            self._steps.append((self.ledger.open, _nothing))
        for dispatcher in self.dispatchers:
            self._steps.append((dispatcher.start, dispatcher.aclose))
        self.health = HealthService(
            [*self.sinks, *([self.ledger] if self.ledger is not None else [])],
            self.dispatchers,
            outbox=self._outbox,
            elsewhere=() if self.dispatchers else self.channels,
        )

    async def __aenter__(self) -> Runtime:
        if self._stream is None:  # the local backend writes (and spools) the logs here
            await check_spool_places(self.settings)
        if self.ledger is not None:
            self.ledger.path = await asyncio.to_thread(ledger_place, self.settings)
        stack = self._stack
        try:
            for open_, close in self._steps:
                if open_ is not None:
                    try:
                        await open_()
                    except (OSError, ValueError) as exc:
                        raise StartupError(f"cannot start: {exc}") from None
                stack.push_async_callback(close)
        except BaseException:
            await stack.aclose()
            raise
        self._announce()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._stack.aclose()
        self.metrics.process_exited()

    def _announce(self) -> None:
        described = ", ".join(sink.target.name for sink in self.sinks)
        logger.info("writing notifications to %s", described)
        if self.settings.email_on and not self.settings.tokens:
            logger.warning(
                "email is on and NOTIFY_API_TOKENS is empty: anyone who can reach the API "
                "can send mail through it"
            )
        for channel in self.channels if self.dispatchers else ():
            logger.info("delivering notifications to %s as %s", channel.target, channel.name)
        if self._outbox is not None and self._stream is None and not self.dispatchers:
            names = ", ".join(channel.name for channel in self.channels)
            logger.info(
                "adding deliveries (%s) to the outbox %s; no dispatcher here: another process "
                "delivers them (NOTIFY_DELIVERY=external)",
                names,
                self.settings.effective_outbox_path(),
            )

    async def _start_sinks(self) -> None:
        await start_sinks(self.sinks)

    async def _close_sinks(self) -> None:
        await asyncio.gather(*(sink.aclose() for sink in self.sinks))

    def _service(
        self, notifications: Lines, queries: Lines, ledger: Ledger, statuses: Statuses
    ) -> NotificationService:
        settings = self.settings
        return NotificationService(
            deliveries=self._intake,
            outbox=self._outbox,
            channels=[channel.name for channel in self.channels],
            on_retry=self._wake_dispatchers if self._outbox is not None else None,
            notifications=notifications,
            queries=queries,
            statuses=statuses,
            ledger=ledger,
            render=RENDERERS[settings.log_format],
            on_accept=self.metrics.count_accepted,
            ack_timeout=settings.ack_timeout,
        )

    def _took_in(self, beyond: int) -> None:
        """The intake added a batch to the outbox (with ``beyond`` notifications more than its
        lines): work for the dispatchers, and a sign that the API is taking requests."""
        if self._intake is not None:
            self._intake.took_in(beyond)
        if self._load is not None:
            self._load.took_in()
        self._wake_dispatchers()

    def _wake_dispatchers(self) -> None:
        for dispatcher in self.dispatchers:
            dispatcher.wake()

    def _outbox_and_dispatchers(self) -> None:
        """The outbox, its intake sink (one row per channel for each notification, in one
        transaction), and, with the local backend and ``NOTIFY_DELIVERY=inline``, a dispatcher
        per channel. With ``external`` another process delivers (``service.deliver``); with
        Redis the outbox is in Redis and the workers deliver (``service.redis.worker``)."""
        settings, metrics, channels = self.settings, self.metrics, self.channels
        outbox: Outbox
        if self._stream is None:
            outbox = sqlite_outbox(settings, channels)
            outbox_path = outbox.path
            spool = outbox_path.with_name(outbox_path.name + ".spool")
        else:
            from service.outbox.redis import RedisOutbox  # the redis extra: only here

            outbox = RedisOutbox(
                self._stream.redis,
                settings.redis_stream,
                lease_seconds=lease_seconds(channels),
                ttl=settings.status_ttl,
            )
            spool = settings.queue_spool().with_name(settings.queue_spool().name + ".outbox")
        self._outbox = outbox
        self._steps.append((outbox.open, outbox.close))
        # The channels' connections close after their dispatchers (opened later) have stopped.
        self._steps += [(None, channel.aclose) for channel in channels]
        if self._stream is None and settings.delivery == "inline":
            load = self._load = LoopLoad(
                arriving=lambda: self._intake is not None and self._intake.arriving
            )
            self._steps.append((load.start, load.aclose))
            self.dispatchers = dispatchers(
                settings, outbox, channels, metrics.deliveries, api_busy=lambda: load.busy
            )
            for channel in channels:
                metrics.deliveries.disabled(channel.name, False)
        counter = OutboxDepth(
            outbox, settings.file_check_interval, keep_delivered=settings.status_ttl
        )
        self._steps.append((counter.start, counter.aclose))  # the depth, before the first request
        # It lingers longer than the log: each batch is a transaction and two hand-overs
        # between threads (docs/email.md, "The outbox").
        batching = batch_options(
            settings, waiting=settings.ack == "write", linger=settings.outbox_batch_delay
        )
        intake = outbox_sink(
            outbox,
            [channel.name for channel in channels],
            replace(batching, queue_size=min(batching.queue_size, settings.outbox_max)),
            added=self._took_in,
            spool=spool,
        )
        metrics.for_sink(intake.target.name).track(lambda: intake.held)
        metrics.track_outbox(lambda: counter.depth)
        self.sinks.append(intake)
        self._intake = OutboxIntake(intake, settings.outbox_max, lambda: counter.depth)

    def _local_backend(self) -> NotificationService:
        """The log files, and the ledger every local process shares (``SqliteLedger``)."""
        settings = self.settings
        ledger = self.ledger = SqliteLedger(
            settings.effective_ledger_path(),
            local=self.statuses,
            status_ttl=settings.status_ttl,
            idempotency_ttl=settings.idempotency_ttl,
            max_entries=settings.status_max_entries,
            check_interval=settings.file_check_interval,
            retry=Backoff(initial=settings.retry_initial, maximum=settings.retry_max),
            durable=settings.fsync == "batch",
            outbox=settings.effective_outbox_path() if self._outbox is not None else None,
        )
        self._steps.append((None, ledger.close))  # after the sinks' (see ``self.ledger``)
        files = log_sinks(settings, self.metrics, waiting=settings.ack == "write", statuses=ledger)
        notifications = files.for_path(settings.log_path)
        queries = files.for_path(settings.effective_query_log_path)
        self.sinks.extend(files)
        return self._service(notifications, queries, ledger, ledger)

    def _redis_stream(self) -> RedisStream:
        from service.redis.stream import RedisStream

        stream = RedisStream(self.settings)
        self._steps.append((None, stream.aclose))
        return stream

    def _redis_backend(self) -> NotificationService:
        # Imported here: the Redis packages are an optional extra, needed only for this backend.
        from service.outbox.redis import RedisOutbox
        from service.redis.ledger import RedisLedger
        from service.redis.publisher import stream_sink

        settings, stream = self.settings, self._stream
        assert stream is not None  # built first, by __init__
        outbox = self._outbox
        ledger = RedisLedger(
            stream.redis,
            settings.redis_stream,
            status_ttl=settings.status_ttl,
            idempotency_ttl=settings.idempotency_ttl,
            local=self.statuses,
            max_entries=settings.status_max_entries,
            outbox=outbox if isinstance(outbox, RedisOutbox) else None,
        )
        options = batch_options(settings, waiting=settings.ack == "write")
        sink = stream_sink(stream, ledger.queued, options, settings.queue_spool())
        self.metrics.for_sink(sink.target.name).track(lambda: sink.held)
        self.sinks.append(sink)
        return self._service(sink, sink, ledger, ledger)
