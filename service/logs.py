"""The service's own log lines: where they go, how they look, at what level."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

__all__ = ["configure_logging"]


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
    handlers (an embedding app, pytest) records propagate to them instead. httpx (webhooks)
    says only its warnings.
    """
    log = logging.getLogger("service")
    log.setLevel("DEBUG" if level == "trace" else level.upper())
    # httpx logs each request's full URL at INFO: a webhook URL's query may hold a token.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    formatter = _JsonLines() if json_lines else _UvicornStyle()
    for handler in log.handlers:  # ours, from an earlier call in this process
        handler.setFormatter(formatter)
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter)
        log.addHandler(handler)
