"""The service's own log lines: where they go, how they look, at what level."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

__all__ = ["configure_logging", "hide_library_logs"]


class _UvicornStyle(logging.Formatter):
    """``INFO:     service: …``: the level padded as uvicorn pads its own, so that both
    kinds of line start their text in the same column."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{f'{record.levelname}:':<10}{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class _JsonLines(logging.Formatter):
    """One JSON object per line (``NOTIFY_LOG_JSON=true``): time, level, logger, message, and
    the traceback when there is one. ASCII only, so a line is always one line."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, tz=UTC)
        fields = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return json.dumps(fields, ensure_ascii=True)


def configure_logging(level: str, *, json_lines: bool = False) -> None:
    """Set the service logger's level; give it a handler when nothing would print it.

    uvicorn configures only its own loggers, so under uvicorn the service adds a stderr
    handler whose lines align with uvicorn's (or are JSON); where the root logger has
    handlers (an embedding app, pytest) records propagate to them instead. The libraries that
    log URLs say nothing, or only their warnings (``hide_library_logs``).
    """
    log = logging.getLogger("service")
    log.setLevel("DEBUG" if level == "trace" else level.upper())
    hide_library_logs()
    formatter = _JsonLines() if json_lines else _UvicornStyle()
    for handler in log.handlers:  # ours, from an earlier call in this process
        handler.setFormatter(formatter)
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter)
        log.addHandler(handler)


def hide_library_logs() -> None:
    """Keep the lines of the libraries that log the URLs they send to out of every output:
    their URLs hold tokens (a webhook URL's query, an Apprise URL's whole path).

    - httpx (webhooks) logs each request's full URL at INFO: only its warnings pass.
    - Apprise logs through its ``apprise`` logger, its plugins' URLs and payloads at DEBUG and
      reasons naming targets at WARNING: none of it propagates (Apprise's own per-call log
      capture still sees it). The channel says why a send failed in its own words.
    - urllib3 (under Apprise's requests) logs each request line, path included, at DEBUG, and
      a URL with some warnings: only its errors pass.

    Idempotent; called by ``configure_logging`` and by the Apprise channel when it is built.
    """
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    apprise = logging.getLogger("apprise")
    apprise.propagate = False
    if not apprise.handlers:  # nothing to handle a record: Python's last resort would print it
        apprise.addHandler(logging.NullHandler())
