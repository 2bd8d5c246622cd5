"""Delivery from the outbox: claim what is due, send it through its channel, record what
happened.

One ``Dispatcher`` per channel per process. It works in *turns*: one call to the outbox
(``settle``, one transaction) records the outcomes of the sends that ended since the last turn
and claims due deliveries for the connections they freed. A connection sends its next message
only once the outcome of its last one is recorded, so at most ``channel.concurrency`` are ever
sent and not yet recorded: after a kill, at most that many are sent again.

**Concurrency follows the receiver** (Postfix's per-destination concurrency window, TCP's
congestion window). The window starts at ``channel.min_concurrency``; each delivery that went
through while others waited for a connection, no slower than twice the fastest send (the
receiver not queueing), widens it by one (slow start), and past the threshold by one per
window's worth of deliveries, up to ``channel.concurrency``. A round that
finds the channel down (refused, timed out, SMTP 421, HTTP 429/502/503/504) halves it at once,
not below the floor, and the threshold with it. So a distant receiver (50 ms a message) gets
as many connections as keep it busy, and a failing one fewer. ``notify_channel_concurrency``
shows the window.

What an attempt comes to (``service.channels.base``):

- ``send`` returns: delivered;
- ``Dead``: dead at once, until an operator retries it;
- ``Retry``: this delivery alone waits, with capped exponential backoff and jitter on its own
  attempts (at most ``NOTIFY_DELIVERY_RETRY_MAX``), and at least its ``after``
  (``Retry-After``, up to that maximum); after ``max_age`` since it was accepted it is dead;
- ``ChannelDown``: the channel pauses (below); the delivery waits for the channel;
- ``Gone``: the delivery is dead and the channel *disabled*: its pending deliveries, and those
  that arrive later, become dead without an attempt, until ``enable`` (an operator's call, or
  a restart).

**Disabled is recorded in the outbox** (``Outbox.disable``), so that it holds for every
process sharing it: the dispatchers of the channel in other processes look at that record
once per ``poll_interval`` and stop too, and ``/readyz`` shows it from any process. An
operator's ``enable`` in any process drops the record (``Outbox.enable``); a disabled
dispatcher looks at it at each wake (a delivery process is woken by any other process's
commit to the SQLite outbox: ``service.deliver.OutboxChanges``) and at least once per
``poll_interval``, and delivers again once it is gone. A dispatcher that starts drops it, as
it drops a pause left by a process that died: a restart enables the channel.

**A failing channel is paused per round and probed** (a circuit breaker). The first
``ChannelDown`` of a round of sends pauses the channel; the other sends of that round that
fail too (up to ``concurrency`` were in flight) wait for the same pause and do not lengthen it.
When the pause ends one delivery is sent alone, the probe: delivered (or any answer from the
receiver: ``Retry``, ``Dead``) ends the episode and every connection is used again at once;
``ChannelDown`` starts the next, longer pause. The pauses grow by the channel backoff
(``NOTIFY_RETRY_INITIAL`` doubling, jittered) up to ``NOTIFY_CHANNEL_PAUSE_MAX``, whatever a
single delivery's own backoff may reach: a channel whose receiver is back delivers again
within that many seconds. A receiver's ``Retry-After`` is honoured. While paused, the outbox
records the pause (``Outbox.pause``), so every waiting delivery shows ``retrying`` with the
probe's time as its next attempt.

While requests have the event loop saturated (``api_busy``, from ``load.LoopLoad``), the
dispatcher sends one message at a time, ``BUSY_RATE`` a second, and on every connection again
once the burst is over.

**A paced channel** (``channel.rate``, or ``BUSY_RATE`` then) claims one delivery when its turn
comes and sends it at once: none waits for its turn under a lease that could run out (and
another holder send it too). A claim that gives back a delivery this dispatcher is still
sending (its lease ran out: the wall clock stepped forward) renews its lease and does not send
it again. What a turn claimed while the channel was found down (a send failed during the
turn's call) is given back unattempted (``Outbox.release``) and waits for the probe.

One log line marks the start of a failure episode and one its end (``service.retry.Episode``);
``error`` says whether the channel is failing (``/readyz`` names it without refusing requests:
the outbox holds the deliveries).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from service.channels.base import Channel, ChannelDown, Dead, Gone, Retry
from service.outbox.base import Delivery, Outbox, Outcome
from service.retry import Backoff, Episode
from service.sinks.core import TargetError
from service.tasks import stop

__all__ = ["BUSY_RATE", "DeliveryListener", "DispatchOptions", "Dispatcher"]

logger = logging.getLogger("service.outbox")


class DeliveryListener(Protocol):
    """Told each outcome (the metrics listen)."""

    def delivered(self, channel: str, seconds: float) -> None:
        """Delivered ``seconds`` after the notification was accepted."""

    def retried(self, channel: str) -> None: ...

    def dead(self, channel: str, count: int = 1) -> None: ...

    def disabled(self, channel: str, disabled: bool) -> None:
        """The channel was disabled (its destination is gone) or enabled again."""

    def concurrency(self, channel: str, window: int) -> None:
        """The channel's concurrency window is now ``window`` sends in flight at most."""


