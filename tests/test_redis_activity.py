"""The activity log on the Redis backend, through the real app and a real Redis (no worker:
the statuses stay ``queued``, the deliveries wait in the Redis outbox); and the statuses two
API processes' ledgers share, with what a worker's ledger records."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from config import Settings
from service.outbox.base import Outcome
from service.outbox.redis import RedisOutbox
from service.redis.ledger import RedisLedger
from service.status import ActivityQuery, StatusStore
from service.wire import WireRecord
from tests.conftest import make_settings, running
from tests.support.redis import redis_server
from tests.support.waiting import eventually
from tests.test_activity import listed_ids, listing, post

pytestmark = pytest.mark.slow  # redis-server

STREAM = "notifications"


def redis_backend(tmp_path: Path, redis_url: str, **overrides: Any) -> Settings:
    return make_settings(
        tmp_path, backend="redis", redis_url=redis_url, redis_stream=STREAM, **overrides
    )


async def test_a_recipients_notifications_newest_first_from_any_api_process(
    tmp_path: Path, redis_url: str
) -> None:
    """Ada's notifications, and only hers, newest first, with their email; another API
    process lists the same."""
    settings = redis_backend(tmp_path, redis_url)
    async with running(settings) as first, running(settings) as second:
        ada = [await post(first, "ada@example.com") for _ in range(3)]
        await post(second, "bob@example.com")
        ids = await listed_ids(second, 3, email="ada@example.com")
        body = await listing(first, email="ada@example.com", status="queued", channel="log")
        detail = (await second.get(f"/notifications/{ada[0]}")).json()
    assert ids == ada[::-1]
    assert [item["id"] for item in body["items"]] == ada[::-1]
    assert {item["email"] for item in body["items"]} == {"ada@example.com"}
    assert detail["email"] == "ada@example.com"


async def test_pages_follow_next_and_filters_apply(tmp_path: Path, redis_url: str) -> None:
    """``limit`` and ``next`` walk every notification once, newest first; a status no
    notification has gives an empty page; a malformed ``after`` is 422 naming it."""
    async with running(redis_backend(tmp_path, redis_url)) as client:
        posted = [await post(client, f"u{i}@example.com") for i in range(7)]
        await listed_ids(client, 7)
        seen: list[str] = []
        after = None
        while True:
            page = await listing(client, limit=3, **({"after": after} if after else {}))
            seen += [item["id"] for item in page["items"]]
            after = page["next"]
            if after is None:
                break
        written = await listing(client, status="written")
        bad = await client.get("/notifications", params={"after": "nonsense"})
    assert seen == posted[::-1]
    assert written == {"items": [], "next": None}
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["query", "after"]


async def test_dead_deliveries_are_listed_with_their_history(
    tmp_path: Path, redis_url: str
) -> None:
    """With email on, a delivery a worker recorded dead (here, the Redis outbox's own settle,
    as a worker calls it) is listed by ``status=dead`` and by the email channel's filter, with
    the attempt's history; the others' emails are queued."""
    settings = redis_backend(
        tmp_path, redis_url, smtp_url="smtp://127.0.0.1:9", smtp_from="me@example.com"
    )
    async with running(settings) as client, aioredis.Redis.from_url(redis_url) as redis:
        ada = await post(client, "ada@example.com")
        bob = await post(client, "bob@example.com")
        outbox = RedisOutbox(redis, STREAM, lease_seconds=60, ttl=60, owner="a worker")

        async def claimed() -> list[Any]:
            return await outbox.settle("email", [], 10)

        deliveries = {delivery.id: delivery for delivery in await eventually(claimed)}
        await outbox.settle("email", [Outcome(deliveries[ada], "dead", "550 no such mailbox")])
        dead = await listing(client, status="dead")
        by_channel = await listing(client, channel="email", status="dead")
        [found] = (await listing(client, email="ada@example.com"))["items"]
    assert [item["id"] for item in dead["items"]] == [ada]
    assert [item["id"] for item in by_channel["items"]] == [ada]
    email = found["channels"]["email"]
    assert email["status"] == "dead"
    [attempt] = email["history"]
    assert (attempt["outcome"], attempt["error"]) == ("dead", "550 no such mailbox")
    assert bob in deliveries


async def test_expired_entries_leave_the_index_pinned_ones_stay(
    tmp_path: Path, redis_url: str
) -> None:
    """Past NOTIFY_STATUS_TTL an entry leaves the activity log (and the recipient's index)
    once its deliveries are gone; one whose email is still pending stays, and is listed."""
    settings = redis_backend(
        tmp_path,
        redis_url,
        status_ttl=1.0,
        smtp_url="smtp://127.0.0.1:9",
        smtp_from="me@example.com",
    )
    async with running(settings) as client, aioredis.Redis.from_url(redis_url) as redis:
        pending = await post(client, "pending@example.com")
        gone = await post(client, "gone@example.com")
        outbox = RedisOutbox(redis, STREAM, lease_seconds=600, ttl=1.0, owner="a worker")

        async def claimed() -> list[Any]:
            return await outbox.settle("email", [], 10)

        deliveries = {delivery.id: delivery for delivery in await eventually(claimed)}
        await outbox.settle("email", [Outcome(deliveries[gone], "delivered")])  # kept 1 s

        async def expired() -> bool:
            await post(client, "later@example.com")  # expiry runs with the API's batches
            return await redis.zscore(f"{STREAM}:email:gone@example.com", gone) is None

        await eventually(expired, message="the delivered, expired entry dropped")
        assert await redis.zscore(f"{STREAM}:email:pending@example.com", pending) is not None
        [still] = (await listing(client, email="pending@example.com"))["items"]
    assert still["id"] == pending
    assert still["channels"]["email"]["status"] == "queued"


async def test_the_channels_a_request_named_are_read_back_by_another_process(
    redis_url: str,
) -> None:
    """Channels one API process accepted (``()``: the log only; ``("email",)``) are what
    another reads from Redis once the batch is published, in ``status`` and in ``activity``,
    and still after a worker recorded the lines written or failed; a request that named none
    reads None."""
    log_only, mailed, plain, unaddressed = (f"id-{name}" for name in ("l", "m", "p", "u"))
    now = time.time()
    records: list[WireRecord] = [
        (notification_id, "notification", f"notification {notification_id}\n", now)
        for notification_id in (log_only, mailed, plain, unaddressed)
    ]
    async with aioredis.Redis.from_url(redis_url) as redis:

        def ledger(local: StatusStore | None) -> RedisLedger:
            return RedisLedger(redis, STREAM, status_ttl=60, idempotency_ttl=60, local=local)

        first = ledger(StatusStore(limit=100, ttl=60.0))
        second = ledger(StatusStore(limit=100, ttl=60.0))
        worker = ledger(None)
        first.accepted(log_only, now, "l@example.com", ())
        first.accepted(mailed, now, "m@example.com", ("email",))
        first.accepted(plain, now, "p@example.com")
        first.accepted(unaddressed, now, "", ())  # no email: the channels still lead the value
        assert await second.status(log_only) is None
        await first.queued(records)  # as the API's publisher does, before it publishes

        async def read(ledger: RedisLedger) -> dict[str, tuple[str | None, object]]:
            found: dict[str, tuple[str | None, object]] = {}
            for notification_id, *_ in records:
                status = await ledger.status(notification_id)
                assert status is not None, notification_id
                found[notification_id] = (status.status, status.channels)
            return found

        queued = await read(second)
        entries, _ = await second.activity(ActivityQuery())
        await worker.written(records[:3], time.time(), attempts=1)
        await worker.failed(records[3:], "EIO", attempts=1)
        recorded = await read(second)
    channels = {log_only: (), mailed: ("email",), plain: None, unaddressed: ()}
    assert queued == {key: ("queued", value) for key, value in channels.items()}
    assert {entry.id: entry.status.channels for entry in entries if entry.status} == {
        log_only: (),
        mailed: ("email",),
        plain: None,
    }
    assert recorded == {
        log_only: ("written", ()),
        mailed: ("written", ("email",)),
        plain: ("written", None),
        unaddressed: ("failed", ()),
    }


async def test_another_api_process_lists_only_the_log_for_a_notification_to_the_log_only(
    tmp_path: Path, redis_url: str
) -> None:
    """With email on, the API process that did not accept a log-only notification answers
    ``GET /notifications/{id}`` and the activity log with the log alone; one that named no
    channels lists email too."""
    settings = redis_backend(
        tmp_path, redis_url, smtp_url="smtp://127.0.0.1:9", smtp_from="me@example.com"
    )
    async with running(settings) as first, running(settings) as second:
        log_only = await first.post(
            "/send-notification/l@example.com", json={"message": "x", "channels": ["log"]}
        )
        plain = await first.post("/send-notification/p@example.com", json={"message": "y"})
        assert log_only.status_code == plain.status_code == 200, log_only.text

        async def answered(location: str) -> dict[str, Any]:
            response = await second.get(location)
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body

        there = await eventually(lambda: answered(log_only.headers["location"]))
        everywhere = await eventually(lambda: answered(plain.headers["location"]))
        listed = await listing(second, email="l@example.com")
    assert sorted(there["channels"]) == ["log"]
    assert sorted(everywhere["channels"]) == ["email", "log"]
    assert [sorted(item["channels"]) for item in listed["items"]] == [["log"]]


async def test_a_batch_queued_while_redis_is_down_keeps_its_email_and_channels(
    tmp_path: Path,
) -> None:
    """The publisher retries a batch Redis refused: the retry records the email and channels
    the request gave, not a status without them."""
    now = time.time()
    record: WireRecord = ("id-r", "notification", "notification id-r\n", now)
    with redis_server(tmp_path / "redis") as server:
        async with aioredis.Redis.from_url(server.url) as redis:
            ledger = RedisLedger(
                redis, STREAM, status_ttl=60, idempotency_ttl=60, local=StatusStore(100, 60.0)
            )
            reader = RedisLedger(redis, STREAM, status_ttl=60, idempotency_ttl=60, local=None)
            ledger.accepted("id-r", now, "r@example.com", ("email",))
            server.stop()
            with pytest.raises(RedisError):
                await ledger.queued([record])
            server.start()
            await ledger.queued([record])
            status = await reader.status("id-r")
            entries, _ = await reader.activity(ActivityQuery(email="r@example.com"))
    assert status is not None
    assert (status.email, status.channels) == ("r@example.com", ("email",))
    assert [entry.id for entry in entries] == ["id-r"]
