"""The delivery core: everything a batching sink does around its own I/O, written once.

A ``BatchSink`` takes lines (``admit`` while the request is handled, ``submit`` from its
background task) into a bounded queue. One sender task takes what is queued, up to
``batch_size`` lines (after lingering ``batch_delay`` for more), and hands the batch to its
``Target`` — the sink's only own code: append to a file, publish to Redis, add to the
outbox. A line may carry a future (``NOTIFY_ACK=write``), resolved once its batch is
delivered: many waiting requests share one delivery (group commit).

Around the target the core owns:

- **admission**: a full queue refuses (``SinkFull``); a target failing refuses too when the
  callers wait for delivery (``refuse_while_failing``), so no 200 is given for a line that is
  not being delivered; a sender that died refuses with its reason;
- **retries**: a batch that fails (``TargetError``) is retried with capped exponential
  backoff and jitter (``BatchOptions.retry``, a ``service.retry.Backoff``); the lines behind
  it wait, in order. Before a retry of a batch not begun, the lines whose request gave up
  waiting (and answered 503) are left out;
- **failure episodes**: one log line when a target starts failing, one when it recovers (a
  ``service.retry.Episode``);
- **idle checks**: every ``check_interval`` seconds without lines the target checks itself
  (a moved log, an unreachable Redis), so readiness follows the target without traffic;
- **shutdown**: ``aclose`` delivers for at most ``drain_timeout`` seconds; what is left goes
  to the spool, which the next start claims and delivers before any new line;
- **a sender that dies** unexpectedly is logged once, with its traceback; from then on the
  sink refuses lines with the reason and ``health`` says so. Nothing accepted is dropped: the
  lines it held are spooled at shutdown.

Lines wait as plain values in a few deques, never as an object per line: a line outlives its
request, and an object per line that the garbage collector tracks set off a collection of its
youngest generation every ~50 requests under load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from service.records import Kind
from service.retry import Backoff, Episode
from service.sinks.base import SinkFull, SinkHealth, SinkListener, SinkUnavailable, Wait
from service.sinks.spool import Spool
from service.wire import WireRecord

__all__ = [
    "Batch",
    "BatchOptions",
    "BatchSink",
    "Target",
    "TargetError",
]

logger = logging.getLogger("service.sinks")


class TargetError(Exception):
    """A delivery (or a check) failed for now; ``str()`` says why in one line, fit for a 503
    and ``/readyz``. ``detail``, when given, is the fuller reason for the service's own log
    (an address, say, that clients need not see). The core retries it; a target raises this
    only for failures that may pass."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reason)
        self.detail = detail


@dataclass(frozen=True, slots=True)
class BatchOptions:
    """How a batching sink behaves (from ``Settings``)."""

    queue_size: int = 100_000
    batch_size: int = 4096
    batch_delay: float = 0.0
    """Seconds to wait for more lines after the first of a batch: under load, lines arrive
    one at a time faster than a delivery, and a delivery per line costs more than the line.
    Shutdown ends the wait (``aclose`` drains at once)."""
    drain_timeout: float = 10.0
    retry: Backoff = field(default_factory=Backoff)
    """The wait between attempts to deliver a failing batch (equal jitter by default)."""
    check_interval: float = 1.0
    """Seconds between the target's checks of itself while no line comes."""
    refuse_while_failing: bool = False
    """Refuse new lines (503) while the target fails, for callers that wait for delivery."""


