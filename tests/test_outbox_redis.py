"""The Redis outbox on a real Redis: the SQLite outbox's guarantees, shared by processes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from service.outbox.redis import RedisOutbox
from service.outbox.sqlite import NewDelivery
from service.sinks.core import ChannelError


def _rows(*names: str, channel: str = "email") -> list[NewDelivery]:
    return [(f"id-{name}", channel, f"{name}@example.com", f"hi {name}", 1.0) for name in names]


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    async with aioredis.Redis.from_url(redis_url) as client:
        yield client


def _outbox(redis: aioredis.Redis, owner: str, lease: float = 60) -> RedisOutbox:
    return RedisOutbox(redis, "notifications", lease_seconds=lease, ttl=60, owner=owner)


async def test_added_deliveries_are_claimed_once_in_order(redis: aioredis.Redis) -> None:
    outbox = _outbox(redis, "a")
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


async def test_two_workers_never_hold_the_same_delivery(redis: aioredis.Redis) -> None:
    one, two = _outbox(redis, "one"), _outbox(redis, "two")
    await one.add(_rows(*(str(i) for i in range(100))))
    taken: list[str] = []
    while batch := (await one.claim("email", 7)) + (await two.claim("email", 5)):
        taken += [delivery.id for delivery in batch]
    assert sorted(taken) == sorted(f"id-{i}" for i in range(100))


async def test_a_dead_workers_lease_ends_and_another_takes_over(redis: aioredis.Redis) -> None:
    dying = _outbox(redis, "dying", lease=-1.0)  # its lease is over at once
    await dying.add(_rows("x"))
    [held] = await dying.claim("email", 1)
    [taken] = await _outbox(redis, "heir").claim("email", 1)
    assert taken.id == held.id


async def test_outcomes_are_recorded_and_dead_letters_can_be_retried(
    redis: aioredis.Redis,
) -> None:
    outbox = _outbox(redis, "a")
    await outbox.add(_rows("ok", "later", "gone1", "gone2"))
    claimed = {d.id: d for d in await outbox.claim("email", 10)}
    await outbox.delivered(claimed["id-ok"])
    await outbox.retry_at(claimed["id-later"], "451 try later", time.time() + 3600)
    await outbox.dead(claimed["id-gone1"], "550 no such mailbox")
    await outbox.dead(claimed["id-gone2"], "550 no such mailbox")
    [ok] = await outbox.states("id-ok")
    assert (ok.status, ok.attempts) == ("delivered", 1)
    assert ok.delivered_at is not None
    assert 0 < await redis.ttl("notifications:dl:id-ok:email") <= 60
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


async def test_a_disabled_channel_buries_what_nobody_holds(redis: aioredis.Redis) -> None:
    outbox = _outbox(redis, "a")
    await outbox.add(_rows("held", "waiting", channel="webhook-1"))
    [held] = await outbox.claim("webhook-1", 1)
    assert await outbox.bury("webhook-1", "disabled: 410 Gone") == 1
    states = {state.id: state.status for state in await outbox.listed("dead", limit=10, after=None)}
    assert states == {"id-waiting": "dead"}
    assert held.id == "id-held"


async def test_redis_down_is_a_channel_error_without_the_address(tmp_path: object) -> None:
    """An unreachable Redis fails as ChannelError; the address only in its detail."""
    async with aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1) as down:
        outbox = _outbox(down, "a")
        with pytest.raises(ChannelError) as failed:
            await outbox.add(_rows("x"))
    assert "127.0.0.1:1" not in str(failed.value)
    assert failed.value.detail is not None
    assert "127.0.0.1:1" in failed.value.detail
