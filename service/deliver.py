"""``python -m service.deliver`` and the ``notify-deliver`` command: the local backend's
delivery process.

It delivers the SQLite outbox (``NOTIFY_OUTBOX_PATH``) that API processes running with
``NOTIFY_DELIVERY=external`` add to, so that no send competes with the event loop that answers
HTTP. The channels, the outbox and the dispatchers are built by the same code as the API's
(``service.runtime.build_delivery_channels`` and ``sqlite_outbox``,
``service.outbox.delivery``); the outbox's leases keep each delivery with one live process, and
a killed delivery process's leases are given back when the next one opens the outbox, so
nothing is lost: at most the sends that were in flight are sent again.

It runs until SIGTERM or SIGINT, then claims nothing more, lets the sends in flight finish
(within ``NOTIFY_SHUTDOWN_TIMEOUT``) and exits 0. ``notify-service`` starts one beside its API
processes and restarts it if it dies; it can also run on its own, on the machine (and with the
settings) of the API::

    NOTIFY_DELIVERY=external uvicorn service.main:app     # the API: adds to the outbox
    python -m service.deliver                              # delivers it
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
import sys
import threading
from collections.abc import Sequence
from types import TracebackType

from config import Settings, settings_help, settings_or_exit
from service.channels.base import Channel
from service.logs import configure_logging
from service.metrics import Metrics
from service.outbox.delivery import OutboxDepth, close_dispatchers, dispatchers
from service.outbox.dispatcher import Dispatcher
from service.outbox.sqlite import SqliteOutbox
from service.runtime import StartupError, build_delivery_channels, sqlite_outbox
from service.tasks import run_main, stop

__all__ = [
    "CHANGE_CHECK_INTERVAL",
    "DeliveryProcess",
    "OutboxChanges",
    "main",
    "parser",
]

logger = logging.getLogger("service.deliver")

CHANGE_CHECK_INTERVAL = 0.01
"""Seconds between looks for rows another process committed (``OutboxChanges``)."""


class OutboxChanges:
    """Wakes the dispatchers when another process commits to the outbox.

    In the API's own process the intake wakes its dispatchers when it adds a batch; a
    separate process has only the outbox to look at, and the dispatchers' own look
    (``poll_interval``, ``NOTIFY_FILE_CHECK_INTERVAL``: 1 s) would leave a new notification
    waiting up to a second. So a thread asks SQLite's ``PRAGMA data_version`` every
    ``interval`` seconds on a connection of its own: a read of the WAL index in shared memory
    that changes when another connection has committed, with no write lock and no table read,
    nothing to contend with the API's intake for, and no event-loop wake while nothing
    changes. A change is then confirmed on the loop by the outbox's own connection, whose
    ``data_version`` ignores this process's own claims and outcomes, so a busy delivery
    process does not wake itself; a change there wakes every dispatcher.

    Measured on the 2-core development VM (an idle delivery process, 10 s of CPU time; an
    email posted every 137 ms, from the 200 to the SMTP server's DATA): this thread costs
    about 1 % of a core every 10 ms, and a notification reaches the SMTP server in 35-40 ms
    (28 ms when the API delivers itself: most of either is the intake's 25 ms wait). Asking
    the outbox's own connection every 10 ms (an executor hop each time) cost 3.5 %; the
    dispatchers' own poll every 10-20 ms (``next_due`` and a claim, a write transaction, per
    channel) 5-9 %.
    """

    def __init__(
        self, outbox: SqliteOutbox, dispatchers: Sequence[Dispatcher], interval: float
    ) -> None:
        self._outbox = outbox
        self._dispatchers = dispatchers
        self._interval = interval
        self._version = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._confirming: asyncio.Task[None] | None = None
        self._again = False

    async def start(self) -> None:
        self._version = await self._outbox.data_version()
        loop = asyncio.get_running_loop()
        self._thread = threading.Thread(
            target=self._look, args=(loop,), name="outbox changes", daemon=True
        )
        self._thread.start()

    async def aclose(self) -> None:
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join)
        task, self._confirming = self._confirming, None
        await stop(task)

    def _look(self, loop: asyncio.AbstractEventLoop) -> None:
        """The thread: tell the loop when the outbox's ``data_version`` changed."""
        try:
            db = sqlite3.connect(self._outbox.path, timeout=1.0)
        except sqlite3.Error:
            logger.exception(
                "cannot watch the outbox for changes: the dispatchers look every "
                "NOTIFY_FILE_CHECK_INTERVAL seconds"
            )
            return
        try:
            last = None
            while not self._stopping.wait(self._interval):
                try:
                    (version,) = db.execute("PRAGMA data_version").fetchone()
                except sqlite3.Error:
                    continue  # the dispatchers' own reads say what is wrong
                if version != last:
                    last = version
                    with contextlib.suppress(RuntimeError):  # the loop is closing
                        loop.call_soon_threadsafe(self._changed)
        finally:
            db.close()

    def _changed(self) -> None:
        if self._confirming is None or self._confirming.done():
            self._confirming = asyncio.create_task(self._confirm(), name="outbox change")
        else:
            self._again = True

    async def _confirm(self) -> None:
        """Wake the dispatchers if another process committed since the last wake."""
        self._again = True
        while self._again:
            self._again = False
            try:
                version = await self._outbox.data_version()
            except Exception:
                return
            if version != self._version:
                self._version = version
                for dispatcher in self._dispatchers:
                    dispatcher.wake()


class DeliveryProcess:
    """What a delivery process owns: the channels, the outbox, its upkeep (``OutboxDepth``),
    a dispatcher per channel and the watch for new rows. An async context manager: entering
    opens them in order (``StartupError`` if they cannot be), leaving closes them in reverse:
    the dispatchers claim nothing more and finish their sends, then the outbox and the
    channels' connections close."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        if settings.backend != "local":
            raise StartupError(
                "cannot start: with NOTIFY_BACKEND=redis the workers deliver "
                "(python -m service.redis.worker)"
            )
        self.channels: list[Channel] = build_delivery_channels(settings)
        if not self.channels:
            raise StartupError(
                "cannot start: nothing to deliver: set NOTIFY_SMTP_URL, NOTIFY_WEBHOOK_URL or "
                "NOTIFY_APPRISE_URLS"
            )
        self.metrics = metrics
        self.outbox = sqlite_outbox(settings, self.channels)
        self._depth = OutboxDepth(
            self.outbox, settings.file_check_interval, keep_delivered=settings.status_ttl
        )
        self.dispatchers = dispatchers(settings, self.outbox, self.channels, metrics.deliveries)
        self._changes = OutboxChanges(self.outbox, self.dispatchers, CHANGE_CHECK_INTERVAL)
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> DeliveryProcess:
        stack = self._stack
        try:
            try:
                await self.outbox.open()  # gives back the leases of dead processes first
            except (OSError, ValueError) as exc:
                raise StartupError(f"cannot start: {exc}") from None
            stack.push_async_callback(self.outbox.close)
            for channel in self.channels:  # closed after their dispatchers have stopped
                stack.push_async_callback(channel.aclose)
            await self._depth.start()
            stack.push_async_callback(self._depth.aclose)
            # At once: within NOTIFY_SHUTDOWN_TIMEOUT (notify-service waits a second more).
            stack.push_async_callback(close_dispatchers, self.dispatchers)
            for dispatcher in self.dispatchers:
                self.metrics.deliveries.disabled(dispatcher.name, False)
                await dispatcher.start()
            await self._changes.start()
            stack.push_async_callback(self._changes.aclose)
        except BaseException:
            await stack.aclose()
            raise
        for channel in self.channels:
            logger.info(
                "delivering the outbox %s to %s as %s",
                self.outbox.path,
                channel.target,
                channel.name,
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._stack.aclose()
        self.metrics.process_exited()


async def run(settings: Settings, *, parent: int | None = None) -> None:
    """Deliver until SIGTERM or SIGINT (or, given ``parent``, until the process that started
    this one, whose id that is, is gone), then drain and return."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    async with DeliveryProcess(settings, Metrics(settings.prometheus_multiproc_dir)):
        logger.info("delivery process [%d] started", os.getpid())
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_PARENT_CHECK_INTERVAL):
                    await stopping.wait()
            if parent is not None and os.getppid() != parent:
                logger.warning("the process that started this one is gone: stopping")
                break
        logger.info("delivery process [%d] stopping: finishing the sends in flight", os.getpid())
    logger.info("delivery process [%d] stopped", os.getpid())


_PARENT_CHECK_INTERVAL = 0.5
"""Seconds between checks that the parent still runs (``--parent``)."""


def parser() -> argparse.ArgumentParser:
    """The command line: ``--help``, and the option ``notify-service`` starts it with."""
    commands = argparse.ArgumentParser(
        prog="notify-deliver",
        description="Deliver the local outbox (NOTIFY_OUTBOX_PATH): email and webhooks that "
        "API processes running with NOTIFY_DELIVERY=external added to it. Builds the channels "
        "the settings configure, a dispatcher each, and runs until SIGTERM or SIGINT; then "
        "lets the sends in flight finish (NOTIFY_SHUTDOWN_TIMEOUT) and exits 0. notify-service "
        "runs one beside its API and restarts it if it dies.",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands.add_argument(
        "--parent",
        type=int,
        metavar="PID",
        help="also stop when the process PID, which started this one, is gone (notify-service "
        "passes its own)",
    )
    return commands


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = settings_or_exit()
    configure_logging(settings.log_level, json_lines=settings.log_json)
    try:
        run_main(run(settings, parent=args.parent))
    except StartupError as exc:
        raise SystemExit(f"error: {exc}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