class Batch:
    """Lines taken from the queue together, as parallel lists: ``ids[i]``'s line is
    ``lines[i]``, of kind ``kinds[i]``, accepted at ``times[i]``; ``waits[i]`` is its
    request's future (``NOTIFY_ACK=write``) or None.

    ``progress`` is the target's: how much of the batch it has delivered so far, in its own
    unit (bytes for a file). Once it is above 0 no line of the batch can be left out."""

    __slots__ = ("ids", "kinds", "lines", "progress", "times", "waits")

    def __init__(
        self,
        ids: list[str],
        kinds: list[Kind],
        lines: list[str],
        times: list[float],
        waits: list[Wait],
    ) -> None:
        self.ids, self.kinds, self.lines, self.times, self.waits = ids, kinds, lines, times, waits
        self.progress = 0

    def __len__(self) -> int:
        return len(self.lines)

    def records(self) -> list[WireRecord]:
        """The batch's lines as records (for a queue, or a spool)."""
        return list(zip(self.ids, self.kinds, self.lines, self.times, strict=True))

    def live(self) -> Batch:
        """This batch without the lines whose waiting request gave up (and answered 503)."""
        waits = self.waits
        if not any(waits) or not any(wait is not None and wait.cancelled() for wait in waits):
            return self
        kept = [index for index, wait in enumerate(waits) if wait is None or not wait.cancelled()]
        return Batch(
            [self.ids[index] for index in kept],
            [self.kinds[index] for index in kept],
            [self.lines[index] for index in kept],
            [self.times[index] for index in kept],
            [waits[index] for index in kept],
        )

    def resolve(self) -> None:
        """Tell the requests still waiting that their lines are delivered."""
        for wait in self.waits:
            if wait is not None and not wait.done():
                wait.set_result(None)

    def fail(self, reason: str) -> None:
        """Tell the requests still waiting that their lines will not be delivered now."""
        for wait in self.waits:
            if wait is not None and not wait.done():
                wait.set_exception(SinkUnavailable(reason))

    @classmethod
    def of(cls, records: Iterable[WireRecord]) -> Batch:
        """A batch of ``records`` that nobody waits for (replayed from a spool)."""
        batch = cls([], [], [], [], [])
        for record_id, kind, line, accepted_at in records:
            batch.ids.append(record_id)
            batch.kinds.append(kind)
            batch.lines.append(line)
            batch.times.append(accepted_at)
            batch.waits.append(None)
        return batch


class Target(Protocol):
    """A batching sink's own I/O, the writer's target: it writes a batch. The only part a
    new sink writes (like httpx's transports).

    Every method but ``send`` has a sensible nothing-to-do; ``TargetError`` is a failure
    that may pass (retried); any other exception is a bug, and stops the sink loudly.
    """

    name: str
    """Short, for ``/readyz`` and metrics: the log's path, ``redis stream notifications``."""
    description: str
    """For errors and the service's log: ``log file /var/log/notify.txt``."""

    @property
    def is_open(self) -> bool:
        """Whether the target's resource is open now (``/readyz``)."""

    async def open(self) -> None:
        """Open the resource at startup; ``OSError`` or ``ValueError`` if it cannot be."""

    async def send(self, batch: Batch) -> None:
        """Deliver every line of ``batch``, in order, or raise ``TargetError``. Called again
        with the same batch after a failure: resume from ``batch.progress``."""

    async def check(self) -> bool:
        """Check the resource while idle (and redo what it found undone): True when that
        shows deliveries work again (a failure episode ends), False when it tells nothing
        about them; ``TargetError`` if it fails."""

    def unsent(self, batch: Batch) -> list[WireRecord]:
        """The records of ``batch`` not delivered yet (all of them unless it has begun)."""

    async def close(self) -> list[WireRecord]:
        """Release the resource at shutdown; returns records it still owed (to spool)."""


class _Abandoned(Exception):
    """Shutdown's deadline passed while a batch was still undelivered."""


