"""The channel interface, proven by a channel written here (tests/support/channels.py) and run
through the real SQLite outbox and the real dispatcher: delivered, retry, pause and probe,
dead, disable and enable. Each test asserts the order of events, not how long they took."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest

from service.channels.base import ChannelDown, Dead, Delivery, Gone, Retry
from service.outbox.base import DeliveryState, Outcome, notification_line
from service.outbox.dispatcher import Dispatcher, DispatchOptions
from service.outbox.sqlite import SqliteOutbox
from service.retry import Backoff
from tests.support.channels import ScriptedChannel
from tests.support.waiting import eventually

NAME = "pager"


def _lines(count: int) -> list[str]:
    now = time.time()
    return [
        notification_line(f"n{number}", f"n{number}@example.com", "hi", None, now + number / 1e6)
        for number in range(count)
    ]


@asynccontextmanager
async def dispatching(
    tmp_path: Path, channel: ScriptedChannel, options: DispatchOptions, count: int
) -> AsyncIterator[tuple[SqliteOutbox, Dispatcher]]:
    """``count`` notifications in a real outbox, delivered by a real dispatcher through
    ``channel``."""
    outbox = SqliteOutbox(tmp_path / "outbox.db", lease_seconds=60)
    await outbox.open()
    dispatcher = Dispatcher(outbox, channel, options)
    try:
        await outbox.add(_lines(count), [NAME])
        await dispatcher.start()
        yield outbox, dispatcher
    finally:
        await dispatcher.aclose()
        await channel.aclose()
        await outbox.close()


async def _until(channel: ScriptedChannel, condition: Callable[[], bool]) -> None:
    """Wait for ``condition``, looking again each time an attempt begins or ends."""
    async with asyncio.timeout(20):  # a safety net: every wait here is for an event
        while not condition():
            channel.changed.clear()
            await channel.changed.wait()


async def _until_states(
    outbox: SqliteOutbox, count: int, condition: Callable[[list[DeliveryState]], bool]
) -> list[DeliveryState]:
    """The states of n0 … n{count-1} once ``condition`` holds for them."""

    async def states() -> list[DeliveryState] | None:
        found = [state for n in range(count) for state in await outbox.states(f"n{n}")]
        return found if condition(found) else None

    found = await eventually(states)
    assert found is not None  # eventually returns a truthy value
    return found


async def test_a_round_that_finds_the_channel_down_pauses_it_once_then_probes_resume_it(
    tmp_path: Path,
) -> None:
    """Four sends fail at once (one round): the channel pauses, then probes one delivery at
    a time while the receiver is down; the first probe that gets through resumes every
    connection at once, and each notification is delivered once."""
    down = True
    in_flight: list[str] = []
    widths_while_down: list[int] = []  # sends in flight as each failing one began
    widest_after = 0
    events: list[str] = []
    gate = asyncio.Event()
    gate.set()

    async def receiver(delivery: Delivery) -> None:
        nonlocal widest_after
        in_flight.append(delivery.id)
        try:
            if down:
                widths_while_down.append(len(in_flight))
                events.append("down")
                if len(channel.attempts) <= 4:  # the first round fails together
                    channel.changed.set()
                    await _until(channel, lambda: len(channel.attempts) >= 4)
                raise ChannelDown("the receiver is down")
            widest_after = max(widest_after, len(in_flight))
            events.append("delivered")
            if events.count("delivered") > 1:  # the probe gets through; the rest wait
                await gate.wait()
        finally:
            in_flight.remove(delivery.id)

    channel = ScriptedChannel(NAME, receiver, concurrency=4)
    options = DispatchOptions(pause=Backoff(0.001, 0.005), poll_interval=0.05)
    async with dispatching(tmp_path, channel, options, 12) as (outbox, _):
        # The first round (four at once), then probes, each alone.
        await _until(channel, lambda: events.count("down") >= 7)
        assert widths_while_down[:4] == [1, 2, 3, 4]
        assert widths_while_down[4:] == [1] * (len(widths_while_down) - 4)
        gate.clear()  # hold the deliveries after the probe, to see how many go at once
        down = False
        await _until(channel, lambda: len(in_flight) == 4)
        gate.set()
        states = await _until_states(
            outbox, 12, lambda states: all(s.status == "delivered" for s in states)
        )
    assert widest_after == 4  # every connection in use again once a probe got through
    delivered = [a for a, e in zip(channel.attempts, events, strict=True) if e == "delivered"]
    assert sorted(delivered) == sorted(f"n{n}" for n in range(12))  # each once
    assert [s.attempts for s in states].count(1) <= 12


async def test_while_paused_every_waiting_delivery_shows_retrying_at_the_probe(
    tmp_path: Path,
) -> None:
    """A channel down: the deliveries of the failed round and those never tried all show
    ``retrying``, with the channel's error and the pause's end as their next attempt (one
    pause for the round, not one per failed send)."""

    async def receiver(delivery: Delivery) -> None:
        raise ChannelDown("connection refused")

    channel = ScriptedChannel(NAME, receiver, concurrency=4)
    pause = Backoff(100.0, 10_000.0)  # the first pause is 50-100 s; a fourth would be 400+
    async with dispatching(tmp_path, channel, DispatchOptions(pause=pause), 10) as (outbox, _):
        await _until(channel, lambda: len(channel.attempts) == 4)
        states = await _until_states(
            outbox, 10, lambda states: sum(s.attempts for s in states) == 4
        )
        now = time.time()
    assert {s.status for s in states} == {"retrying"}
    assert {s.last_error for s in states} == {"connection refused"}
    ends = {s.next_attempt_at for s in states if s.attempts == 0}
    assert len(ends) == 1  # the never-tried wait for the one pause
    [end] = ends
    assert end is not None
    assert now < end <= now + 100.0
    for tried in (s for s in states if s.attempts):
        assert tried.next_attempt_at is not None
        assert now < tried.next_attempt_at <= end + 1e-3


async def test_retry_backs_off_one_delivery_while_the_others_go(tmp_path: Path) -> None:
    """``Retry`` sends that delivery again later, alone; the channel is not paused, and the
    others are delivered meanwhile; ``Retry(after=…)`` is a floor for the wait, up to the
    longest retry delay (300 s by default: an hour asked is 300 s)."""
    tries: dict[str, int] = {}

    async def receiver(delivery: Delivery) -> None:
        tries[delivery.id] = tries.get(delivery.id, 0) + 1
        if delivery.id == "n0":
            raise Retry("451 try again later", after=3600.0)

    channel = ScriptedChannel(NAME, receiver)
    async with dispatching(tmp_path, channel, DispatchOptions(), 5) as (outbox, dispatcher):
        states = await _until_states(
            outbox,
            5,
            lambda states: (
                sum(s.status == "delivered" for s in states) == 4 and states[0].attempts == 1
            ),
        )
        assert dispatcher.error is None  # the channel works
    assert states[0].status == "retrying"
    assert states[0].last_error == "451 try again later"
    assert states[0].next_attempt_at is not None
    assert states[0].accepted_at + 300.0 <= states[0].next_attempt_at
    assert states[0].next_attempt_at < states[0].accepted_at + 3600.0
    assert tries == {f"n{n}": 1 for n in range(5)}


async def test_dead_is_at_once_and_gone_disables_the_channel_until_enabled(
    tmp_path: Path,
) -> None:
    """``Dead`` ends one delivery for good; ``Gone`` ends it and disables the channel: its
    other pending deliveries become dead without an attempt, until ``enable``, after which
    new ones are delivered."""
    gone = True

    async def receiver(delivery: Delivery) -> None:
        if delivery.id == "n0":
            raise Dead("550 no such mailbox")
        if gone:
            raise Gone("410 Gone")

    channel = ScriptedChannel(NAME, receiver, concurrency=1)
    async with dispatching(tmp_path, channel, DispatchOptions(poll_interval=0.05), 6) as (
        outbox,
        dispatcher,
    ):
        states = await _until_states(
            outbox, 6, lambda states: all(s.status == "dead" for s in states)
        )
        assert dispatcher.disabled
        assert states[0].last_error == "550 no such mailbox"
        assert channel.attempts == ["n0", "n1"]  # the rest were buried without an attempt
        assert {s.last_error for s in states[2:]} == {"disabled: 410 Gone"}
        gone = False
        assert await dispatcher.enable()
        await outbox.add(_lines(7)[6:], [NAME])  # n6, added later
        dispatcher.wake()
        await _until_states(outbox, 7, lambda states: states[6].status == "delivered")
    assert channel.attempts[-1] == "n6"


async def test_gone_in_one_process_disables_the_channel_for_every_process_until_enabled(
    tmp_path: Path,
) -> None:
    """Two dispatchers of one channel, each with its own connection to one outbox file (two
    processes): the one that gets ``Gone`` records it in the outbox, and the other stops too,
    so what comes next is dead without an attempt; ``enable`` in the process that never saw
    the 410 drops the record, the first then delivers again too."""
    gone = True

    async def receiver(delivery: Delivery) -> None:
        if gone:
            raise Gone("410 Gone")

    channels = [ScriptedChannel(NAME, receiver, concurrency=1) for _ in range(2)]
    options = DispatchOptions(poll_interval=0.05)
    async with AsyncExitStack() as stack:
        outboxes = []
        for owner in ("first", "second"):
            outbox = SqliteOutbox(tmp_path / "outbox.db", lease_seconds=60, owner=owner)
            await outbox.open()
            stack.push_async_callback(outbox.close)
            outboxes.append(outbox)
        dispatchers = [
            Dispatcher(outbox, channel, options)
            for outbox, channel in zip(outboxes, channels, strict=True)
        ]
        for dispatcher in dispatchers:
            await dispatcher.start()
            stack.push_async_callback(dispatcher.aclose)
        await outboxes[0].add(_lines(1), [NAME])
        await eventually(lambda: all(d.disabled for d in dispatchers), message="both disabled")
        assert await outboxes[1].disabled() == {NAME: "410 Gone"}
        await outboxes[0].add(_lines(6)[1:], [NAME])
        await _until_states(outboxes[1], 6, lambda states: all(s.status == "dead" for s in states))
        assert sorted(channels[0].attempts + channels[1].attempts) == ["n0"]
        gone = False
        saw_it, other = dispatchers if channels[0].attempts else dispatchers[::-1]
        assert await other.enable()
        await eventually(lambda: not saw_it.disabled, message="enabled in the other process")
        assert await outboxes[0].disabled() == {}
        await outboxes[0].add(_lines(8)[6:], [NAME])
        states = await _until_states(
            outboxes[0], 8, lambda states: all(s.status == "delivered" for s in states[6:])
        )
    assert [state.attempts for state in states[6:]] == [1, 1]


async def test_a_bug_in_a_channel_keeps_the_delivery_and_pauses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Any other exception is a bug: logged with its traceback, the delivery kept (retrying)
    and the channel paused, as for ``ChannelDown``."""
    broken = True

    async def receiver(delivery: Delivery) -> None:
        if broken:
            raise KeyError("oops")

    channel = ScriptedChannel(NAME, receiver, concurrency=1)
    options = DispatchOptions(pause=Backoff(0.001, 0.002), poll_interval=0.05)
    async with dispatching(tmp_path, channel, options, 1) as (outbox, dispatcher):
        await _until(channel, lambda: len(channel.attempts) >= 2)
        assert dispatcher.error == "KeyError: 'oops'"
        broken = False
        [state] = await _until_states(outbox, 1, lambda s: s[0].status == "delivered")
    assert state.attempts >= 2
    assert "sending failed unexpectedly" in caplog.text
    assert "Traceback" in caplog.text


