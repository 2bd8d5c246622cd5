"""The queue sink (``NOTIFY_BACKEND=redis``): admitted lines go to a task queue, in batches.

The API process holds what it admitted until the queue has taken it. One sender task hands
everything queued over as one message (up to ``batch_size`` lines, after waiting
``batch_delay`` for more), so a busy server makes one round trip per batch, not per request.
A line may carry a future, resolved once its batch was taken (``NOTIFY_ACK=write``: many
waiting requests share one hand-over).

While the queue cannot be reached, the batch is retried with capped backoff and jitter, the
lines behind it wait in order, ``admit`` refuses new lines (the request gets 503, never a 200
for a line that may be lost) and ``health`` says why. An idle sender checks the queue every
``check_interval`` seconds, so readiness follows the queue without traffic. One log line marks
the start of a failure episode and one its end.

Shutdown hands over what it can within ``drain_timeout``; the rest is appended to a spool
file (one JSON array per line), which the next start claims and hands over before new lines.
A line is therefore either in the queue or in the spool.

The sink knows nothing about Redis: a ``Publisher`` does the talking (``service.broker``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import aiofiles
import aiofiles.os

from service.ids import new_id
from service.records import Kind
from service.sinks.base import (
    Sink,
    SinkFull,
    SinkHealth,
    SinkUnavailable,
    Wait,
    fail_waits,
    kept_indices,
    resolve_waits,
)
from service.sinks.file import RetryPolicy, claim_spools

__all__ = [
    "HandoffFailed",
    "Publisher",
    "QueueSink",
    "QueueSinkOptions",
    "WireRecord",
    "parse_wire_record",
]

logger = logging.getLogger("service.sinks.queue")

WireRecord = tuple[str, Kind, str, float]
"""One line as it travels: ``(id, kind, line, accepted_at)``; JSON turns it into a list."""


class HandoffFailed(Exception):
    """The queue did not take the batch; ``str()`` says why, in one line."""


class Publisher(Protocol):
    """Talks to the queue for a ``QueueSink``."""

    description: str
    """What ``/readyz`` and errors call the queue, e.g. ``redis stream notifications``."""

    async def publish(self, batch_id: str, records: Sequence[WireRecord]) -> None:
        """Hand ``records`` over as one message, or raise ``HandoffFailed``. Retried with the
        same ``batch_id`` until it succeeds, so one batch may arrive more than once."""

    async def ping(self) -> None:
        """Raise ``HandoffFailed`` if the queue cannot be reached now."""


def parse_wire_record(raw: object) -> WireRecord:
    """A ``WireRecord`` from its JSON form; ``ValueError`` naming the problem if it is not one.

    The line must be exactly one line (printable, one final newline): the API escaped it, and
    whatever else put it on the queue, it cannot add a line to the log.
    """
    if not isinstance(raw, list | tuple) or len(raw) != 4:
        raise ValueError("a record is [id, kind, line, accepted_at]")
    record_id, kind, line, accepted_at = raw
    if not isinstance(record_id, str) or not 0 < len(record_id) <= 64:
        raise ValueError("the id must be a string of 1 to 64 characters")
    if kind not in ("notification", "query"):
        raise ValueError(f"unknown kind {kind!r}")
    if not isinstance(line, str) or not line.endswith("\n") or not line[:-1].isprintable():
        raise ValueError("the line must be printable text ending in one newline")
    if not isinstance(accepted_at, int | float) or isinstance(accepted_at, bool):
        raise ValueError("accepted_at must be a number")
    return record_id, kind, line, float(accepted_at)


@dataclass(frozen=True, slots=True)
class QueueSinkOptions:
    """How the queue sink behaves (from ``Settings``)."""

    queue_size: int = 100_000
    batch_size: int = 4096
    batch_delay: float = 0.0
    drain_timeout: float = 10.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    check_interval: float = 1.0


@dataclass(slots=True)
class _HandOver:
    """Lines taken together for one message: ``waits[i]`` is the wait of ``records[i]``."""

    records: list[WireRecord]
    waits: list[Wait]

    def live(self) -> _HandOver:
        """Without the lines whose waiting request gave up (and answered 503)."""
        kept = kept_indices(self.waits)
        if kept is None:
            return self
        return _HandOver([self.records[i] for i in kept], [self.waits[i] for i in kept])


class _Queued:
    """The lines waiting for the sender, in order: a deque of plain values per field rather
    than an object per line, which would set off the garbage collector under load (see
    ``Sink.submit``). A record's tuple is made only when its batch is taken."""

    __slots__ = ("ids", "kinds", "lines", "times", "waits")

    def __init__(self) -> None:
        self.ids: deque[str] = deque()
        self.kinds: deque[Kind] = deque()
        self.lines: deque[str] = deque()
        self.times: deque[float] = deque()
        self.waits: deque[Wait] = deque()

    def __len__(self) -> int:
        return len(self.lines)

    def add(self, record_id: str, kind: Kind, line: str, accepted_at: float, done: Wait) -> None:
        self.ids.append(record_id)
        self.kinds.append(kind)
        self.lines.append(line)
        self.times.append(accepted_at)
        self.waits.append(done)

    def take(self, limit: int) -> _HandOver:
        """Up to ``limit`` lines from the front, removed from the queue."""
        count = min(limit, len(self.lines))
        ids, kinds, lines, times = self.ids, self.kinds, self.lines, self.times
        records = [
            (ids.popleft(), kinds.popleft(), lines.popleft(), times.popleft()) for _ in range(count)
        ]
        return _HandOver(records, [self.waits.popleft() for _ in range(count)])

    def clear(self) -> _HandOver:
        """Everything queued, removed from the queue."""
        return self.take(len(self))


