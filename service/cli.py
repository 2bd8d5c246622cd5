"""``python -m service`` and the ``notify-service`` command: options, the settings they read,
then uvicorn, and beside it the delivery process. ``--help`` prints both and starts nothing.

With the local backend and a channel on (email, webhooks, Apprise), the API's processes only
add deliveries to the outbox (``NOTIFY_DELIVERY=external`` in their environment) and one
delivery process (``python -m service.deliver``) sends them, so that no send competes with the
event loop that answers HTTP. ``DeliverySupervisor`` starts it, restarts it when it dies (a
killed process's leases are given back when the next one opens the outbox: nothing is lost, at
most the sends in flight are repeated), stops it once the API has stopped, and with
``--reload`` restarts it when the code changes, as uvicorn restarts the API.

Whenever it runs more than one process (a delivery process, ``--workers N``), they share one
``PROMETHEUS_MULTIPROC_DIR``, so that the API's ``/metrics`` shows them all: the operator's,
emptied first, or else a private temporary directory, made at the start and removed at the
end (``shared_metrics``). prometheus-client chooses its multiprocess mode when it is first
imported, from the environment, so this module imports the app (and with it
prometheus-client) only once the variable is set.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn
from watchfiles import PythonFilter, watch

from config import Settings, environment_name, settings_help, settings_or_exit
from service.channels.registry import CHANNELS
from service.logs import configure_logging

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["DeliverySupervisor", "empty_multiprocess_dir", "main", "parser", "shared_metrics"]

logger = logging.getLogger("service")

_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def parser() -> argparse.ArgumentParser:
    """The command line: each option overrides its setting for this run."""
    commands = argparse.ArgumentParser(
        prog="notify-service",
        description="Serve the notification API with uvicorn. Options override the settings "
        "of the same name. With the local backend and a channel on (email, webhooks, Apprise), "
        "one delivery "
        "process (notify-deliver) runs beside the API, restarted if it dies and stopped after "
        "it: the API only adds deliveries to the outbox (NOTIFY_DELIVERY=external).",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands.add_argument("--host", help="address to bind (NOTIFY_HOST; default 127.0.0.1)")
    commands.add_argument("--port", type=int, help="port to bind (NOTIFY_PORT; default 8000)")
    commands.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes (default 1); they and the delivery process share "
        "PROMETHEUS_MULTIPROC_DIR (emptied first, as prometheus-client's multiprocess mode "
        "requires), or else a temporary directory made for the run",
    )
    commands.add_argument(
        "--log-level", choices=_LOG_LEVELS, help="the service's and uvicorn's log level"
    )
    commands.add_argument(
        "--reload",
        action="store_true",
        help="restart the API and the delivery process when Python files in the working "
        "directory change (development)",
    )
    return commands


def empty_multiprocess_dir(directory: Path) -> int:
    """Delete the metric files an earlier run left in ``directory``; how many there were."""
    directory.mkdir(parents=True, exist_ok=True)
    removed = 0
    for leftover in directory.glob("*.db"):
        leftover.unlink(missing_ok=True)
        removed += 1
    return removed


_METRICS_VARIABLE = environment_name("prometheus_multiproc_dir")


@contextlib.contextmanager
def shared_metrics(settings: Settings, *, processes: int) -> Iterator[Settings]:
    """``settings`` with the ``PROMETHEUS_MULTIPROC_DIR`` that ``processes`` processes share,
    also in this process's environment (which the others inherit, and where
    prometheus-client reads it): the operator's, emptied first, or else a private temporary
    directory, removed when the block ends. One process needs none: ``settings`` as they
    are."""
    directory = settings.prometheus_multiproc_dir
    if processes <= 1:
        yield settings
        return
    if directory is not None:
        empty_multiprocess_dir(directory)
        os.environ[_METRICS_VARIABLE] = str(directory)  # (it may come from .env)
        yield settings
        return
    if "prometheus_client" in sys.modules:  # main() called by code that imported it first
        print(  # noqa: T201
            f"warning: {_METRICS_VARIABLE} is not set and prometheus-client is already "
            "imported: /metrics shows only the process that answers",
            file=sys.stderr,
        )
        yield settings
        return
    with tempfile.TemporaryDirectory(prefix="notify-service-metrics-") as made:
        os.environ[_METRICS_VARIABLE] = made
        try:
            yield settings.model_copy(update={"prometheus_multiproc_dir": Path(made)})
        finally:
            del os.environ[_METRICS_VARIABLE]


_RESTART_DELAY = 0.5
"""Seconds before a delivery process that died is started again; doubled (up to
``_RESTART_DELAY_MAX``) while each one dies within ``_STEADY`` seconds of its start."""
_RESTART_DELAY_MAX = 10.0
_STEADY = 10.0
_NICENESS = 10
"""How much lower the delivery process's CPU priority is than the API's (``nice``): see
``DeliverySupervisor``."""


class DeliverySupervisor:
    """The one delivery process beside the API: started, restarted when it dies, stopped.

    A thread waits on the process; when it ends without being asked to, it is started again
    after ``_RESTART_DELAY`` seconds (longer while it keeps failing at once, as with an outbox
    it cannot open, or cannot be started at all). It runs in its own process group, so a
    terminal's Ctrl-C reaches only ``notify-service``, which stops the API first and this
    process after it; and with ``--parent`` (this process's id), so that it stops by itself
    if ``notify-service`` is killed.

    It runs at a lower CPU priority (niceness 10): where the cores are few, a burst of
    requests gets the CPU first and deliveries take what is left, as the API's own dispatchers
    step back during a burst (``service/outbox/load.py``), and they use it all once the burst
    is over. Measured on the shared 2-core VM (4,000 POSTs on 32 connections, email on, the load
    generator and the SMTP server on the same machine, other work running: noisy), in two runs
    of alternating rounds (3, then 5): the API answered medians of 2,760 and 2,490 requests a
    second beside a delivery process at the same priority, 3,770 and 2,720 beside a niced one,
    and 3,620 and 2,850 delivering itself. Delivering itself it sent 15-30 emails during the
    burst; the delivery process sent 140-560 niced, 370-900 not; every run delivered all 4,000
    within 5-12 s of the burst's start.

    Given ``reload`` (a directory: ``--reload``), a second thread watches its Python files as
    uvicorn's reloader watches them for the API (``watchfiles``, the library uvicorn uses),
    and on a change stops the delivery process as ``stop`` does and starts another at once,
    with the new code."""

    def __init__(
        self,
        env: dict[str, str],
        grace: float,
        *,
        metrics_dir: Path | None = None,
        reload: Path | None = None,
    ) -> None:
        parent = str(os.getpid())
        self._command = [sys.executable, "-m", "service.deliver", "--parent", parent]
        self._env = env
        self._grace = grace
        self._metrics_dir = metrics_dir
        """The ``PROMETHEUS_MULTIPROC_DIR`` it shares, where a process that ended leaves its
        live gauges (``_forget``)."""
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._reloading = False
        """The process was stopped for a code change: start the next one at once."""
        self._thread = threading.Thread(target=self._supervise, name="delivery process")
        self._reload = reload
        self._watcher = threading.Thread(target=self._watch, name="delivery process reload")

    def start(self) -> None:
        self._spawn()
        self._thread.start()
        if self._reload is not None:
            self._watcher.start()

    def stop(self) -> None:
        """SIGTERM; wait up to the grace period for its sends in flight, then SIGKILL."""
        with self._lock:
            self._stopping.set()
            process = self._process
        if process is not None:
            self._terminate(process)
        self._thread.join()
        if self._watcher.is_alive():
            self._watcher.join()

    def _terminate(self, process: subprocess.Popen[bytes]) -> None:
        """SIGTERM ``process``; wait up to the grace period for its sends in flight, then
        SIGKILL it."""
        if process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(self._grace)
        except subprocess.TimeoutExpired:
            logger.warning("the delivery process did not stop in %g s: killing it", self._grace)
            process.kill()
            process.wait()

    def _watch(self) -> None:
        """``--reload``: restart the delivery process when Python files under ``_reload``
        change, until ``stop``."""
        assert self._reload is not None
        logger.info("the delivery process restarts when Python files in %s change", self._reload)
        for changes in watch(self._reload, watch_filter=PythonFilter(), stop_event=self._stopping):
            with self._lock:
                process = self._process
                if self._stopping.is_set() or process is None or process.poll() is not None:
                    continue  # stopping, or it ended anyway: _supervise starts the next
                self._reloading = True
            changed = ", ".join(sorted({Path(path).name for _, path in changes}))
            logger.info("%s changed: restarting the delivery process [%d]", changed, process.pid)
            self._terminate(process)

    def _spawn(self) -> None:
        """Start a delivery process (unless stopping). One that cannot be started now (the
        interpreter gone in an upgrade, no memory or processes left) leaves ``_process`` None:
        logged, and ``_supervise`` tries again."""
        with self._lock:
            if self._stopping.is_set():
                return
            try:
                process = subprocess.Popen(
                    self._command, env=self._env, stdin=subprocess.DEVNULL, process_group=0
                )
            except OSError as exc:
                self._process = None
                logger.error("cannot start the delivery process: %s", exc)
                return
            self._process = process
            with contextlib.suppress(OSError):  # already gone: the supervisor starts another
                niceness = min(os.getpriority(os.PRIO_PROCESS, 0) + _NICENESS, 19)
                os.setpriority(os.PRIO_PROCESS, process.pid, niceness)
            self._started_at = time.monotonic()

    def _supervise(self) -> None:
        delay = _RESTART_DELAY / 2  # the first restart of a process that failed at once: 0.5 s
        while True:
            process = self._process
            if process is None:  # it could not be started (logged): again, later each time
                delay = min(delay * 2, _RESTART_DELAY_MAX)
                logger.warning("starting the delivery process again in %g s", delay)
                if self._stopping.wait(delay):
                    return
                self._spawn()
                continue
            returncode = process.wait()
            self._forget(process.pid)
            if self._stopping.is_set():
                return
            with self._lock:
                reloading, self._reloading = self._reloading, False
            if reloading:  # stopped for new code: the next one at once
                delay = _RESTART_DELAY / 2
                self._spawn()
                continue
            steady = time.monotonic() - self._started_at >= _STEADY
            delay = _RESTART_DELAY if steady else min(delay * 2, _RESTART_DELAY_MAX)
            logger.log(
                logging.WARNING if returncode == 0 else logging.ERROR,  # 0: stopped by request
                "the delivery process [%d] exited (%s); starting another in %g s",
                process.pid,
                _exit_reason(returncode),
                delay,
            )
            if self._stopping.wait(delay):
                return
            self._spawn()

    def _forget(self, pid: int) -> None:
        """Drop the live gauges (``notify_channel_concurrency``, ``notify_channel_disabled``)
        of the delivery process ``pid``, which ended: one that was killed could not (its
        counters stay, as prometheus-client's multiprocess mode keeps a dead process's)."""
        if self._metrics_dir is None:
            return
        from prometheus_client import multiprocess  # once the environment says where

        multiprocess.mark_process_dead(pid, str(self._metrics_dir))  # type: ignore[no-untyped-call]


def _exit_reason(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"status {returncode}"


def _delivers(settings: Settings) -> bool:
    """Whether a delivery process is needed: the local backend, with a channel configured."""
    return settings.backend == "local" and any(configured(settings) for _, configured in CHANNELS)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = settings_or_exit()
    host = args.host or settings.host
    port = args.port if args.port is not None else settings.port
    log_level = args.log_level or settings.log_level
    processes = args.workers + (1 if _delivers(settings) else 0)
    with shared_metrics(settings, processes=processes) as shared:
        return _run(args, shared, host, port, log_level)


def _run(args: argparse.Namespace, settings: Settings, host: str, port: int, log_level: str) -> int:
    """Serve: the API, and beside it the delivery process when one is needed."""
    if args.log_level:  # the delivery process's, and the API's processes' (import string)
        os.environ[environment_name("log_level")] = args.log_level
    delivery: DeliverySupervisor | None = None
    if _delivers(settings):
        os.environ[environment_name("delivery")] = "external"
        settings = settings.model_copy(update={"delivery": "external"})
        # Its sends in flight get NOTIFY_SHUTDOWN_TIMEOUT, the closing a second more.
        delivery = DeliverySupervisor(
            dict(os.environ),
            settings.shutdown_timeout + 1.0,
            metrics_dir=settings.prometheus_multiproc_dir,
            reload=Path.cwd() if args.reload else None,  # where uvicorn's reloader looks
        )
        # Its lines (a restart) in this process, which builds no app with --workers or --reload.
        configure_logging(log_level, json_lines=settings.log_json)
    if args.workers == 1 and not args.reload:
        from service.main import create_app  # prometheus-client: after shared_metrics

        app: str | FastAPI = create_app(settings.model_copy(update={"log_level": log_level}))
    else:
        # More processes, or reloading, need the app as an import string: each process builds
        # it from the environment, which carries the options the app reads.
        app = "service.main:app"
    if delivery is None:
        _serve(app, args, host, port, log_level, settings)
        return 0
    # uvicorn raises again, once it has stopped, the SIGTERM or SIGINT that stopped it: noted
    # here instead, so that the delivery process is stopped after the API.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stopped)
    delivery.start()
    try:
        _serve(app, args, host, port, log_level, settings)
    finally:
        delivery.stop()
    return 0


def _stopped(number: int, frame: FrameType | None) -> None:
    """The API has stopped on this signal: what is left to do is ``DeliverySupervisor.stop``."""


def _serve(
    app: str | FastAPI,
    args: argparse.Namespace,
    host: str,
    port: int,
    log_level: str,
    settings: Settings,
) -> None:
    uvicorn.run(
        app,
        host=host,
        port=port,
        workers=args.workers,
        reload=args.reload,
        log_level=log_level,
        timeout_graceful_shutdown=settings.graceful_timeout,
    )