class _Windows:
    """A delivery listener that records each change of the concurrency window."""

    def __init__(self) -> None:
        self.windows: list[int] = []

    def delivered(self, channel: str, seconds: float) -> None:
        pass

    def retried(self, channel: str) -> None:
        pass

    def dead(self, channel: str, count: int = 1) -> None:
        pass

    def disabled(self, channel: str, disabled: bool) -> None:
        pass

    def concurrency(self, channel: str, window: int) -> None:
        self.windows.append(window)


async def test_the_window_widens_while_deliveries_wait_and_halves_per_failing_round(
    tmp_path: Path,
) -> None:
    """From its floor, the window grows by one per delivery while others wait (slow start)
    up to the ceiling, and no send ever goes past it; a round that finds the channel down
    halves it, each failing probe halves it again down to the floor; once the receiver is
    back it grows again, slowly."""
    down = False
    in_flight = 0
    widest = 0
    delivered: list[str] = []

    async def receiver(delivery: Delivery) -> None:
        nonlocal in_flight, widest
        in_flight += 1
        widest = max(widest, in_flight)
        try:
            await asyncio.sleep(0.001)  # the receiver's time: sends overlap
            if down:
                raise ChannelDown("503 Service Unavailable")
            delivered.append(delivery.id)
        finally:
            in_flight -= 1

    channel = ScriptedChannel(NAME, receiver, concurrency=16, min_concurrency=2)
    windows = _Windows()
    outbox = SqliteOutbox(tmp_path / "outbox.db", lease_seconds=60)
    await outbox.open()
    options = DispatchOptions(pause=Backoff(0.001, 0.005), poll_interval=0.05)
    dispatcher = Dispatcher(outbox, channel, options, listener=windows)
    try:
        await outbox.add(_lines(300), [NAME])
        await dispatcher.start()
        await eventually(lambda: len(delivered) == 300)
        assert windows.windows == list(range(2, 17))  # slow start, one by one, to the ceiling
        assert widest == 16
        down = True
        await outbox.add(_lines(310)[300:], [NAME])
        dispatcher.wake()
        await eventually(lambda: windows.windows[-3:] == [8, 4, 2])
        assert dispatcher.window == 2
        down = False
        await eventually(lambda: len(delivered) == 310)
    finally:
        await dispatcher.aclose()
        await outbox.close()
    assert windows.windows[15:18] == [8, 4, 2]  # halved once per failing round, to the floor
    assert dispatcher.window >= 2


