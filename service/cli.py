"""``python -m service`` and the ``notify-service`` command: options, the settings they read,
then uvicorn. ``--help`` prints both and starts nothing."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from config import Settings, environment_name, settings_or_exit
from service.main import create_app

__all__ = ["main", "parser"]

logger = logging.getLogger("service")

_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def _settings_help() -> str:
    lines = ["settings (environment variables, or a .env file in the working directory):"]
    for name, field in Settings.model_fields.items():
        description = field.description or ""
        wrapped = textwrap.fill(description, width=72, subsequent_indent=" " * 6)
        lines.append(f"  {environment_name(name)}\n      {wrapped}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    """The command line: each option overrides its setting for this run."""
    commands = argparse.ArgumentParser(
        prog="notify-service",
        description="Serve the notification API with uvicorn. Options override the settings "
        "of the same name.",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands.add_argument("--host", help="address to bind (NOTIFY_HOST; default 127.0.0.1)")
    commands.add_argument("--port", type=int, help="port to bind (NOTIFY_PORT; default 8000)")
    commands.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes (default 1); with more than one, PROMETHEUS_MULTIPROC_DIR is "
        "emptied first, as prometheus-client's multiprocess mode requires",
    )
    commands.add_argument(
        "--log-level", choices=_LOG_LEVELS, help="the service's and uvicorn's log level"
    )
    commands.add_argument(
        "--reload", action="store_true", help="restart on code changes (development)"
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


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = settings_or_exit()
    host = args.host or settings.host
    port = args.port if args.port is not None else settings.port
    log_level = args.log_level or settings.log_level
    if args.workers > 1:
        directory = settings.prometheus_multiproc_dir
        if directory is None:
            print(  # noqa: T201
                "warning: --workers without PROMETHEUS_MULTIPROC_DIR: /metrics shows only the "
                "worker that answers",
                file=sys.stderr,
            )
        else:
            empty_multiprocess_dir(directory)
    if args.workers == 1 and not args.reload:
        app: str | FastAPI = create_app(settings.model_copy(update={"log_level": log_level}))
    else:
        # More processes, or reloading, need the app as an import string: each process builds
        # it from the environment, which carries the one option the app reads.
        if args.log_level:
            os.environ[environment_name("log_level")] = args.log_level
        app = "service.main:app"
    uvicorn.run(
        app,
        host=host,
        port=port,
        workers=args.workers,
        reload=args.reload,
        log_level=log_level,
        timeout_graceful_shutdown=settings.graceful_timeout,
    )
    return 0
