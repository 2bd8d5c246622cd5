"""The one retry policy and the one failure-episode logger, shared by every engine that
retries: the batch writer (a failing log file, Redis stream or outbox intake), the dispatcher
(a delivery, a failing channel) and the Redis reader.

``Backoff`` is capped exponential backoff with jitter (AWS's "Exponential Backoff and Jitter":
*equal* jitter waits between half and all of the ceiling, *full* jitter between nothing and
all of it), with an optional floor a server asked for (HTTP ``Retry-After``).

``Episode`` turns a run of failures into two log lines: one when failing starts (with the
first error), one when it ends (with how long it lasted). Between them, nothing: a failing
disk or SMTP server does not write a line per attempt.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Literal

__all__ = ["Backoff", "Episode"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with jitter: ``initial * 2**attempt`` seconds, at most
    ``maximum``, jittered."""

    initial: float = 0.05
    maximum: float = 2.0
    jitter: Literal["equal", "full"] = "equal"
    """equal: between half and all of the ceiling; full: between 0 and all of it."""

    def ceiling(self, attempt: int) -> float:
        """The longest wait after ``attempt`` failures before (``attempt`` counts from 0)."""
        if attempt >= 64:  # 2**64 * initial is past any maximum; and no float overflow
            return self.maximum
        return min(self.maximum, self.initial * 2.0**attempt)

    def delay(self, attempt: int, *, at_least: float | None = None) -> float:
        """Seconds to wait before attempt ``attempt + 1``; never less than ``at_least`` (a
        receiver's ``Retry-After``), when given."""
        ceiling = self.ceiling(attempt)
        low = ceiling / 2 if self.jitter == "equal" else 0.0
        delay = random.uniform(low, ceiling)
        if at_least is not None and at_least > delay:
            return at_least
        return delay


class Episode:
    """One failure episode of ``what`` at a time: a log line when it starts, one when it ends.

    ``failing`` and ``recovered`` are the two lines' texts after ``"{what}: "``; ``failing``
    may use ``{error}``, ``recovered`` ``{seconds}`` (how long it failed); both may use the
    keyword arguments given to ``fail`` / ``recover``."""

    __slots__ = ("_failing", "_logger", "_recovered", "error", "since", "what")

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        failing: str = "failing: {error}; retrying",
        recovered: str = "working again after {seconds:.1f} s",
    ) -> None:
        self._logger = logger
        self.what = what
        self._failing = failing
        self._recovered = recovered
        self.error: str | None = None
        """The latest error of the episode under way; None while things work."""
        self.since = 0.0
        """When (``time.monotonic()``) the episode under way began."""

    @property
    def failing(self) -> bool:
        return self.error is not None

    def fail(self, error: str, *, detail: str | None = None, **context: object) -> bool:
        """Record a failure; logs (at ERROR) and returns True when it starts an episode.
        ``detail``, when given, is logged instead of ``error`` (a fuller reason for the
        service's own log; ``error`` is what clients and ``/readyz`` see)."""
        started = self.error is None
        if started:
            self.since = time.monotonic()
            text = self._failing.format(error=detail or error, **context)
            self._logger.error("%s: %s", self.what, text)
        self.error = error
        return started

    def recover(self, **context: object) -> float | None:
        """End the episode under way, if any: logs (at INFO) and returns how many seconds it
        lasted; None when nothing was failing."""
        if self.error is None:
            return None
        seconds = time.monotonic() - self.since
        self.error = None
        text = self._recovered.format(seconds=seconds, **context)
        self._logger.info("%s: %s", self.what, text)
        return seconds