async def test_the_window_stops_growing_when_the_receiver_starts_queueing(
    tmp_path: Path,
) -> None:
    """A receiver with four workers taking 10 ms a request (more at once queue for a worker):
    the window grows while sends stay fast, and stops once they queue (two workers' turns and
    more, with slow start's overshoot: about 20 here), far below its ceiling of 64, although
    deliveries keep waiting."""
    workers = asyncio.Semaphore(4)
    delivered = 0

    async def receiver(delivery: Delivery) -> None:
        nonlocal delivered
        async with workers:
            await asyncio.sleep(0.01)
        delivered += 1

    channel = ScriptedChannel(NAME, receiver, concurrency=64, min_concurrency=2)
    async with dispatching(tmp_path, channel, DispatchOptions(poll_interval=0.05), 300) as (
        _,
        dispatcher,
    ):
        await eventually(lambda: delivered == 300)
    assert 4 <= dispatcher.window <= 24


async def test_a_paced_channel_claims_each_delivery_when_its_turn_comes(tmp_path: Path) -> None:
    """Two processes deliver one channel at ``rate`` sends a second each. A delivery is
    claimed when its turn comes and sent at once: none waits for its turn holding a lease that
    runs out meanwhile (here 30 turns take 1.5 s, a lease 1 s), for the other process to take
    it over and send it too."""
    path = tmp_path / "outbox.db"
    outboxes = [SqliteOutbox(path, owner=owner, lease_seconds=1.0) for owner in "ab"]
    channels = [ScriptedChannel(NAME, _instant, concurrency=30) for _ in outboxes]
    dispatchers = []
    for outbox, channel in zip(outboxes, channels, strict=True):
        channel.rate = 20.0
        await outbox.open()
        dispatchers.append(Dispatcher(outbox, channel, DispatchOptions(poll_interval=0.05)))
    try:
        await outboxes[0].add(_lines(60), [NAME])
        for dispatcher in dispatchers:
            await dispatcher.start()
        states = await _until_states(
            outboxes[0], 60, lambda s: all(x.status == "delivered" for x in s)
        )
    finally:
        for dispatcher in dispatchers:
            await dispatcher.aclose()
        for outbox in outboxes:
            await outbox.close()
    sent = channels[0].attempts + channels[1].attempts
    assert sorted(sent) == sorted(f"n{n}" for n in range(60))  # each once
    assert {state.attempts for state in states} == {1}


