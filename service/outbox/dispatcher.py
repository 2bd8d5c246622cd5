"""Delivery from the outbox: claim what is due, send it, record what happened.

One ``Dispatcher`` per channel per process. It works in *turns*: one call to the outbox
(``settle``, one transaction) records the outcomes of the sends that ended since the last turn
and claims due deliveries for the connections they freed. A connection sends its next message
only once the outcome of its last one is recorded, so at most ``concurrency`` (the channel's
connections) are ever sent and not yet recorded: after a kill, at most that many are sent again.
Each delivery is sent by the channel's ``send``; what it comes to:

- delivered: done;
- ``PermanentFailure`` (SMTP 5xx): dead at once, until an operator retries it;
- ``TemporaryFailure`` (SMTP 4xx): this delivery alone waits, with capped exponential backoff
  and jitter, and is tried again; after ``max_age`` since it was accepted it is dead;
- ``ChannelUnavailable`` (unreachable, refused, timeout, 421, an unknown outcome): the whole
  channel pauses with that backoff, as a failing disk pauses the log, instead of one failing
  attempt per delivery; the delivery waits for the end of the pause;
- a temporary failure's ``retry_after`` (HTTP ``Retry-After``) is a minimum: the delivery (or
  the channel) waits at least that long, the backoff when it is longer;
- ``ChannelGone`` (a webhook's 410): the delivery is dead and the channel *disabled*: its
  pending deliveries, and those that arrive later, become dead without an attempt, until
  ``enable`` (an operator's call, or a restart).

While requests have the event loop saturated (``api_busy``, from ``load.LoopLoad``), the
dispatcher sends one message at a time, ``BUSY_RATE`` a second, and on every connection again
once the burst is over.

One log line marks the start of a failure episode and one its end; ``health`` says whether the
channel is failing (``/readyz`` names it without refusing requests: the outbox holds the mail).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from service.outbox.base import Delivery, Outbox, Outcome
from service.tasks import stop

__all__ = [
    "ChannelFailure",
    "ChannelGone",
    "DeliveryListener",
    "DispatchOptions",
    "Dispatcher",
    "PermanentError",
    "TemporaryError",
]

logger = logging.getLogger("service.outbox")


class TemporaryError(Exception):
    """This delivery failed for now; retry it alone, later: not before ``retry_after``
    seconds when the receiver asked for that (HTTP ``Retry-After``), else after the backoff."""

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class PermanentError(Exception):
    """This delivery can never succeed as it is: dead at once."""


class ChannelFailure(TemporaryError):
    """The channel itself cannot deliver now: pause it (at least ``retry_after`` seconds when
    given), then retry."""


class ChannelGone(PermanentError):
    """The destination is gone for good (HTTP 410): this delivery is dead, and the channel is
    disabled, its pending deliveries dead too, until an operator enables it again."""


class DeliveryListener(Protocol):
    """Told each outcome (the metrics listen)."""

    def delivered(self, channel: str, seconds: float) -> None:
        """Delivered ``seconds`` after the notification was accepted."""

    def retried(self, channel: str) -> None: ...

    def dead(self, channel: str, count: int = 1) -> None: ...

    def disabled(self, channel: str, disabled: bool) -> None:
        """The channel was disabled (its destination is gone) or enabled again."""


@dataclass(frozen=True, slots=True)
class DispatchOptions:
    concurrency: int = 4
    retry_initial: float = 0.05
    retry_max: float = 300.0
    max_age: float = 24 * 3600.0
    poll_interval: float = 1.0
    """Seconds between looks at the outbox when nothing told this process of new work (other
    processes add rows too)."""
    rate: float | None = None
    """At most this many sends a second, if set."""
    drain_timeout: float = 10.0


BUSY_RATE = 20.0
"""Sends a second (one at a time) while requests have the event loop saturated: 0.6 % of the
loop for an email channel, and still a steady trickle through the longest burst."""


def backoff(initial: float, maximum: float, attempt: int) -> float:
    """Capped exponential backoff with jitter: between half and all of the ceiling."""
    ceiling = min(maximum, initial * 2.0**attempt)
    return random.uniform(ceiling / 2, ceiling)


class Dispatcher:
    """Delivers one channel's due deliveries; see the module docstring."""

    def __init__(
        self,
        outbox: Outbox,
        channel: str,
        send: Callable[[Delivery], Awaitable[None]],
        options: DispatchOptions,
        listener: DeliveryListener | None = None,
        api_busy: Callable[[], bool] | None = None,
    ) -> None:
        self.channel = channel
        self._api_busy = api_busy
        """While it says so, send one at a time, ``BUSY_RATE`` a second (``load.LoopLoad``)."""
        self._outbox = outbox
        self._send = send
        self._options = options
        self._listener = listener
        self._wake = asyncio.Event()
        """Set when an attempt ends, new work is added, or the channel is enabled/disabled."""
        self._sending: set[asyncio.Task[None]] = set()
        self._finished: list[Outcome] = []
        """Outcomes not yet recorded: each still holds its connection."""
        self._held = 0
        """Connections held: claimed deliveries whose outcome is not yet recorded."""
        self._error: str | None = None
        self._failing_since = 0.0
        self._channel_failures = 0
        self._paused_until = 0.0
        self._next_send = 0.0
        self._disabled: str | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def error(self) -> str | None:
        """Why the channel is failing (or disabled) now, or None."""
        if self._disabled is not None:
            return self._disabled
        return self._error

    @property
    def disabled(self) -> bool:
        """Whether the channel is disabled (its destination said it is gone)."""
        return self._disabled is not None

    def disable(self, reason: str) -> None:
        """Send nothing more: pending deliveries become dead with ``reason``, until
        ``enable``."""
        if self._disabled is None:
            logger.error("%s: disabled: %s", self.channel, reason)
            if self._listener is not None:
                self._listener.disabled(self.channel, True)
        self._disabled = reason
        self._wake.set()

    def enable(self) -> bool:
        """Deliver again after ``disable``; whether the channel was disabled."""
        if self._disabled is None:
            return False
        self._disabled = None
        self._recovered()
        logger.info("%s: enabled again", self.channel)
        if self._listener is not None:
            self._listener.disabled(self.channel, False)
        self._wake.set()
        return True

    def wake(self) -> None:
        """New deliveries were added: look now rather than at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"{self.channel} dispatcher")

    async def aclose(self) -> None:
        """Claim nothing more; let the sends in flight finish (within the drain timeout) and
        record their outcomes; leases of what was not sent expire, and the next start (or
        another process) sends it."""
        task, self._task = self._task, None
        await stop(task)
        if self._sending:
            await asyncio.wait(self._sending, timeout=self._options.drain_timeout)
        for sending in self._sending:
            sending.cancel()
        if self._finished:
            with contextlib.suppress(Exception):  # not recorded: sent again, at least once
                await self._settle(0)

    # -- the loop -------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._wake.clear()  # set again by whatever happens while this turn runs
            if self._disabled is not None:
                await self._bury_pending(self._disabled)
                continue
            paused = self._paused_until - time.monotonic()
            # The connections of the outcomes recorded by this turn are free for its claim.
            in_progress = self._held - len(self._finished)
            busy = self._api_busy is not None and self._api_busy()
            connections = 1 if busy else self._options.concurrency
            free = 0 if paused > 0 else connections - in_progress
            if not self._finished and free <= 0:
                # Every connection busy, or paused: wait for an outcome (or the pause's end).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(paused if paused > 0 else None):
                        await self._wake.wait()
                continue
            try:
                claimed = await self._settle(free)
            except Exception:
                logger.exception("%s: cannot read the outbox; trying again", self.channel)
                await asyncio.sleep(self._options.poll_interval)
                continue
            self._held += len(claimed)
            rate = self._options.rate
            if busy:
                rate = min(rate or BUSY_RATE, BUSY_RATE)
            for delivery in claimed:
                await self._pace(rate)
                task = asyncio.create_task(self._deliver(delivery))
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)
            if not claimed and free > 0 and not self._finished:
                await self._idle()

    async def _settle(self, claim: int) -> list[Delivery]:
        """One turn: record the outcomes waiting, claim up to ``claim``; tell the listener
        what was recorded. On failure the outcomes wait for the next turn."""
        finished, self._finished = self._finished, []
        try:
            claimed = await self._outbox.settle(self.channel, finished, claim)
        except BaseException:
            self._finished[:0] = finished
            raise
        self._held -= len(finished)
        for outcome in finished:
            self._tell(outcome)
        return claimed

    async def _bury_pending(self, reason: str) -> None:
        """While disabled: record what ended, make the channel's pending deliveries dead, then
        wait for more (a wake or the poll interval)."""
        try:
            if self._finished:
                await self._settle(0)
            buried = await self._outbox.bury(self.channel, f"disabled: {reason}")
        except Exception:
            logger.exception("%s: cannot read the outbox; trying again", self.channel)
            await asyncio.sleep(self._options.poll_interval)
            return
        if buried and self._listener is not None:
            self._listener.dead(self.channel, buried)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._options.poll_interval):
                await self._wake.wait()

    async def _idle(self) -> None:
        """Wait for new work: a wake, the next due delivery, or the poll interval."""
        timeout = self._options.poll_interval
        with contextlib.suppress(Exception):
            due = await self._outbox.next_due(self.channel)
            if due is not None:
                timeout = min(timeout, max(0.0, due - time.time()))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()

    async def _pace(self, rate: float | None) -> None:
        """Wait for this send's turn under ``rate`` (sends a second), if any."""
        if not rate:
            return
        now = time.monotonic()
        if self._next_send > now:
            await asyncio.sleep(self._next_send - now)
        self._next_send = max(now, self._next_send) + 1.0 / rate

    # -- one delivery ---------------------------------------------------------------------

    async def _deliver(self, delivery: Delivery) -> None:
        """Attempt ``delivery``, and hand its outcome to the next turn."""
        outcome = await self._attempt(delivery)
        self._finished.append(outcome)  # the list of now: a turn may have taken the last one
        self._wake.set()

    async def _attempt(self, delivery: Delivery) -> Outcome:
        options = self._options
        if time.time() - delivery.since > options.max_age:
            return Outcome(delivery, "dead", f"not delivered within {options.max_age:g} s")
        if self._disabled is not None:  # disabled while this one waited for its turn
            return Outcome(delivery, "dead", f"disabled: {self._disabled}")
        try:
            await self._send(delivery)
        except ChannelGone as exc:
            self.disable(str(exc))
            return Outcome(delivery, "dead", str(exc))
        except PermanentError as exc:
            self._recovered()  # the server answered: the channel works
            return Outcome(delivery, "dead", str(exc))
        except ChannelFailure as exc:
            delay = self._pause(str(exc), exc.retry_after)
            return self._retry_or_die(delivery, str(exc), delay)
        except TemporaryError as exc:
            self._recovered()
            delay = backoff(options.retry_initial, options.retry_max, delivery.attempts)
            if exc.retry_after is not None:
                delay = max(delay, exc.retry_after)
            return self._retry_or_die(delivery, str(exc), delay)
        except Exception as exc:  # a bug in the channel: loud, and the delivery is kept
            logger.exception("%s: sending failed unexpectedly", self.channel)
            delay = self._pause(f"{type(exc).__name__}: {exc}")
            return self._retry_or_die(delivery, f"{type(exc).__name__}: {exc}", delay)
        self._recovered()
        return Outcome(delivery, "delivered")

    def _retry_or_die(self, delivery: Delivery, error: str, delay: float) -> Outcome:
        at = time.time() + delay
        if at - delivery.since > self._options.max_age:
            return Outcome(delivery, "dead", f"{error}; not delivered within the time allowed")
        return Outcome(delivery, "retrying", error, next_attempt_at=at)

    def _tell(self, outcome: Outcome) -> None:
        listener = self._listener
        if listener is None:
            return
        if outcome.status == "delivered":
            listener.delivered(self.channel, outcome.at - outcome.delivery.accepted_at)
        elif outcome.status == "dead":
            listener.dead(self.channel)
        else:
            listener.retried(self.channel)

    def _pause(self, error: str, at_least: float | None = None) -> float:
        """Pause the channel (longer each time in a row, and at least ``at_least`` seconds
        when given); returns the pause in seconds."""
        options = self._options
        delay = backoff(options.retry_initial, options.retry_max, self._channel_failures)
        if at_least is not None:
            delay = max(delay, at_least)
        self._channel_failures += 1
        self._paused_until = max(self._paused_until, time.monotonic() + delay)
        if self._error is None:
            self._failing_since = time.monotonic()
            logger.error("%s: cannot deliver: %s; pausing and retrying", self.channel, error)
        self._error = error
        return delay

    def _recovered(self) -> None:
        self._channel_failures = 0
        if self._error is not None:
            logger.info(
                "%s: delivering again after %.1f s",
                self.channel,
                time.monotonic() - self._failing_since,
            )
            self._error = None
