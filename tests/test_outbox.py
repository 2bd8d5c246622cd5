"""Both outboxes, SQLite on real files and Redis on a real Redis, held to the same promises:
batches in, leases out (one holder at a time, a dead holder's lease ends), outcomes recorded,
dead letters listed by page and retried, a disabled channel buried."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from service.outbox.base import (
    HISTORY,
    Attempt,
    Delivery,
    DeliveryState,
    NotificationFields,
    Outbox,
    Outcome,
    notification_fields,
    notification_group,
    notification_line,
)
from service.outbox.dispatcher import Dispatcher, DispatchOptions
from service.outbox.redis import RedisOutbox
from service.outbox.sqlite import SqliteOutbox
from service.sinks.core import TargetError
from tests.support.channels import ScriptedChannel
from tests.support.waiting import eventually

OutboxFactory = Callable[..., Awaitable[Outbox]]
"""``await make(owner, lease=60)``: an open outbox (of the test's kind) held by ``owner``;
every one a test makes shares the same store, as processes do."""


def _lines(*names: str, at: float = 1.0) -> list[str]:
    """Notifications as the intake hands them over, accepted at ``at``."""
    return [
        notification_line(f"id-{name}", f"{name}@example.com", f"hi {name}", None, at)
        for name in names
    ]


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.slow)])
async def make(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OutboxFactory]:
    async with AsyncExitStack() as stack:
        if request.param == "redis":
            url: str = request.getfixturevalue("redis_url")
            redis = await stack.enter_async_context(aioredis.Redis.from_url(url))

        async def make(owner: str, lease: float = 60) -> Outbox:
            box: Outbox
            if request.param == "sqlite":
                box = SqliteOutbox(tmp_path / "outbox.db", owner=owner, lease_seconds=lease)
            else:
                box = RedisOutbox(redis, "notifications", lease_seconds=lease, ttl=60, owner=owner)
            await box.open()
            stack.push_async_callback(box.close)
            return box

        yield make


async def test_added_deliveries_are_claimed_once_in_order(make: OutboxFactory) -> None:
    """A batch goes in; claims hand each delivery out once, oldest first, while leased."""
    outbox = await make("a")
    await outbox.add(_lines("a", "b", "c"), ["email"])
    await outbox.add(_lines("a"), ["email"])  # a repeated id is kept once
    first = await outbox.settle("email", [], 2)
    second = await outbox.settle("email", [], 10)
    assert [d.recipient for d in first + second] == [
        "a@example.com",
        "b@example.com",
        "c@example.com",
    ]
    assert await outbox.settle("email", [], 10) == []
    assert await outbox.pending() == 3


async def test_two_processes_never_hold_the_same_delivery(make: OutboxFactory) -> None:
    """Two holders of one store (two processes) split the work; nothing twice."""
    one, two = await make("one"), await make("two")
    await one.add(_lines(*(str(i) for i in range(100))), ["email"])
    taken: list[str] = []
    while batch := (await one.settle("email", [], 7)) + (await two.settle("email", [], 5)):
        taken += [delivery.id for delivery in batch]
    assert sorted(taken) == sorted(f"id-{i}" for i in range(100))


async def test_a_dead_processes_lease_ends_and_another_takes_over(make: OutboxFactory) -> None:
    """A lease not finished in time (its holder died) is claimed by the next holder."""
    dying = await make("dying", lease=-1.0)  # its lease is over at once
    await dying.add(_lines("x"), ["email"])
    [held] = await dying.settle("email", [], 1)
    [taken] = await (await make("heir")).settle("email", [], 1)
    assert taken.id == held.id


async def test_a_late_outcome_does_not_undo_what_the_next_holder_recorded(
    make: OutboxFactory,
) -> None:
    """A holder whose lease ran out while it sent, and whose delivery another holder took
    over and delivered, records its late outcome for nothing: the delivery stays delivered,
    and is not claimed again."""
    late = await make("late", lease=-1.0)  # its lease is over at once
    await late.add(_lines("x"), ["email"])
    [mine] = await late.settle("email", [], 1)
    heir = await make("heir")
    [theirs] = await heir.settle("email", [], 1)
    await heir.settle("email", [Outcome(theirs, "delivered")])
    await late.settle("email", [Outcome(mine, "retrying", "timed out", time.time())])
    [state] = await heir.states("id-x")
    assert (state.status, state.attempts) == ("delivered", 1)
    assert await heir.settle("email", [], 1) == []


async def test_a_released_delivery_is_due_again_for_any_holder_unattempted(
    make: OutboxFactory,
) -> None:
    """A holder gives back what it claimed and did not send: another holder claims it at
    once (not when the lease would have ended), with no attempt counted; a release of what
    another holder holds changes nothing."""
    one, two = await make("one"), await make("two")
    await one.add(_lines("x", "y"), ["email"])
    claimed = await one.settle("email", [], 2)
    assert await two.settle("email", [], 2) == []
    [x, y] = claimed
    await two.release("email", [x])  # not two's to give back
    assert await two.settle("email", [], 2) == []
    await one.release("email", [x])
    [taken] = await two.settle("email", [], 2)
    assert taken.id == x.id
    [state] = await two.states("id-x")
    assert (state.status, state.attempts, state.history) == ("queued", 0, ())
    await one.settle("email", [Outcome(y, "delivered")])  # the other lease is untouched


async def test_each_attempt_is_kept_in_the_deliverys_history_the_last_ten(
    make: OutboxFactory,
) -> None:
    """Every recorded outcome is one entry of its delivery's history (when, how, the error),
    oldest first; the history keeps the last HISTORY; a state names its recipient."""
    outbox = await make("a")
    await outbox.add(_lines("ada"), ["email"])
    for attempt in range(HISTORY + 2):
        [delivery] = await outbox.settle("email", [], 1)
        error = f"451 try {attempt}" if attempt != HISTORY else "a NUL \x00 in it"
        failed = Outcome(delivery, "retrying", error, 0.0, at=100.0 + attempt)
        await outbox.settle("email", [failed])
    [delivery] = await outbox.settle("email", [], 1)
    await outbox.settle("email", [Outcome(delivery, "dead", "550 no such\nmailbox", at=200.5)])
    [state] = await outbox.states("id-ada")
    assert state.recipient == "ada@example.com"
    assert state.attempts == HISTORY + 3
    assert len(state.history) == HISTORY
    assert state.history[-1] == Attempt(200.5, "dead", "550 no such\nmailbox")
    assert state.history[0] == Attempt(103.0, "retrying", "451 try 3")
    assert state.history[-3] == Attempt(100.0 + HISTORY, "retrying", "a NUL \x00 in it")
    assert [attempt.at for attempt in state.history] == sorted(a.at for a in state.history)
    await outbox.retry_dead("id-ada")
    [delivery] = await outbox.settle("email", [], 1)
    await outbox.settle("email", [Outcome(delivery, "delivered", at=300.25)])
    [state] = await outbox.states("id-ada")
    assert state.history[-1] == Attempt(300.25, "delivered", None)
    assert state.history[-2] == Attempt(200.5, "dead", "550 no such\nmailbox")


async def test_outcomes_are_recorded_and_dead_letters_can_be_retried(
    make: OutboxFactory,
) -> None:
    """delivered, retrying (not due before its time), dead; an operator's retry makes the dead
    one due again; listing pages by id."""
    outbox = await make("a")
    await outbox.add(_lines("ok", "later", "gone1", "gone2"), ["email"])
    claimed = {d.id: d for d in await outbox.settle("email", [], 10)}
    later = time.time() + 3600
    outcomes = [
        Outcome(claimed["id-ok"], "delivered"),
        Outcome(claimed["id-later"], "retrying", "451 try later", next_attempt_at=later),
        Outcome(claimed["id-gone1"], "dead", "550 no such mailbox"),
        Outcome(claimed["id-gone2"], "dead", "550 no such mailbox"),
    ]
    assert await outbox.settle("email", outcomes) == []
    [ok] = await outbox.states("id-ok")
    assert (ok.status, ok.attempts) == ("delivered", 1)
    assert ok.delivered_at is not None
    [retrying] = await outbox.states("id-later")
    assert (retrying.status, retrying.last_error) == ("retrying", "451 try later")
    assert retrying.next_attempt_at == pytest.approx(later)
    assert await outbox.settle("email", [], 10) == []  # the retry is not due yet
    page = await outbox.listed("dead", limit=1, after=None)
    assert [state.id for state in page] == ["id-gone1"]
    page = await outbox.listed("dead", limit=1, after=page[-1].id)
    assert [state.id for state in page] == ["id-gone2"]
    assert await outbox.listed("dead", limit=1, after=page[-1].id) == []
    assert await outbox.retry_dead("id-gone1") == 1
    assert await outbox.retry_dead("id-ok") == 0
    [again] = await outbox.settle("email", [], 10)
    assert (again.id, again.attempts) == ("id-gone1", 1)
    # Its time to be delivered starts again; when it was accepted does not change.
    assert again.accepted_at == 1.0
    assert again.since == pytest.approx(time.time(), abs=60)
    [state] = await outbox.states("id-gone1")
    assert state.accepted_at == 1.0
    assert await outbox.pending() == 2


async def test_a_disabled_channel_buries_what_nobody_holds(make: OutboxFactory) -> None:
    outbox = await make("a")
    await outbox.add(_lines("held", "waiting"), ["webhook-1"])
    [held] = await outbox.settle("webhook-1", [], 1)
    assert await outbox.bury("webhook-1", "disabled: 410 Gone") == 1
    dead = await outbox.listed("dead", limit=10, after=None)
    assert {state.id: state.status for state in dead} == {"id-waiting": "dead"}
    assert held.id == "id-held"


async def test_what_a_late_holder_delivered_after_a_burial_is_not_listed_dead(
    make: OutboxFactory,
) -> None:
    """A holder whose lease ran out while it sent, its channel disabled meanwhile (the
    delivery buried): its late "delivered" is the truth, and the dead letters no longer list
    the delivery."""
    late = await make("late", lease=-1.0)  # its lease is over at once
    await late.add(_lines("x"), ["webhook-1"])
    [mine] = await late.settle("webhook-1", [], 1)
    assert await late.bury("webhook-1", "disabled: 410 Gone") == 1
    await late.settle("webhook-1", [Outcome(mine, "delivered")])
    [state] = await late.states("id-x")
    assert state.status == "delivered"
    assert await late.listed("dead", limit=10, after=None) == []


async def test_a_disabled_channel_is_recorded_for_every_holder_until_enabled(
    make: OutboxFactory,
) -> None:
    """One holder records a channel disabled; another (another process) reads it, with its
    reason, and enables it: the names it enabled come back once, and the record is gone for
    both."""
    one, two = await make("one"), await make("two")
    assert await two.disabled() == {}
    await one.disable("webhook-1", "HTTP 410 Gone: the receiver says this URL is gone")
    await one.disable("webhook-2", '410 "quoted" ünïcödé')
    assert await two.disabled() == {
        "webhook-1": "HTTP 410 Gone: the receiver says this URL is gone",
        "webhook-2": '410 "quoted" ünïcödé',
    }
    assert await two.enable(["email", "webhook-1"]) == ["webhook-1"]
    assert await one.disabled() == {"webhook-2": '410 "quoted" ünïcödé'}
    assert await two.enable(["email", "webhook-1"]) == []
    assert await two.enable([]) == []
    assert await one.enable(["webhook-2"]) == ["webhook-2"]
    assert await two.disabled() == {}


async def test_a_paused_channel_shows_its_waiting_deliveries_retrying_at_its_end(
    make: OutboxFactory,
) -> None:
    """While a channel is paused its pending deliveries due before the pause's end show
    ``retrying`` then, with the pause's error; one due later, another channel, a delivered
    one, and everything once resumed (or once the pause is over) show as they are."""
    outbox = await make("a")
    now = time.time()
    await outbox.add(_lines("waiting", "later", "done"), ["email", "webhook-1"])
    claimed = {delivery.id: delivery for delivery in await outbox.settle("email", [], 3)}
    outcomes = [
        Outcome(claimed["id-done"], "delivered"),
        Outcome(claimed["id-later"], "retrying", "451 later", next_attempt_at=now + 500),
        Outcome(claimed["id-waiting"], "retrying", "451 first", next_attempt_at=now),
    ]
    await outbox.settle("email", outcomes)
    await outbox.pause("email", now + 100, "connection refused")

    def email_of(states: list[DeliveryState]) -> DeliveryState:
        return next(state for state in states if state.channel == "email")

    paused = email_of(await outbox.states("id-waiting"))
    assert (paused.status, paused.last_error) == ("retrying", "connection refused")
    assert paused.next_attempt_at == pytest.approx(now + 100)
    assert email_of(await outbox.states("id-later")).next_attempt_at == pytest.approx(now + 500)
    assert email_of(await outbox.states("id-done")).status == "delivered"
    [other] = [s for s in await outbox.states("id-waiting") if s.channel == "webhook-1"]
    assert other.status == "queued"
    await outbox.pause("email", now - 1, "connection refused")  # a pause that is over
    assert email_of(await outbox.states("id-waiting")).last_error == "451 first"
    await outbox.pause("email", now + 100, "connection refused")
    await outbox.resume("email")
    assert email_of(await outbox.states("id-waiting")).last_error == "451 first"


@pytest.mark.slow
async def test_delivered_ones_expire_from_redis(redis_url: str) -> None:
    """Redis keeps a delivered delivery for the status TTL only; dead ones stay."""
    async with aioredis.Redis.from_url(redis_url) as redis:
        outbox = RedisOutbox(redis, "notifications", lease_seconds=60, ttl=60, owner="a")
        await outbox.add(_lines("ok"), ["email"])
        [ok] = await outbox.settle("email", [], 1)
        await outbox.settle("email", [Outcome(ok, "delivered")])
        assert 0 < await redis.ttl("notifications:dl:id-ok:email") <= 60
        assert 0 < await redis.ttl("notifications:ch:id-ok") <= 60  # its only channel


@pytest.mark.slow
async def test_a_due_delivery_whose_record_is_gone_is_dropped_not_the_end_of_claims(
    redis_url: str,
) -> None:
    """A delivery's hash gone from Redis (evicted, deleted by hand) while it is due: claims
    drop it and go on with the others, instead of failing on it every turn."""
    async with aioredis.Redis.from_url(redis_url) as redis:
        outbox = RedisOutbox(redis, "notifications", lease_seconds=60, ttl=60, owner="a")
        await outbox.add(_lines("gone", "kept"), ["email"])
        await redis.delete("notifications:dl:id-gone:email")
        claimed = await outbox.settle("email", [], 10)
        assert [delivery.id for delivery in claimed] == ["id-kept"]
        assert await redis.zscore("notifications:due:email", "id-gone") is None


@pytest.mark.slow
async def test_a_delivered_channel_does_not_take_the_others_of_its_notification_with_it(
    redis_url: str,
) -> None:
    """Email delivered, the webhook dead: once the delivered one has expired, the dead one is
    still found (``states``) and retried by an operator; the notification's channels expire
    only with the last of them delivered."""
    async with aioredis.Redis.from_url(redis_url) as redis:
        outbox = RedisOutbox(redis, "notifications", lease_seconds=60, ttl=60, owner="a")
        await outbox.add(_lines("x"), ["email", "webhook"])
        [email] = await outbox.settle("email", [], 1)
        [hook] = await outbox.settle("webhook", [], 1)
        await outbox.settle("webhook", [Outcome(hook, "dead", "400 Bad Request")])
        await outbox.settle("email", [Outcome(email, "delivered")])
        assert await redis.ttl("notifications:ch:id-x") == -1  # kept: the webhook is dead
        await redis.delete("notifications:dl:id-x:email")  # as its TTL would, in an hour
        [dead] = await outbox.states("id-x")
        assert (dead.channel, dead.status) == ("webhook", "dead")
        assert await outbox.retry_dead("id-x") == 1
        [again] = await outbox.settle("webhook", [], 1)
        await outbox.settle("webhook", [Outcome(again, "delivered")])
        assert 0 < await redis.ttl("notifications:ch:id-x") <= 60  # the last one delivered


async def test_redis_down_is_a_channel_error_without_the_address() -> None:
    """An unreachable Redis fails as TargetError; the address only in its detail."""
    async with aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1) as down:
        outbox = RedisOutbox(down, "notifications", lease_seconds=60, ttl=60, owner="a")
        with pytest.raises(TargetError) as failed:
            await outbox.add(_lines("x"), ["email"])
    assert "127.0.0.1:1" not in str(failed.value)
    assert failed.value.detail is not None
    assert "127.0.0.1:1" in failed.value.detail


async def test_sqlite_forgets_what_was_delivered_long_enough_ago(tmp_path: Path) -> None:
    """What was delivered before the horizon is dropped; pending and dead ones stay. (Redis
    lets a delivered one expire by itself: see the test above.)"""
    outbox = SqliteOutbox(tmp_path / "outbox.db", owner="a", lease_seconds=60)
    await outbox.open()
    try:
        await outbox.add(_lines("old", "pending", "gone"), ["email"])
        claimed = {d.id: d for d in await outbox.settle("email", [], 10)}
        outcomes = [
            Outcome(claimed["id-old"], "delivered"),
            Outcome(claimed["id-gone"], "dead", "550"),
        ]
        await outbox.settle("email", outcomes)
        await outbox.forget_finished(time.time() - 3600)  # delivered just now: kept
        assert [state.status for state in await outbox.states("id-old")] == ["delivered"]
        await outbox.forget_finished(time.time() + 1)  # its time is over
        assert await outbox.states("id-old") == []
        assert [state.status for state in await outbox.states("id-gone")] == ["dead"]
        assert await outbox.pending() == 1
    finally:
        await outbox.close()


async def test_a_turn_records_outcomes_then_claims_in_one_call(make: OutboxFactory) -> None:
    """``settle``: the outcomes given are recorded, and the claim that follows sees them (a
    delivery set to retry now is claimable again in the same call)."""
    outbox = await make("a")
    await outbox.add(_lines("a", "b", "c"), ["email"])
    first, second = await outbox.settle("email", [], 2)
    outcomes = [
        Outcome(first, "delivered"),
        Outcome(second, "retrying", "451 later", next_attempt_at=time.time() - 1),
    ]
    claimed = await outbox.settle("email", outcomes, 5)
    assert [d.id for d in claimed] == ["id-b", "id-c"]  # the retry (due) and the new one
    assert claimed[0].attempts == 1
    assert [s.status for s in await outbox.states("id-a")] == ["delivered"]
    assert await outbox.pending() == 2


async def test_any_text_goes_in_and_comes_out_unchanged(make: OutboxFactory) -> None:
    """Messages and addresses as the API accepts them (NUL, quotes, backslashes, line breaks,
    non-ASCII) are claimed exactly as they were added, with their acceptance times."""
    messages = ["nul\x00byte", 'quote" back\\slash', "ünïcödé 🎉 \u2028", "line\nbreak\r\n", ""]
    queries = [None, "", "q\x00nul", "null", 'ü "q"']
    rows = [
        (f"id-{i}", "email", f"ä{i}@bücher.de", m, q, 1.5 + i)
        for i, (m, q) in enumerate(zip(messages, queries, strict=True))
    ]
    outbox = await make("a")
    await outbox.add(
        [notification_line(i, email, m, q, at) for i, _, email, m, q, at in rows], ["email"]
    )
    claimed = await outbox.settle("email", [], 10)
    assert [(d.id, d.channel, d.recipient, d.message, d.q, d.accepted_at) for d in claimed] == rows
    assert [d.since for d in claimed] == [row[-1] for row in rows]


async def test_each_notification_goes_to_its_own_channels_with_its_own_subject(
    make: OutboxFactory,
) -> None:
    """A line naming channels gets a row for each of them only (none for the others); one
    without gets a row on every channel; a subject comes back with each delivery, a line
    without one comes back with None (the configured subject). Lines with a NUL (SQLite's
    other path) the same."""
    lines = [
        notification_line("all", "a@x.y", "m", None, 1.0),
        notification_line("hook", "b@x.y", "m", None, 2.0, "Sübject \u2028", ["billing"]),
        notification_line("mail", "c@x.y", "nul\x00", None, 3.0, None, ["email"]),
        notification_line("both", "d@x.y", "nul\x00", "q", 4.0, "S", ["email", "billing"]),
        notification_line("none", "e@x.y", "m", None, 5.0, "S", []),
    ]
    outbox = await make("a")
    await outbox.add(lines, ["email", "billing", "ops"])
    claimed = {
        channel: [(d.id, d.subject) for d in await outbox.settle(channel, [], 10)]
        for channel in ("email", "billing", "ops")
    }
    assert claimed == {
        "email": [("all", None), ("mail", None), ("both", "S")],
        "billing": [("all", None), ("hook", "Sübject \u2028"), ("both", "S")],
        "ops": [("all", None)],
    }
    assert await outbox.states("none") == []


async def test_a_backlog_of_many_recipient_requests_goes_in_whole(make: OutboxFactory) -> None:
    """A batch as the intake hands one over after an outage: 25 requests of 1,000 recipients
    each (Redis takes them in several script calls, each request's in one) and single
    notifications between them: every delivery is there once, a retried batch adds none."""
    lines: list[str] = []
    for request in range(25):
        lines.append(
            notification_group(
                [
                    notification_line(f"r{request}-{n}", f"{n}@example.com", "m", None, 1.0)
                    for n in range(1000)
                ]
            )
        )
        lines.append(notification_line(f"single-{request}", "s@example.com", "m", None, 1.0))
    outbox = await make("a")
    await outbox.add(lines, ["email"])
    await outbox.add(lines[-10:], ["email"])  # a batch retried in part: nothing twice
    claimed = await outbox.settle("email", [], 30_000)
    ids = [delivery.id for delivery in claimed]
    assert len(ids) == len(set(ids)) == 25 * 1001


async def test_any_error_text_is_recorded_unchanged(make: OutboxFactory) -> None:
    """Outcomes are recorded with their errors exactly as given, a receiver's NUL, quotes and
    non-ASCII included, and their next attempt as given."""
    errors = ["550 nul\x00byte", '451 "quoted" back\\slash', "ünïcödé \u2028", None]
    outbox = await make("a")
    await outbox.add(_lines("a", "b", "c", "d"), ["email"])
    claimed = await outbox.settle("email", [], 4)
    later = time.time() + 3600
    outcomes = [
        Outcome(delivery, "dead" if error else "delivered", error)
        if i != 1
        else Outcome(delivery, "retrying", error, next_attempt_at=later)
        for i, (delivery, error) in enumerate(zip(claimed, errors, strict=True))
    ]
    await outbox.settle("email", outcomes[1:], 0)  # (SQLite: as one JSON text)
    await outbox.settle("email", outcomes[:1], 0)  # (SQLite: the NUL as a parameter)
    states = [(await outbox.states(d.id))[0] for d in claimed]
    assert [s.last_error for s in states] == errors
    assert [s.status for s in states] == ["dead", "retrying", "dead", "delivered"]
    assert [s.attempts for s in states] == [1, 1, 1, 1]
    assert states[1].next_attempt_at == pytest.approx(later)


async def test_an_outbox_from_before_q_is_brought_up_to_date(tmp_path: Path) -> None:
    """A file written when a webhook row held its whole payload (and no q or retried_at
    column): opened now, its rows are claimed with the message and q the payload held."""
    path = tmp_path / "outbox.db"
    body = '{"type":"notification","id":"n1","time":"x","email":"a@b.c","message":"hi","q":"r"}'
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE deliveries (id TEXT NOT NULL, channel TEXT NOT NULL, recipient TEXT"
            " NOT NULL, message TEXT NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL"
            " DEFAULT 0, last_error TEXT, accepted_at REAL NOT NULL, next_attempt_at REAL NOT"
            " NULL, delivered_at REAL, lease_owner TEXT, lease_until REAL,"
            " PRIMARY KEY (id, channel))"
        )
        old.executemany(
            "INSERT INTO deliveries (id, channel, recipient, message, status, accepted_at,"
            " next_attempt_at) VALUES (?, ?, 'a@b.c', ?, 'queued', 1.0, 1.0)",
            [("n1", "webhook-aaaaaaaa", body), ("n1", "email", "hi")],
        )
    outbox = SqliteOutbox(path, owner="a", lease_seconds=60)
    await outbox.open()
    try:
        [hook] = await outbox.settle("webhook-aaaaaaaa", [], 1)
        [email] = await outbox.settle("email", [], 1)
    finally:
        await outbox.close()
    assert (hook.message, hook.q, hook.since) == ("hi", "r", 1.0)
    assert (email.message, email.q) == ("hi", None)


@pytest.mark.parametrize(
    "fields",
    [
        (1.5, "id-1", "a@example.com", "hi", None, None, None),
        (
            1796144787.7447894,
            'id "quoted" \\',
            "ä@bücher.de",
            "nul\x00 \u2028 🎉 \r\n",
            "",
            None,
            None,
        ),
        (1e-7, "n", "e@x.y", "", 'q "with" quotes', "Sübject \u2028", None),
        (2.0, "s", "e@x.y", "m", None, None, ("email", "billing")),
        (2.0, "s", "e@x.y", "m", None, None, ()),
    ],
)
def test_a_notification_line_is_one_ascii_line_that_reads_back(
    fields: NotificationFields,
) -> None:
    accepted_at, notification_id, email, message, q, subject, channels = fields
    line = notification_line(notification_id, email, message, q, accepted_at, subject, channels)
    assert line.isascii()
    assert line.endswith("\n")
    assert "\n" not in line[:-1]
    assert notification_fields(line) == fields


def test_a_line_of_an_earlier_version_reads_as_every_channel_and_the_default_subject() -> None:
    """Lines spooled before requests could shape their notifications have five fields."""
    line = '[1.5,"id-1","a@example.com","hi",null]\n'
    assert notification_line("id-1", "a@example.com", "hi", None, 1.5) == line
    assert notification_fields(line) == (1.5, "id-1", "a@example.com", "hi", None, None, None)


async def test_an_operators_retry_gives_a_dead_letter_a_new_max_age(tmp_path: Path) -> None:
    """A delivery past its max age is dead without an attempt; retried by an operator, it is
    sent (its time starts again) and keeps when it was accepted."""
    outbox = SqliteOutbox(tmp_path / "outbox.db", owner="a", lease_seconds=60)
    await outbox.open()
    sent: list[Delivery] = []

    async def send(delivery: Delivery) -> None:  # the receiving end
        sent.append(delivery)

    accepted = time.time() - 10
    channel = ScriptedChannel("email", send)
    dispatcher = Dispatcher(outbox, channel, DispatchOptions(max_age=5.0, poll_interval=0.05))
    try:
        await outbox.add(
            [notification_line("old", "a@example.com", "hi", None, accepted)], ["email"]
        )
        await dispatcher.start()
        dispatcher.wake()
        [dead] = await _until_status(outbox, "old", "dead")
        assert dead.last_error == "not delivered within 5 s"
        assert sent == []
        assert await outbox.retry_dead("old") == 1
        dispatcher.wake()
        [delivered] = await _until_status(outbox, "old", "delivered")
        assert [d.id for d in sent] == ["old"]
        assert delivered.accepted_at == accepted
    finally:
        await dispatcher.aclose()
        await outbox.close()


async def _until_status(outbox: Outbox, notification_id: str, status: str) -> list[DeliveryState]:
    """The notification's delivery states once one is ``status``."""

    async def reached() -> list[DeliveryState]:
        states = await outbox.states(notification_id)
        assert any(state.status == status for state in states), states
        return states

    return await eventually(reached, message=f"a delivery {status}")


async def test_while_the_api_is_busy_a_dispatcher_sends_one_at_a_time(tmp_path: Path) -> None:
    """While requests saturate the event loop (``api_busy``) a four-connection dispatcher
    claims and sends one delivery at a time; once they stop, it uses all four again."""
    path = tmp_path / "outbox.db"
    outbox = SqliteOutbox(path, owner="a", lease_seconds=60)
    await outbox.open()
    busy = True
    in_flight: list[str] = []
    release = asyncio.Event()  # each send waits for it: what is claimed meanwhile shows
    sent: list[str] = []
    changed = asyncio.Event()

    async def send(delivery: Delivery) -> None:  # the receiving end
        in_flight.append(delivery.id)
        changed.set()
        try:
            await release.wait()
        finally:
            in_flight.remove(delivery.id)
        sent.append(delivery.id)
        changed.set()

    async def until(condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(10):
            while not condition():
                changed.clear()
                await changed.wait()

    def claimed() -> int:
        with contextlib.closing(sqlite3.connect(path)) as db:
            (count,) = db.execute(
                "SELECT count(*) FROM deliveries WHERE lease_owner IS NOT NULL"
            ).fetchone()
        return int(count)

    options = DispatchOptions(poll_interval=0.05)
    channel = ScriptedChannel("email", send, concurrency=4)
    dispatcher = Dispatcher(outbox, channel, options, api_busy=lambda: busy)
    try:
        await dispatcher.start()
        await outbox.add(_lines("a", "b", "c", at=time.time()), ["email"])
        dispatcher.wake()
        await until(lambda: bool(in_flight))
        assert claimed() == 1  # its turn claimed one, not three
        busy = False
        release.set()
        await until(lambda: len(sent) == 3)
        release.clear()
        await outbox.add(_lines(*"defghi", at=time.time()), ["email"])
        dispatcher.wake()
        await until(lambda: len(in_flight) == 4)  # all four connections at once
        release.set()
        await until(lambda: len(sent) == 9)
    finally:
        await dispatcher.aclose()
        await outbox.close()