async def _instant(delivery: Delivery) -> None:
    """A receiver that takes every delivery at once."""


async def test_a_delivery_whose_lease_ran_out_while_it_was_sent_is_not_sent_again_alongside(
    tmp_path: Path,
) -> None:
    """A send that outlasts its lease (the wall clock stepped forward): the dispatcher's next
    claim gets that delivery back (nobody holds it, as far as the outbox can tell); it is not
    sent a second time beside the first, whose outcome is recorded."""
    release = asyncio.Event()

    async def receiver(delivery: Delivery) -> None:
        if delivery.id == "n0":
            await release.wait()

    channel = ScriptedChannel(NAME, receiver, concurrency=2)
    outbox = SqliteOutbox(tmp_path / "outbox.db", lease_seconds=0.2)
    await outbox.open()
    dispatcher = Dispatcher(outbox, channel, DispatchOptions(poll_interval=0.05))
    try:
        await outbox.add(_lines(1), [NAME])
        await dispatcher.start()
        await _until(channel, lambda: channel.attempts == ["n0"])
        lease = _lease_until(tmp_path / "outbox.db", "n0")
        await eventually(lambda: time.time() > lease)  # the lease is over, the send is not
        await outbox.add(_lines(2)[1:], [NAME])  # a turn claims: n0 is due again, then n1
        dispatcher.wake()
        await _until_states(outbox, 2, lambda s: s[1].status == "delivered")
        release.set()
        states = await _until_states(outbox, 2, lambda s: s[0].status == "delivered")
    finally:
        await dispatcher.aclose()
        await outbox.close()
    assert channel.attempts == ["n0", "n1"]
    assert [state.attempts for state in states] == [1, 1]