@dataclass(frozen=True, slots=True)
class DispatchOptions:
    retry: Backoff = field(default_factory=lambda: Backoff(0.05, 300.0))
    """A single delivery's backoff on ``Retry`` (by its attempts)."""
    pause: Backoff = field(default_factory=lambda: Backoff(0.05, 10.0))
    """The channel's pause on ``ChannelDown`` (by failing rounds in a row): its maximum is the
    longest time between probes of a failing channel."""
    max_age: float = 24 * 3600.0
    poll_interval: float = 1.0
    """Seconds between looks at the outbox when nothing told this process of new work (other
    processes add rows too)."""
    drain_timeout: float = 10.0


_QUEUEING = 0.005
"""Seconds by which a send may exceed twice the fastest one before it counts as queued."""

BUSY_RATE = 20.0
"""Sends a second (one at a time) while requests have the event loop saturated: 0.6 % of the
loop for an email channel, and still a steady trickle through the longest burst."""


class Dispatcher:
    """Delivers one channel's due deliveries; see the module docstring."""

    def __init__(
        self,
        outbox: Outbox,
        channel: Channel,
        options: DispatchOptions,
        listener: DeliveryListener | None = None,
        api_busy: Callable[[], bool] | None = None,
    ) -> None:
        self.channel = channel
        self.name = channel.name
        self._api_busy = api_busy
        """While it says so, send one at a time, ``BUSY_RATE`` a second (``load.LoopLoad``)."""
        self._outbox = outbox
        self._options = options
        self._listener = listener
        self._wake = asyncio.Event()
        """Set when an attempt ends, new work is added, or the channel is enabled/disabled."""
        self._sending: set[asyncio.Task[None]] = set()
        self._finished: list[Outcome] = []
        """Outcomes not yet recorded: each still holds its connection."""
        self._held = 0
        """Connections held: claimed deliveries whose outcome is not yet recorded."""
        self._holding: set[str] = set()
        """The ids of those deliveries: a claim that returns one of them (its lease ran out
        while it was sent: a clock that jumped) renewed its lease, and it is not sent twice."""
        self._unsettled: tuple[asyncio.Future[list[Delivery]], list[Outcome]] | None = None
        """A turn's call to the outbox that ``aclose`` cancelled, and the outcomes it records:
        the outbox may still record them (its thread goes on), so ``aclose`` waits for it."""
        self._episode = Episode(
            logger,
            self.name,
            failing="cannot deliver: {error}; pausing, then probing",
            recovered="delivering again after {seconds:.1f} s",
        )
        self._reading = Episode(
            logger,
            self.name,
            failing="cannot read the outbox: {error}; trying again",
            recovered="reading the outbox again after {seconds:.1f} s",
        )
        """The outbox unavailable (Redis down): one line when it starts, one when it ends."""
        self._round = 0
        """Counts the pauses: a send started in an earlier round cannot pause the channel
        again, nor end its episode."""
        self._pauses = 0
        """Failing rounds in a row (0: the channel works)."""
        self._paused_until = 0.0
        """``time.monotonic()`` at which the pause under way ends."""
        self._probing = False
        """The probe of a paused channel is in flight."""
        self._window = float(channel.min_concurrency)
        """Sends in flight at most now: from ``channel.min_concurrency`` up to
        ``channel.concurrency`` (see ``_grow`` and ``_cut``)."""
        self._threshold = float(channel.concurrency)
        """Below it the window grows by one per delivery (slow start), above it by one per
        window's worth of deliveries; a cut sets it to the halved window."""
        self._backlog = False
        """The last claim was limited by the window: more deliveries were waiting."""
        self._fastest = math.inf
        """The shortest send since the last cut: the receiver's own time, unloaded."""
        self._next_send = 0.0
        self._disabled: str | None = None
        """Why the channel is disabled (its destination said it is gone), or None."""
        self._recorded = False
        """The outbox holds the record of this disable (recorded here, or learnt from it)."""
        self._next_look = 0.0
        """``time.monotonic()`` after which an enabled dispatcher looks whether another
        process disabled the channel (``Outbox.disabled``)."""
        self._task: asyncio.Task[None] | None = None

    @property
    def target(self) -> str:
        """What the channel delivers to, as shown (no secret)."""
        return self.channel.target

    @property
    def error(self) -> str | None:
        """Why the channel is failing (or disabled) now, or None."""
        if self._disabled is not None:
            return self._disabled
        return self._episode.error

    @property
    def disabled(self) -> bool:
        """Whether the channel is disabled (its destination said it is gone)."""
        return self._disabled is not None

    def disable(self, reason: str, *, recorded: bool = False) -> None:
        """Send nothing more: pending deliveries become dead with ``reason``, until
        ``enable``. The next turn records it in the outbox, unless it is ``recorded`` there
        already (another process disabled the channel)."""
        if self._disabled is None:
            logger.error("%s: disabled: %s", self.name, reason)
            if self._listener is not None:
                self._listener.disabled(self.name, True)
            self._recorded = recorded
        self._disabled = reason
        self._wake.set()

    async def enable(self) -> bool:
        """Deliver again after ``disable``: the outbox's record of it goes (so that no
        process keeps the channel disabled), then this dispatcher's. Whether the channel was
        disabled, here or in the outbox. Raises what the outbox raises."""
        recorded = await self._outbox.enable([self.name])
        return self._enabled() or bool(recorded)

    def _enabled(self) -> bool:
        """This dispatcher delivers again; whether it was disabled."""
        if self._disabled is None:
            return False
        self._disabled = None
        self._recorded = False
        self._next_look = time.monotonic() + self._options.poll_interval
        self._recovered()
        logger.info("%s: enabled again", self.name)
        if self._listener is not None:
            self._listener.disabled(self.name, False)
        self._wake.set()
        return True

    def wake(self) -> None:
        """New deliveries were added: look now rather than at the next poll."""
        self._wake.set()

    @property
    def window(self) -> int:
        """Sends in flight at most now (the concurrency window)."""
        return int(self._window)

    async def start(self) -> None:
        if self._listener is not None:
            self._listener.concurrency(self.name, self.window)
        with contextlib.suppress(Exception):  # a pause left by a process that died paused
            await self._outbox.resume(self.name)
        with contextlib.suppress(Exception):  # a restart enables the channel (as before)
            await self._outbox.enable([self.name])
        self._next_look = time.monotonic() + self._options.poll_interval
        self._task = asyncio.create_task(self._run(), name=f"{self.name} dispatcher")

    async def aclose(self) -> None:
        """Claim nothing more; let the sends in flight finish (within the drain timeout) and
        record their outcomes; leases of what was not sent expire, and the next start (or
        another process) sends it."""
        task, self._task = self._task, None
        await stop(task)
        if self._unsettled is not None:  # recorded once: by that call, or by the next
            call, finished = self._unsettled
            self._unsettled = None
            try:
                claimed = await call
            except Exception:
                self._finished[:0] = finished
            else:
                self._settled(finished)
                # For the next start, or another process (not what is still being sent).
                await self._give_back([d for d in claimed if d.id not in self._holding])
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
            if self._disabled is None and time.monotonic() >= self._next_look:
                await self._look_if_disabled()
            if self._disabled is not None:
                await self._while_disabled(self._disabled)
                continue
            now = time.monotonic()
            paused = self._paused_until - now
            busy = self._api_busy is not None and self._api_busy()
            free = room = self._free(paused, busy)
            wait = paused if paused > 0 else None
            rate = self.channel.rate
            if busy:
                rate = min(rate or BUSY_RATE, BUSY_RATE)
            if rate and free > 0:
                # Paced: one delivery is claimed when its turn comes, not ahead of it, so it
                # is sent at once, well within its lease (a lease that ran out while it waited
                # would let another holder send it too).
                free = 1 if self._next_send <= now else 0
                wait = None if free else self._next_send - now
            round_, probe = self._round, self._pauses > 0  # as they were when claiming
            if not self._finished and free <= 0:
                # Every connection busy, paused, probing, or the rate's next turn to come:
                # wait for an outcome (or the pause's end, or that turn).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                continue
            try:
                claimed = await self._settle(free)
            except Exception as exc:
                self._unreadable(exc)
                await asyncio.sleep(self._options.poll_interval)
                continue
            self._reading.recover()
            if rate and claimed:
                # The next turn one interval after this one's, on the schedule (the turns'
                # own time is not added to every interval), but no burst after an idle spell.
                interval = 1.0 / rate
                base = self._next_send if now - self._next_send < interval else now
                self._next_send = base + interval
            claimed = [delivery for delivery in claimed if delivery.id not in self._holding]
            if claimed and self._pauses and not probe:
                # The channel was found down while this turn's call ran: what it claimed
                # waits for the probe, unattempted, rather than go to a failing receiver.
                await self._give_back(claimed)
                continue
            self._held += len(claimed)
            self._holding.update(delivery.id for delivery in claimed)
            if probe and claimed:
                self._probing = True
            # Deliveries waited for a connection (the window, not the rate, limited the
            # claim): what is delivered now may widen the window.
            self._backlog = not busy and not probe and 0 < room <= len(claimed)
            for delivery in claimed:
                task = asyncio.create_task(self._deliver(delivery, round_, probe))
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)
            if not claimed and free > 0 and not self._finished:
                await self._idle()

    def _free(self, paused: float, busy: bool) -> int:
        """How many deliveries this turn may claim: none while paused or probing, one (the
        probe) once a pause is over, else what the window leaves once the outcomes to be
        recorded free their connections (one at a time while the API is ``busy``)."""
        if self._pauses:
            return 0 if paused > 0 or self._probing else 1
        in_progress = self._held - len(self._finished)
        return (1 if busy else int(self._window)) - in_progress

    async def _settle(self, claim: int) -> list[Delivery]:
        """One turn: record the outcomes waiting, claim up to ``claim``; tell the listener
        what was recorded. On failure the outcomes wait for the next turn."""
        finished, self._finished = self._finished, []
        call = asyncio.ensure_future(self._outbox.settle(self.name, finished, claim))
        try:
            claimed = await asyncio.shield(call)
        except asyncio.CancelledError:
            self._unsettled = (call, finished)  # for ``aclose``: it may be recorded yet
            raise
        except Exception:
            self._finished[:0] = finished
            raise
        self._settled(finished)
        return claimed

    def _settled(self, finished: list[Outcome]) -> None:
        """``finished`` is recorded: their connections are free; tell the listener."""
        self._held -= len(finished)
        for outcome in finished:
            self._holding.discard(outcome.delivery.id)
            self._tell(outcome)

    def _unreadable(self, exc: Exception) -> None:
        """The outbox failed a turn: unavailable (``TargetError``: Redis down, SQLite locked or
        full) is one log line per episode; anything else is a bug, logged with its traceback."""
        if isinstance(exc, TargetError):
            self._reading.fail(str(exc), detail=exc.detail)
        else:
            logger.exception("%s: cannot read the outbox; trying again", self.name)

    async def _give_back(self, claimed: list[Delivery]) -> None:
        """Release ``claimed`` (not sent): due again for any holder, not once the lease ends."""
        if not claimed:
            return
        try:
            await self._outbox.release(self.name, claimed)
        except Exception:  # their leases end in time: they wait that long
            logger.exception("%s: cannot give deliveries back to the outbox", self.name)

    async def _look_if_disabled(self) -> None:
        """Whether another process disabled the channel (``Outbox.disabled``): at most once
        per ``poll_interval`` while enabled."""
        self._next_look = time.monotonic() + self._options.poll_interval
        try:
            reason = (await self._outbox.disabled()).get(self.name)
        except Exception:  # the claims that follow say what is wrong with the outbox
            return
        if reason is not None and self._disabled is None:
            self.disable(reason, recorded=True)

    async def _while_disabled(self, reason: str) -> None:
        """While disabled: record the disable in the outbox, or, once it is there, deliver
        again if an operator dropped it (``enable`` in any process); record what ended; make
        the channel's pending deliveries dead; then wait for more (a wake or the poll
        interval)."""
        try:
            if not self._recorded:  # before the outcomes: a delivery dead of a 410 shows so
                await self._outbox.disable(self.name, reason)
                if self._disabled is None:  # enabled while it was being recorded
                    await self._outbox.enable([self.name])
                    return
                self._recorded = True
            elif self.name not in await self._outbox.disabled():
                self._enabled()
                return
            if self._finished:
                await self._settle(0)
            if self._disabled is None:  # enabled meanwhile (``enable``, in this process)
                return
            buried = await self._outbox.bury(self.name, f"disabled: {reason}")
        except Exception as exc:
            self._unreadable(exc)
            await asyncio.sleep(self._options.poll_interval)
            return
        if buried and self._listener is not None:
            self._listener.dead(self.name, buried)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._options.poll_interval):
                await self._wake.wait()

    async def _idle(self) -> None:
        """Wait for new work: a wake, the next due delivery, or the poll interval."""
        timeout = self._options.poll_interval
        with contextlib.suppress(Exception):
            due = await self._outbox.next_due(self.name)
            if due is not None:
                timeout = min(timeout, max(0.0, due - time.time()))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()

    # -- one delivery ---------------------------------------------------------------------

    async def _deliver(self, delivery: Delivery, round_: int, probe: bool) -> None:
        """Attempt ``delivery`` (sent in round ``round_``), and hand its outcome to the next
        turn."""
        try:
            outcome = await self._attempt(delivery, round_)
        finally:
            if probe:
                self._probing = False
        self._finished.append(outcome)  # the list of now: a turn may have taken the last one
        self._wake.set()

    async def _attempt(self, delivery: Delivery, round_: int) -> Outcome:
        options = self._options
        if time.time() - delivery.since > options.max_age:
            return Outcome(delivery, "dead", f"not delivered within {options.max_age:g} s")
        if self._disabled is not None:  # disabled while this one waited for its turn
            return Outcome(delivery, "dead", f"disabled: {self._disabled}")
        started = time.monotonic()
        try:
            await self.channel.send(delivery)
        except Gone as exc:
            self.disable(exc.reason)
            return Outcome(delivery, "dead", exc.reason)
        except Dead as exc:
            self._answered(round_)  # the receiver answered: the channel works
            return Outcome(delivery, "dead", exc.reason)
        except Retry as exc:
            self._answered(round_)
            # Retry-After is honoured up to the longest retry delay: one answer cannot put the
            # next attempt an hour (or past the delivery's max age: dead at once) away.
            after = None if exc.after is None else min(exc.after, options.retry.maximum)
            delay = options.retry.delay(delivery.attempts, at_least=after)
            return self._retry_or_die(delivery, exc.reason, time.time() + delay)
        except ChannelDown as exc:
            return self._retry_or_die(delivery, exc.reason, await self._down(exc, round_))
        except (Exception, asyncio.CancelledError) as exc:
            # A bug in the channel (a CancelledError this task was not sent: the channel's
            # own): loud, and the delivery is kept.
            if isinstance(exc, asyncio.CancelledError) and _stopping():
                raise
            logger.exception("%s: sending failed unexpectedly", self.name)
            down = ChannelDown(f"{type(exc).__name__}: {exc}")
            return self._retry_or_die(delivery, down.reason, await self._down(down, round_))
        self._answered(round_)
        if self._backlog and round_ == self._round and not self._pauses:
            # Only a send of the round under way, while the channel is not paused: one that
            # went through after a cut says nothing of the receiver as it is now.
            self._grow(time.monotonic() - started)
        return Outcome(delivery, "delivered")

    def _retry_or_die(self, delivery: Delivery, error: str, at: float) -> Outcome:
        if at - delivery.since > self._options.max_age:
            return Outcome(delivery, "dead", f"{error}; not delivered within the time allowed")
        return Outcome(delivery, "retrying", error, next_attempt_at=at)

    def _tell(self, outcome: Outcome) -> None:
        listener = self._listener
        if listener is None:
            return
        if outcome.status == "delivered":
            listener.delivered(self.name, outcome.at - outcome.delivery.accepted_at)
        elif outcome.status == "dead":
            listener.dead(self.name)
        else:
            listener.retried(self.name)

    # -- the channel's pause ----------------------------------------------------------------

    async def _down(self, exc: ChannelDown, round_: int) -> float:
        """A send of round ``round_`` found the channel down: the first such outcome of the
        current round pauses the channel (longer than the last pause, if it failed too); a
        later one of the same round, or one of an earlier round, waits for the pause under way.
        Returns when (``time.time()``) the delivery may be tried again: the pause's end."""
        now = time.monotonic()
        if round_ == self._round:
            # A receiver's Retry-After is honoured up to the longest pause: one answer cannot
            # keep the channel from its probes for longer (an hour, forever).
            backoff = self._options.pause
            after = None if exc.after is None else min(exc.after, backoff.maximum)
            pause = backoff.delay(self._pauses, at_least=after)
            self._cut()
            self._round += 1
            self._pauses += 1
            self._paused_until = now + pause
            self._episode.fail(exc.reason)
            until = time.time() + pause
            with contextlib.suppress(Exception):  # only what the statuses show
                await self._outbox.pause(self.name, until, exc.reason)
            return until
        return time.time() + max(0.0, self._paused_until - now)

    # -- the concurrency window -------------------------------------------------------------

    def _grow(self, took: float) -> None:
        """A delivery went through in ``took`` seconds while others waited: one more
        connection (slow start), or one more per window's worth of deliveries above the
        threshold; at most ``channel.concurrency``. As Postfix's per-destination concurrency,
        and TCP's window. Only while the receiver's time limits the rate: a send that took
        more than twice the fastest (and 5 ms more) says the receiver, or this process, is
        queueing what it gets, and more at once would only wait longer (or time out)."""
        window, ceiling = self._window, self.channel.concurrency
        self._fastest = min(self._fastest, took)
        if window >= ceiling or took > 2 * self._fastest + _QUEUEING:
            return
        window += 1.0 if window < self._threshold else 1.0 / window
        self._resize(min(float(ceiling), window))

    def _cut(self) -> None:
        """The receiver failed (a round found the channel down): halve the window at once, not
        below ``channel.min_concurrency``, and grow slowly from there."""
        self._threshold = max(float(self.channel.min_concurrency), self._window / 2)
        self._fastest = math.inf  # learnt again: the receiver may have changed
        self._resize(self._threshold)

    def _resize(self, window: float) -> None:
        before, self._window = int(self._window), window
        if int(window) != before and self._listener is not None:
            self._listener.concurrency(self.name, int(window))

    def _answered(self, round_: int) -> None:
        """The receiver answered a send of round ``round_``: if that is the probe (or any send
        of the current round), the channel works again."""
        if round_ == self._round and self._pauses:
            self._recovered()
            self._wake.set()  # every connection is free to use again

    def _recovered(self) -> None:
        self._pauses = 0
        self._paused_until = 0.0
        if self._episode.recover() is not None:
            self._round += 1  # what was sent while failing can pause it no more
            task = asyncio.create_task(self._outbox.resume(self.name))
            task.add_done_callback(_ignore_failure)
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)


def _stopping() -> bool:
    """Whether the task running now is being cancelled (rather than handed a
    ``CancelledError`` by what it awaited)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _ignore_failure(task: asyncio.Task[None]) -> None:
    """The outbox's record of a pause is only what statuses show; a failure to clear it is
    harmless (a pause past its end shows nothing)."""
    if not task.cancelled():
        task.exception()