class _Pending:
    """The lines waiting for the sender, in order: a deque of plain values per field."""

    __slots__ = ("ids", "kinds", "lines", "times", "waits")

    def __init__(self) -> None:
        self.ids: deque[str] = deque()
        self.kinds: deque[Kind] = deque()
        self.lines: deque[str] = deque()
        self.times: deque[float] = deque()
        self.waits: deque[Wait] = deque()

    def __len__(self) -> int:
        return len(self.lines)

    def take(self, limit: int) -> Batch:
        """The first ``limit`` lines, removed from the queue."""
        if len(self.lines) <= limit:
            batch = Batch(
                list(self.ids), list(self.kinds), list(self.lines), list(self.times),
                list(self.waits),
            )  # fmt: skip
            self.ids.clear()
            self.kinds.clear()
            self.lines.clear()
            self.times.clear()
            self.waits.clear()
            return batch
        ids, kinds, lines, times, waits = self.ids, self.kinds, self.lines, self.times, self.waits
        return Batch(
            [ids.popleft() for _ in range(limit)],
            [kinds.popleft() for _ in range(limit)],
            [lines.popleft() for _ in range(limit)],
            [times.popleft() for _ in range(limit)],
            [waits.popleft() for _ in range(limit)],
        )


class BatchSink:
    """A target behind the delivery core; see the module docstring.

    It takes lines (``admit``, ``release``, ``submit``: the ``Lines`` protocol) and owns a
    resource (``start``, ``aclose``: the ``Resource`` protocol). Build one per lifespan run:
    its asyncio objects belong to the loop that runs it.
    """

    def __init__(
        self,
        target: Target,
        options: BatchOptions,
        *,
        spool: Spool,
        listener: SinkListener | None = None,
    ) -> None:
        self.target = target
        self.spool = spool
        self._options = options
        self._listener = listener
        self._capacity = options.queue_size
        self._queue = _Pending()
        self._held = 0  # lines admitted (or replayed) and not yet delivered
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # set by the sender each time the queue is empty
        self._abandon = asyncio.Event()
        self._closing = False  # set by aclose: linger no more
        self._lingering: asyncio.Future[None] | None = None
        self._busy = False  # the sender is delivering or checking: never cancel it then
        self._sending = False  # within the target's ``send`` (not between retries)
        self._in_flight: Batch | None = None
        self._episode = Episode(
            logger,
            target.description,
            failing="write failed: {error}; keeping the lines and retrying, {waiting} waiting",
            recovered="writing again after {seconds:.1f} s; {waited} lines had waited",
        )
        """The failure episode under way, if any: its ``error`` is what 503s and ``/readyz``
        say while the target fails."""
        self._probe_after = math.inf
        """While failing, when a line may be admitted again to try the target (half-open)."""
        self._stopped: str | None = None  # why the sender died, if it did
        self._replay_left = 0  # lines from the claimed spool not yet delivered
        self._sender: asyncio.Task[None] | None = None

    # -- the Resource protocol ------------------------------------------------------------

    async def start(self) -> None:
        """Open the target, claim a spool left by an earlier run (delivered before any new
        line) and start the sender. ``OSError`` or ``ValueError`` if it cannot start."""
        await self.target.open()
        replayed = await self.spool.claim()
        if replayed:
            logger.warning(
                "%s: delivering the %d lines spooled by an earlier run first",
                self.target.description,
                len(replayed),
            )
            self._enqueue(Batch.of(replayed))
            self._held += len(replayed)
            self._replay_left = len(replayed)
        else:
            await self.spool.release_claimed()
        with contextlib.suppress(TargetError):
            await self._check()  # know at once whether the target works (readiness, 503s)
        self._sender = asyncio.create_task(
            self._run(), name=f"sender for {self.target.description}"
        )

    async def aclose(self) -> None:
        """Deliver what is held, for at most the drain timeout; spool the rest; close."""
        sender = self._sender
        if sender is not None and not sender.done():
            self._closing = True
            if self._lingering is not None:
                _resolve(self._lingering)
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._options.drain_timeout):
                    while self._queue or self._busy:
                        self._idle.clear()
                        await self._idle.wait()
            self._abandon.set()
            if not self._busy:
                sender.cancel()  # waiting for lines: nothing is half-delivered
            elif self._sending:
                # A delivery is under way past the deadline (it may hang: a disk that stopped
                # answering): what waits behind it goes to the spool now, not once it returns
                # (a SIGKILL after the grace period would lose it). Only the batch in flight,
                # whose progress is unknown until it returns, waits for it (and is replayed
                # after them). Between two attempts the sender stops at once (``_abandon``),
                # and the batch is spooled first, in order, below.
                behind = self._queue.take(len(self._queue)).live()
                if behind:
                    behind.fail("not delivered by the shutdown deadline; kept in the spool")
                    await self._spool(behind.records())
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        owed = await self.target.close()
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            in_flight = in_flight.live() if not in_flight.progress else in_flight
            owed += self.target.unsent(in_flight)
            in_flight.fail("not delivered by the shutdown deadline; kept in the spool")
        queued = self._queue.take(len(self._queue)).live()
        queued.fail("not delivered by the shutdown deadline; kept in the spool")
        owed += queued.records()
        if owed:
            await self._spool(owed)
        await self.spool.release_claimed()  # their lines were delivered, or are in the spool

    # -- the Lines protocol ---------------------------------------------------------------

    def admit(self) -> None:
        """Reserve room for one line, or raise ``SinkUnavailable`` (full, failing, stopped)."""
        if self._held >= self._capacity:
            raise SinkFull(
                f"the buffer of {self.target.description} is full ({self._capacity} lines waiting)"
            )
        if self._stopped is not None:
            raise SinkUnavailable(f"{self.target.description}: {self._stopped}")
        error = self._episode.error
        if error is not None and self._options.refuse_while_failing and not self._probing():
            raise SinkUnavailable(f"{self.target.description}: writes failing: {error}")
        self._held += 1

    def release(self) -> None:
        """Give back one reservation that will not be used."""
        self._held -= 1

    def submit(self, record_id: str, kind: Kind, line: str, done: Wait = None) -> None:
        """Queue an admitted ``line`` for the sender. Never waits (a plain call)."""
        queue = self._queue
        queue.ids.append(record_id)
        queue.kinds.append(kind)
        queue.times.append(time.time())
        queue.waits.append(done)
        lines = queue.lines
        lines.append(line)
        if len(lines) == 1:  # it was empty: the sender may be waiting for it
            self._wake.set()

    @property
    def held(self) -> int:
        """Lines admitted and not yet delivered."""
        return self._held

    def health(self) -> SinkHealth:
        sender = self._sender
        error = self._stopped or (None if self._probing() else self._episode.error)
        return SinkHealth(
            name=self.target.name,
            running=sender is not None and not sender.done(),
            open=self.target.is_open,
            queued=self._held,
            capacity=self._capacity,
            error=error,
        )

    def _probing(self) -> bool:
        """Failing, but with nothing left to retry (every line was withdrawn) and the retry
        delay over: lines are taken again, and the next delivery tries the target."""
        return time.monotonic() >= self._probe_after

    def _enqueue(self, batch: Batch) -> None:
        queue = self._queue
        queue.ids.extend(batch.ids)
        queue.kinds.extend(batch.kinds)
        queue.lines.extend(batch.lines)
        queue.times.extend(batch.times)
        queue.waits.extend(batch.waits)

    # -- the sender -----------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._send_forever()
        except Exception as exc:  # a bug: loud once, then refuse rather than lose silently
            self._stopped = f"sender stopped: {type(exc).__name__}: {exc}"
            logger.exception(
                "%s: the sender stopped; refusing new lines until restart",
                self.target.description,
            )
            if self._in_flight is not None:
                self._in_flight.fail(self._stopped)
            for wait in self._queue.waits:
                if wait is not None and not wait.done():
                    wait.set_exception(SinkUnavailable(self._stopped))
            self._busy = False
            self._idle.set()

    async def _send_forever(self) -> None:
        queue, options = self._queue, self._options
        batch_size, delay = options.batch_size, options.batch_delay
        while True:
            if not queue:
                self._idle.set()
                self._wake.clear()
                try:
                    async with asyncio.timeout(options.check_interval):
                        await self._wake.wait()
                except TimeoutError:
                    self._busy = True
                    try:
                        await self._check()
                    except TargetError:
                        pass
                    finally:
                        self._busy = False
                    continue
            self._busy = True  # from here on the batch is ours: never cancel mid-batch
            try:
                if delay and len(queue) < batch_size and not self._closing:
                    await self._linger(delay)
                await self._deliver(queue.take(batch_size))
            except _Abandoned:
                return
            finally:
                self._busy = False
            if self._abandon.is_set():  # shutdown's deadline passed: leave the rest to aclose
                return

    async def _linger(self, delay: float) -> None:
        """Wait ``delay`` seconds for more lines, or until ``aclose`` (as ``asyncio.sleep``
        waits: a future and a timer)."""
        loop = asyncio.get_running_loop()
        waiter = self._lingering = loop.create_future()
        timer = loop.call_later(delay, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._lingering = None

    async def _deliver(self, batch: Batch) -> None:
        """Send ``batch``, retrying with backoff until it is delivered or abandoned."""
        batch = self._without_withdrawn(batch)
        started = time.perf_counter()
        attempt = 0
        while batch:
            self._in_flight = batch  # what aclose spools if the deadline passes meanwhile
            try:
                self._sending = True
                try:
                    await self.target.send(batch)
                finally:
                    self._sending = False
            except TargetError as exc:
                attempt += 1
                self._probe_after = math.inf
                self._failed(str(exc), exc.detail)
                if self._listener is not None:
                    self._listener.failed(batch.ids, str(exc), attempt)
                await self._wait_before_retry(attempt - 1)
                if not batch.progress:
                    batch = self._without_withdrawn(batch)
                continue
            break
        self._in_flight = None
        if not batch:
            # Every line was withdrawn, none delivered: the target is still failing as far
            # as we know. After one more retry delay new lines are taken again to try it.
            if attempt:
                self._probe_after = time.monotonic() + self._options.retry.delay(attempt)
            return
        self._held -= len(batch)
        self._recovered()
        batch.resolve()
        if self._listener is not None:
            elapsed = time.perf_counter() - started
            self._listener.written(batch.ids, attempt + 1, elapsed, batch.kinds)
        if self._replay_left:
            self._replay_left -= min(self._replay_left, len(batch))
            if not self._replay_left:
                await self.spool.release_claimed()

    def _without_withdrawn(self, batch: Batch) -> Batch:
        """``batch`` without its withdrawn lines, whose room is given back."""
        kept = batch.live()
        self._held -= len(batch) - len(kept)
        return kept

    async def _check(self) -> None:
        try:
            works = await self.target.check()
        except TargetError as exc:
            self._failed(str(exc), exc.detail)
            raise
        if works:
            self._recovered()

    async def _wait_before_retry(self, attempt: int) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._options.retry.delay(attempt)):
                await self._abandon.wait()
        if self._abandon.is_set():
            raise _Abandoned

    def _failed(self, error: str, detail: str | None = None) -> None:
        """A delivery or a check failed: the first failure of an episode is logged."""
        self._episode.fail(error, detail=detail, waiting=self._held)

    def _recovered(self) -> None:
        """A delivery or a check worked: an episode under way ends, and is logged."""
        if self._episode.recover(waited=self._held) is not None:
            self._probe_after = math.inf

    async def _spool(self, records: list[WireRecord]) -> None:
        """Keep ``records`` for the next start; if even that fails, put them in our log."""
        try:
            await self.spool.append(records)
        except OSError as exc:
            logger.error(
                "%s: %d lines not delivered by the shutdown deadline, and the spool %s failed "
                "too (%s); the lines follow",
                self.target.description,
                len(records),
                self.spool.path,
                exc,
            )
            for record in records:
                logger.error("unwritten: %s", record[2].rstrip("\n"))
            return
        logger.error(
            "%s: %d lines not delivered by the shutdown deadline; kept in %s",
            self.target.description,
            len(records),
            self.spool.path,
        )


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