def _lease_until(path: Path, notification_id: str) -> float:
    """When the lease of the notification's delivery ends (``time.time()``)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        (until,) = db.execute(
            "SELECT lease_until FROM deliveries WHERE id = ?", (notification_id,)
        ).fetchone()
    return float(until)


class _GatedOutbox(SqliteOutbox):
    """The real outbox, whose ``settle`` of outcomes starts at once but returns only once
    ``gate`` opens: a shutdown can land while the outbox records them."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, lease_seconds=60)
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def settle(
        self, channel: str, finished: Sequence[Outcome], claim: int = 0
    ) -> list[Delivery]:
        call = asyncio.ensure_future(super().settle(channel, finished, claim))
        if finished:
            self.entered.set()
            await self.gate.wait()
        return await call


async def test_a_shutdown_while_outcomes_are_being_recorded_records_them_once(
    tmp_path: Path,
) -> None:
    """The dispatcher stops while the outbox records an outcome (its thread goes on whatever
    happens to the call): the outcome is recorded once, not again by the shutdown. Here a
    ``Retry`` due at once, which that same call claims again."""

    async def receiver(delivery: Delivery) -> None:
        raise Retry("try again", after=0.0)

    channel = ScriptedChannel(NAME, receiver, concurrency=1)
    outbox = _GatedOutbox(tmp_path / "outbox.db")
    await outbox.open()
    options = DispatchOptions(retry=Backoff(0.0, 0.0), poll_interval=0.05)
    dispatcher = Dispatcher(outbox, channel, options)
    try:
        await outbox.add(_lines(1), [NAME])
        await dispatcher.start()
        await outbox.entered.wait()
        [turns] = [task for task in asyncio.all_tasks() if task.get_name() == f"{NAME} dispatcher"]
        closing = asyncio.create_task(dispatcher.aclose())
        await eventually(turns.done)  # the dispatcher's loop is stopped, the outbox records
        outbox.gate.set()
        await closing
        [state] = await outbox.states("n0")
    finally:
        await dispatcher.aclose()
        await outbox.close()
    assert channel.attempts == ["n0"]
    assert state.attempts == 1
    assert [attempt.outcome for attempt in state.history] == ["retrying"]


async def test_what_a_turn_claims_as_the_channel_is_found_down_waits_for_the_probe(
    tmp_path: Path,
) -> None:
    """A send finds the channel down while a turn's call to the outbox is under way: what
    that call claimed is not sent into the failing receiver; it is given back, unattempted,
    and waits for the probe."""
    failing = asyncio.Event()

    async def receiver(delivery: Delivery) -> None:
        if delivery.id == "n0":
            await failing.wait()
            raise ChannelDown("connection refused")

    channel = ScriptedChannel(NAME, receiver, concurrency=2)
    outbox = _GatedOutbox(tmp_path / "outbox.db")
    await outbox.open()
    options = DispatchOptions(pause=Backoff(3600.0, 3600.0), poll_interval=0.05)
    dispatcher = Dispatcher(outbox, channel, options)
    try:
        await outbox.add(_lines(3), [NAME])
        await dispatcher.start()
        await outbox.entered.wait()  # n1 delivered: its turn records it and claims n2
        failing.set()
        await eventually(lambda: dispatcher.error == "connection refused")
        outbox.gate.set()
        await eventually(lambda: _lease_owners(tmp_path / "outbox.db") == [])
        [n2] = await outbox.states("n2")
    finally:
        await dispatcher.aclose()
        await outbox.close()
    assert channel.attempts == ["n0", "n1"]
    assert (n2.status, n2.attempts) == ("retrying", 0)  # waiting for the pause to end


