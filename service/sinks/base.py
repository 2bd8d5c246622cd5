"""The small interface every sink implements, swapped whole (like httpx's transports)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from service.records import Entry

__all__ = ["Listeners", "Sink", "SinkFull", "SinkHealth", "SinkListener", "SinkUnavailable"]


class SinkUnavailable(Exception):
    """The sink cannot take the entry now; the request must not be acknowledged."""


class SinkFull(SinkUnavailable):
    """The sink's bounded buffer is full."""


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


class Sink(Protocol):
    """Accepts finished lines; delivers them in order, eventually, exactly once.

    Taking a line is two steps so that a request is refused *before* it is acknowledged:
    ``admit`` reserves room (or raises ``SinkUnavailable``) while the request is handled, and
    ``submit`` hands over the admitted line later, from the background task.
    """

    def admit(self) -> None:
        """Reserve room for one line, or raise ``SinkUnavailable``; no I/O."""

    def release(self) -> None:
        """Give back a reservation that will not be used."""

    def submit(self, entry: Entry) -> None:
        """Hand over a line admitted earlier. Never waits: ``admit`` already reserved its room,
        so this only queues it (a plain call, not a coroutine: it runs once per line)."""

    async def aclose(self) -> None:
        """Deliver what was accepted (within the sink's deadline) and release resources."""

    def health(self) -> SinkHealth:
        """The sink's current state."""


class SinkListener(Protocol):
    """Told what happened to each batch (the status store listens)."""

    def written(self, entries: Sequence[Entry], attempts: int, seconds: float) -> None:
        """``entries`` are in the log, after ``attempts`` tries taking ``seconds``."""

    def failed(self, entries: Sequence[Entry], error: str, attempts: int) -> None:
        """Writing ``entries`` failed ``attempts`` times so far; they are kept and retried."""


class Listeners:
    """Several listeners as one."""

    def __init__(self, *listeners: SinkListener) -> None:
        self._listeners = listeners

    def written(self, entries: Sequence[Entry], attempts: int, seconds: float) -> None:
        for listener in self._listeners:
            listener.written(entries, attempts, seconds)

    def failed(self, entries: Sequence[Entry], error: str, attempts: int) -> None:
        for listener in self._listeners:
            listener.failed(entries, error, attempts)
