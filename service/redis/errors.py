"""An error talking to Redis, as one line: in full for the service's own log, and without
Redis's address for what clients see (a 503, ``/readyz``)."""

from __future__ import annotations

import re

__all__ = ["describe_redis_error", "public_redis_error"]


def describe_redis_error(exc: BaseException) -> str:
    """One line for an error talking to Redis, for the service's own log (it may name
    Redis's address)."""
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text


_ADDRESS = re.compile(
    r"[a-z][a-z0-9+.-]*://\S+"  # a URL (redis://, rediss://, unix://)
    r"|\(\s*'[^']*'(?:\s*,\s*\d+)+\s*\)"  # a socket address tuple: ('127.0.0.1', 6379)
    r"|\[[0-9a-fA-F:.]+\](?::\d+)?"  # [::1]:6379
    r"|(?:[0-9a-fA-F]{0,4}:){2,}[0-9a-fA-F]{0,4}(?::\d+)?"  # ::1:6379, fe80::1
    r"|[\w.-]+:\d+(?:/\d+)?"  # host:port
    r"|(?:/[\w.-]*[\w-])+"  # a unix socket's path
)
"""What may say where Redis lives, in the messages of redis-py and of the OS."""


def public_redis_error(exc: BaseException) -> str:
    """The same line without Redis's address, for a 503 and ``/readyz``: clients learn that
    Redis is unavailable (and the kind of error), not where it lives."""
    return _ADDRESS.sub("Redis", describe_redis_error(exc))