def _lease_owners(path: Path) -> list[str]:
    """The ids of the deliveries some holder holds now."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT id FROM deliveries WHERE lease_owner IS NOT NULL").fetchall()
    return [str(notification_id) for (notification_id,) in rows]


async def test_sends_that_go_through_after_a_cut_do_not_widen_the_window_again(
    tmp_path: Path,
) -> None:
    """A round of four sends at a window of four: one finds the channel down (the window
    halves to two, the channel pauses), the other three go through just after: they were
    sent before the cut and say nothing of the receiver now; the window stays at two while
    the channel is paused."""
    failing = False
    release = asyncio.Event()
    delivered: list[str] = []

    async def receiver(delivery: Delivery) -> None:
        if failing:
            await release.wait()  # the round's four sends end together, the failure first
            if delivery.id == "n20":
                raise ChannelDown("421 too busy")
        else:
            await asyncio.sleep(0.001)  # sends overlap: the window grows
        delivered.append(delivery.id)

    channel = ScriptedChannel(NAME, receiver, concurrency=4, min_concurrency=1)
    windows = _Windows()
    outbox = SqliteOutbox(tmp_path / "outbox.db", lease_seconds=60)
    await outbox.open()
    options = DispatchOptions(pause=Backoff(3600.0, 3600.0), poll_interval=0.05)
    dispatcher = Dispatcher(outbox, channel, options, listener=windows)
    try:
        await outbox.add(_lines(20), [NAME])
        await dispatcher.start()
        await eventually(lambda: len(delivered) == 20)
        assert windows.windows == [1, 2, 3, 4]
        failing = True
        await outbox.add(_lines(30)[20:], [NAME])  # more than a round: they wait
        dispatcher.wake()
        await _until(channel, lambda: len(channel.attempts) == 24)
        release.set()
        await _until_states(outbox, 24, lambda s: sum(x.status == "delivered" for x in s) == 23)
        assert dispatcher.window == 2
    finally:
        await dispatcher.aclose()
        await outbox.close()
    assert windows.windows == [1, 2, 3, 4, 2]


async def test_a_channel_that_raises_cancelled_itself_is_a_bug_that_stalls_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A ``CancelledError`` the dispatcher was not sent (the channel's own: a pooled
    connection's task cancelled, say) is a bug like any other: logged, the delivery kept, the
    channel paused and probed; its one connection is free again and everything is delivered."""
    broken = True

    async def receiver(delivery: Delivery) -> None:
        nonlocal broken
        if broken:
            broken = False
            raise asyncio.CancelledError

    channel = ScriptedChannel(NAME, receiver, concurrency=1)
    options = DispatchOptions(pause=Backoff(0.001, 0.002), poll_interval=0.05)
    async with dispatching(tmp_path, channel, options, 3) as (outbox, _):
        states = await _until_states(outbox, 3, lambda s: all(x.status == "delivered" for x in s))
    assert [state.attempts for state in states] == [2, 1, 1]
    assert "sending failed unexpectedly" in caplog.text
    assert "CancelledError" in caplog.text


async def test_a_paced_channel_widens_its_window_only_when_deliveries_wait_for_it(
    tmp_path: Path,
) -> None:
    """A paced channel claims one delivery per turn, so each claim fills what the turn may
    claim: that says nothing of the window. Deliveries coming one at a time (none waiting for a
    connection) leave the window near its floor, as they do unpaced."""
    delivered: list[str] = []

    async def receiver(delivery: Delivery) -> None:
        delivered.append(delivery.id)

    channel = ScriptedChannel(NAME, receiver, concurrency=8, min_concurrency=1)
    channel.rate = 1000.0
    outbox = SqliteOutbox(tmp_path / "outbox.db", lease_seconds=60)
    await outbox.open()
    dispatcher = Dispatcher(outbox, channel, DispatchOptions(poll_interval=0.05))
    try:
        await dispatcher.start()
        for n, line in enumerate(_lines(10)):
            await outbox.add([line], [NAME])
            dispatcher.wake()
            await eventually(lambda n=n: len(delivered) == n + 1)  # type: ignore[misc]
    finally:
        await dispatcher.aclose()
        await outbox.close()
    assert dispatcher.window <= 2
