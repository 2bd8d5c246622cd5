"""Both outboxes, SQLite on real files and Redis on a real Redis, held to the same promises:
batches in, leases out (one holder at a time, a dead holder's lease ends), outcomes recorded,
dead letters listed by page and retried, a disabled channel buried."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from service.outbox.base import NewDelivery, Outbox
from service.outbox.redis import RedisOutbox
from service.outbox.sqlite import SqliteOutbox
from service.sinks.core import ChannelError

OutboxFactory = Callable[..., Awaitable[Outbox]]
"""``await make(owner, lease=60)``: an open outbox (of the test's kind) held by ``owner``;
every one a test makes shares the same store, as processes do."""


def _rows(*names: str, channel: str = "email") -> list[NewDelivery]:
    return [(f"id-{name}", channel, f"{name}@example.com", f"hi {name}", 1.0) for name in names]


@pytest.fixture(params=["sqlite", "redis"])
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
    await outbox.add(_rows("a", "b", "c"))
    await outbox.add(_rows("a"))  # a repeated id is kept once
    first = await outbox.claim("email", 2)
    second = await outbox.claim("email", 10)
    assert [d.recipient for d in first + second] == [
        "a@example.com",
        "b@example.com",
        "c@example.com",
    ]
    assert await outbox.claim("email", 10) == []
    assert await outbox.pending() == 3


async def test_two_processes_never_hold_the_same_delivery(make: OutboxFactory) -> None:
    """Two holders of one store (two processes) split the work; nothing twice."""
    one, two = await make("one"), await make("two")
    await one.add(_rows(*(str(i) for i in range(100))))
    taken: list[str] = []
    while batch := (await one.claim("email", 7)) + (await two.claim("email", 5)):
        taken += [delivery.id for delivery in batch]
    assert sorted(taken) == sorted(f"id-{i}" for i in range(100))


async def test_a_dead_processes_lease_ends_and_another_takes_over(make: OutboxFactory) -> None:
    """A lease not finished in time (its holder died) is claimed by the next holder."""
    dying = await make("dying", lease=-1.0)  # its lease is over at once
    await dying.add(_rows("x"))
    [held] = await dying.claim("email", 1)
    [taken] = await (await make("heir")).claim("email", 1)
    assert taken.id == held.id


async def test_outcomes_are_recorded_and_dead_letters_can_be_retried(
    make: OutboxFactory,
) -> None:
    """delivered, retrying (not due before its time), dead; an operator's retry makes the dead
    one due again; listing pages by id."""
    outbox = await make("a")
    await outbox.add(_rows("ok", "later", "gone1", "gone2"))
    claimed = {d.id: d for d in await outbox.claim("email", 10)}
    await outbox.delivered(claimed["id-ok"])
    await outbox.retry_at(claimed["id-later"], "451 try later", time.time() + 3600)
    await outbox.dead(claimed["id-gone1"], "550 no such mailbox")
    await outbox.dead(claimed["id-gone2"], "550 no such mailbox")
    [ok] = await outbox.states("id-ok")
    assert (ok.status, ok.attempts) == ("delivered", 1)
    assert ok.delivered_at is not None
    [later] = await outbox.states("id-later")
    assert (later.status, later.last_error) == ("retrying", "451 try later")
    assert later.next_attempt_at is not None
    assert later.next_attempt_at > time.time()
    assert await outbox.claim("email", 10) == []  # the retry is not due yet
    page = await outbox.listed("dead", limit=1, after=None)
    assert [state.id for state in page] == ["id-gone1"]
    page = await outbox.listed("dead", limit=1, after=page[-1].id)
    assert [state.id for state in page] == ["id-gone2"]
    assert await outbox.listed("dead", limit=1, after=page[-1].id) == []
    assert await outbox.retry_dead("id-gone1") == 1
    assert await outbox.retry_dead("id-ok") == 0
    [again] = await outbox.claim("email", 10)
    assert (again.id, again.attempts) == ("id-gone1", 1)
    assert await outbox.pending() == 2


async def test_a_disabled_channel_buries_what_nobody_holds(make: OutboxFactory) -> None:
    outbox = await make("a")
    await outbox.add(_rows("held", "waiting", channel="webhook-1"))
    [held] = await outbox.claim("webhook-1", 1)
    assert await outbox.bury("webhook-1", "disabled: 410 Gone") == 1
    dead = await outbox.listed("dead", limit=10, after=None)
    assert {state.id: state.status for state in dead} == {"id-waiting": "dead"}
    assert held.id == "id-held"


async def test_delivered_ones_expire_from_redis(redis_url: str) -> None:
    """Redis keeps a delivered delivery for the status TTL only; dead ones stay."""
    async with aioredis.Redis.from_url(redis_url) as redis:
        outbox = RedisOutbox(redis, "notifications", lease_seconds=60, ttl=60, owner="a")
        await outbox.add(_rows("ok"))
        [ok] = await outbox.claim("email", 1)
        await outbox.delivered(ok)
        assert 0 < await redis.ttl("notifications:dl:id-ok:email") <= 60


async def test_redis_down_is_a_channel_error_without_the_address() -> None:
    """An unreachable Redis fails as ChannelError; the address only in its detail."""
    async with aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1) as down:
        outbox = RedisOutbox(down, "notifications", lease_seconds=60, ttl=60, owner="a")
        with pytest.raises(ChannelError) as failed:
            await outbox.add(_rows("x"))
    assert "127.0.0.1:1" not in str(failed.value)
    assert failed.value.detail is not None
    assert "127.0.0.1:1" in failed.value.detail


async def test_sqlite_forgets_what_was_delivered_long_enough_ago(tmp_path: Path) -> None:
    """What was delivered before the horizon is dropped; pending and dead ones stay. (Redis
    lets a delivered one expire by itself: see the test above.)"""
    outbox = SqliteOutbox(tmp_path / "outbox.db", owner="a", lease_seconds=60)
    await outbox.open()
    try:
        await outbox.add(_rows("old", "pending", "gone"))
        claimed = {d.id: d for d in await outbox.claim("email", 10)}
        await outbox.delivered(claimed["id-old"])
        await outbox.dead(claimed["id-gone"], "550")
        await outbox.forget_finished(time.time() - 3600)  # delivered just now: kept
        assert [state.status for state in await outbox.states("id-old")] == ["delivered"]
        await outbox.forget_finished(time.time() + 1)  # its time is over
        assert await outbox.states("id-old") == []
        assert [state.status for state in await outbox.states("id-gone")] == ["dead"]
        assert await outbox.pending() == 1
    finally:
        await outbox.close()
