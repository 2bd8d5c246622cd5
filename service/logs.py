"""The service's own log lines: where they go and at what level."""

from __future__ import annotations

import logging
import sys

__all__ = ["configure_logging"]

_LOG_FORMAT = "%(levelname)s:    %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """Set the service logger's level; give it a handler when nothing would print it.

    uvicorn configures only its own loggers, so under uvicorn the service adds a stderr
    handler in uvicorn's style; where the root logger has handlers (an embedding app, pytest)
    records propagate to them instead. httpx (webhooks) says only its warnings.
    """
    log = logging.getLogger("service")
    log.setLevel("DEBUG" if level == "trace" else level.upper())
    # httpx logs each request's full URL at INFO: a webhook URL's query may hold a token.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_LOG_FORMAT))
        log.addHandler(handler)
