"""The small interfaces of sinks, swapped whole (like httpx's transports).

A sink *takes lines* (``Lines``: what the services call) and *owns a resource* (``Resource``:
what the lifespan starts and closes). ``service.sinks.core.BatchSink`` is both."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from service.records import Kind

__all__ = [
    "Lines",
    "Listeners",
    "Resource",
    "SinkFull",
    "SinkHealth",
    "SinkListener",
    "SinkUnavailable",
    "Wait",
]


class SinkUnavailable(Exception):
    """The sink cannot take the line now; the request must not be acknowledged."""


class SinkFull(SinkUnavailable):
    """The sink's bounded buffer is full."""


Wait = asyncio.Future[None] | None
"""What a line's request waits on until the line is written or taken (``NOTIFY_ACK=write``);
None when nobody waits. A request that gave up cancels it: its line is withdrawn."""


@dataclass(frozen=True, slots=True)
class SinkHealth:
    """What ``/readyz`` reports for one sink."""

    name: str
    running: bool
    open: bool
    queued: int
    capacity: int
    error: str | None = None

    @property
    def problem(self) -> str | None:
        """Why the sink cannot take lines now, or ``None`` when it can."""
        if self.error is not None:
            return f"{self.name}: writes failing: {self.error}"
        if not self.running:
            return f"{self.name}: writer not running"
        if not self.open:
            return f"{self.name}: not open"
        if self.queued >= self.capacity:
            return f"{self.name}: buffer full ({self.queued} of {self.capacity} lines)"
        return None


class Lines(Protocol):
    """Takes finished lines; delivers them in order, eventually, at least once.

    Taking a line is two steps so that a request is refused *before* it is acknowledged:
    ``admit`` reserves room (or raises ``SinkUnavailable``) while the request is handled, and
    ``submit`` hands over the admitted line later, from the background task.
    """

    def admit(self) -> None:
        """Reserve room for one line, or raise ``SinkUnavailable``; no I/O."""

    def release(self) -> None:
        """Give back a reservation that will not be used."""

    def submit(self, record_id: str, kind: Kind, line: str, done: Wait = None) -> None:
        """Hand over ``line`` (one finished line, ending in a newline) of the record
        ``record_id``, admitted earlier; ``done``, when given, is resolved once the line is
        delivered (``NOTIFY_ACK=write``). Never waits: ``admit`` already reserved its room, so
        this only queues it (a plain call, not a coroutine: it runs once per line).

        Plain values rather than an object per line: a line outlives its request while it
        waits for its batch, and an object per line that the garbage collector tracks
        (strings it does not) set off a collection of its youngest generation every ~50
        requests under load."""


class Resource(Protocol):
    """Something one lifespan run opens and closes: a sink's file, a Redis connection."""

    async def start(self) -> None:
        """Open it; ``OSError`` or ``ValueError`` (with a clear message) if it cannot be."""

    async def aclose(self) -> None:
        """Deliver what was accepted (within the deadline) and release it."""


class SinkListener(Protocol):
    """Told what happened to each batch (the status store listens)."""

    def written(
        self, ids: Sequence[str], attempts: int, seconds: float, kinds: Sequence[Kind] = ()
    ) -> None:
        """The lines of the records ``ids`` (of ``kinds``, when given) are in the log, after
        ``attempts`` tries taking ``seconds``."""

    def failed(self, ids: Sequence[str], error: str, attempts: int) -> None:
        """Writing the lines of ``ids`` failed ``attempts`` times so far; they are kept and
        retried."""


class Listeners:
    """Several listeners as one."""

    def __init__(self, *listeners: SinkListener) -> None:
        self._listeners = listeners

    def written(
        self, ids: Sequence[str], attempts: int, seconds: float, kinds: Sequence[Kind] = ()
    ) -> None:
        for listener in self._listeners:
            listener.written(ids, attempts, seconds, kinds)

    def failed(self, ids: Sequence[str], error: str, attempts: int) -> None:
        for listener in self._listeners:
            listener.failed(ids, error, attempts)