class QueueSink:
    """Hands admitted lines to a ``Publisher``; see the module docstring for the guarantees.

    One sink carries both kinds of line, so a request's ``found query`` line always travels
    before (or with) its notification; ``lane(kind)`` gives the ``Sink`` for one kind.
    """

    def __init__(
        self, publisher: Publisher, options: QueueSinkOptions, *, spool_path: Path
    ) -> None:
        self._publisher = publisher
        self._options = options
        self.spool_path = spool_path
        self._queue = _Queued()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._abandon = asyncio.Event()
        self._in_flight: _HandOver | None = None
        self._held = 0  # admitted (or replayed) and not yet taken by the queue
        self._error: str | None = None
        self._failing_since = 0.0
        self._replays: list[Path] = []
        self._replay_left = 0
        self._sender: asyncio.Task[None] | None = None

    # -- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Claim a spool left by an earlier run (handed over first) and start the sender.

        Raises ``OSError`` if the spool's directory cannot be made or a spool cannot be read.
        """
        await aiofiles.os.makedirs(self.spool_path.parent, exist_ok=True)
        self._replays = await asyncio.to_thread(claim_spools, self.spool_path)
        for replay in self._replays:
            async with aiofiles.open(replay, encoding="utf-8") as spooled:
                async for text in spooled:
                    self._queue.add(*parse_wire_record(json.loads(text)), None)
        self._replay_left = len(self._queue)  # replayed lines are the first taken
        self._held += len(self._queue)
        if self._queue:
            logger.warning(
                "%s: handing over the %d lines spooled by an earlier run first",
                self._publisher.description,
                len(self._queue),
            )
        await self._check()  # know at once whether the queue is reachable (readiness, 503s)
        self._sender = asyncio.create_task(self._run(), name="queue sender")

    async def aclose(self) -> None:
        """Hand over what is held, for at most the drain timeout; spool the rest."""
        sender = self._sender
        if sender is not None and not sender.done():
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._options.drain_timeout):
                    while self._queue or self._in_flight is not None:
                        self._idle.clear()
                        await self._idle.wait()
            self._abandon.set()
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        in_flight = self._in_flight or _HandOver([], [])
        self._in_flight = None
        queued = self._queue.clear()
        leftover = _HandOver(in_flight.records + queued.records, in_flight.waits + queued.waits)
        leftover = leftover.live()
        if leftover.records:
            await self._spool(leftover)
        for replay in self._replays:  # their lines were handed over, or are in the new spool
            with contextlib.suppress(FileNotFoundError):
                await aiofiles.os.remove(replay)
        self._replays = []

    # -- the Sink protocol, through lanes ----------------------------------------------------

    def lane(self, kind: Kind) -> Sink:
        """This sink, for the lines of one kind."""
        return _Lane(self, kind)

    def admit(self) -> None:
        """Reserve room for one line, or raise ``SinkUnavailable`` (queue down, or full)."""
        if self._error is not None:
            raise SinkUnavailable(f"{self._publisher.description}: {self._error}")
        if self._held >= self._options.queue_size:
            raise SinkFull(
                f"the buffer for {self._publisher.description} is full "
                f"({self._options.queue_size} lines waiting)"
            )
        self._held += 1

    def release(self) -> None:
        self._held -= 1

    def put(self, kind: Kind, record_id: str, line: str, done: Wait) -> None:
        """Queue an admitted line for the sender."""
        self._queue.add(record_id, kind, line, time.time(), done)
        self._wake.set()

    @property
    def held(self) -> int:
        return self._held

    def health(self) -> SinkHealth:
        sender = self._sender
        return SinkHealth(
            name=self._publisher.description,
            running=sender is not None and not sender.done(),
            open=True,
            queued=self._held,
            capacity=self._options.queue_size,
            error=self._error,
        )

    # -- the sender -----------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                try:
                    async with asyncio.timeout(self._options.check_interval):
                        await self._wake.wait()
                except TimeoutError:
                    await self._check()
                    continue
            if self._options.batch_delay and len(self._queue) < self._options.batch_size:
                await asyncio.sleep(self._options.batch_delay)
            await self._hand_over(
                self._without_withdrawn(self._queue.take(self._options.batch_size))
            )

    async def _hand_over(self, batch: _HandOver) -> None:
        """Publish ``batch``, retrying with backoff until the queue takes it.

        Before each retry the lines whose waiting request gave up (and answered 503) are left
        out, so that such a line is not handed over once the queue is back: a 503 means "not
        handed over", unless an attempt that failed had reached the queue after all. A batch
        left with no line is dropped without a word of recovery: the queue may still be down.
        """
        batch_id = new_id()
        attempt = 0
        while batch.records:
            self._in_flight = batch  # what aclose spools if shutdown cancels us meanwhile
            try:
                await self._publisher.publish(batch_id, batch.records)
            except HandoffFailed as exc:
                self._failed(str(exc), len(batch.records) + len(self._queue))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._options.retry.delay(attempt)):
                        await self._abandon.wait()
                attempt += 1
                batch = self._without_withdrawn(batch)
            else:
                break
        self._in_flight = None
        records = batch.records
        if not records:  # every line was withdrawn while the queue was down
            return
        self._held -= len(records)
        self._recovered()
        resolve_waits(batch.waits)
        if self._replay_left:
            self._replay_left -= min(self._replay_left, len(records))
            if self._replay_left == 0:
                await self._forget_replays()

    def _without_withdrawn(self, batch: _HandOver) -> _HandOver:
        """``batch`` without its withdrawn lines, whose room is given back."""
        kept = batch.live()
        self._held -= len(batch.records) - len(kept.records)
        return kept

    async def _check(self) -> None:
        try:
            await self._publisher.ping()
        except HandoffFailed as exc:
            self._failed(str(exc), self._held)
        else:
            self._recovered()

    def _failed(self, error: str, waiting: int) -> None:
        if self._error is None:
            self._failing_since = time.monotonic()
            logger.error(
                "%s: cannot hand lines over: %s; retrying, %d lines waiting",
                self._publisher.description,
                error,
                waiting,
            )
        self._error = error

    def _recovered(self) -> None:
        if self._error is not None:
            logger.warning(
                "%s: reachable again after %.1f s; %d lines waiting",
                self._publisher.description,
                time.monotonic() - self._failing_since,
                self._held,
            )
            self._error = None

    async def _forget_replays(self) -> None:
        for replay in self._replays:
            with contextlib.suppress(FileNotFoundError):
                await aiofiles.os.remove(replay)
        self._replays = []

    async def _spool(self, items: _HandOver) -> None:
        data = "".join(json.dumps(record) + "\n" for record in items.records)
        reason = "not handed over by the shutdown deadline; kept in the spool"
        try:
            async with aiofiles.open(self.spool_path, "a", encoding="utf-8") as spool:
                await spool.write(data)
                await spool.flush()
                await asyncio.to_thread(os.fsync, spool.fileno())
        except OSError as exc:
            reason = f"not handed over by the shutdown deadline, and the spool failed: {exc}"
            logger.error(
                "%s: %d lines not handed over by the shutdown deadline, and the spool %s "
                "cannot be written (%s): they are lost",
                self._publisher.description,
                len(items.records),
                self.spool_path,
                exc,
            )
        else:
            logger.warning(
                "%s: %d lines not handed over by the shutdown deadline; spooled to %s, "
                "handed over at the next start",
                self._publisher.description,
                len(items.records),
                self.spool_path,
            )
        fail_waits(items.waits, reason)


class _Lane:
    """A ``QueueSink`` as the ``Sink`` of one kind of line."""

    def __init__(self, sink: QueueSink, kind: Kind) -> None:
        self._sink = sink
        self._kind = kind

    def admit(self) -> None:
        self._sink.admit()

    def release(self) -> None:
        self._sink.release()

    def submit(self, record_id: str, line: str, done: Wait = None) -> None:
        self._sink.put(self._kind, record_id, line, done)

    async def aclose(self) -> None:
        """The lifespan closes the sink itself, once."""

    def health(self) -> SinkHealth:
        return self._sink.health()
