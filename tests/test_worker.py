"""The worker's parts on a real Redis and real files: delivery (written once, however often a
batch arrives) and the stream reader (reclaim on a timer; acknowledged entries deleted; a lost
group made again; what is not a batch dropped)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError, ResponseError

from config import Settings
from service.redis.delivery import DeliveryService
from service.redis.errors import describe_redis_error, public_redis_error
from service.redis.ledger import RedisLedger
from service.redis.publisher import StreamPublisher
from service.redis.stream import GROUP, Entry, RedisStream, StreamReader
from service.sinks.core import Batch, BatchOptions, BatchSink
from service.sinks.file import file_sink
from service.status import NotificationStatus
from service.wire import WireRecord, parse_wire_record
from tests.conftest import read_lines
from tests.support.waiting import eventually


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    async with aioredis.Redis.from_url(redis_url) as client:
        yield client


@pytest.fixture
async def log_sink(tmp_path: Path) -> AsyncIterator[BatchSink]:
    sink = file_sink(tmp_path / "log.txt", BatchOptions(refuse_while_failing=True))
    await sink.start()
    yield sink
    await sink.aclose()


def _ledger(redis: aioredis.Redis) -> RedisLedger:
    return RedisLedger(redis, "notifications", status_ttl=60, idempotency_ttl=60)


def _delivery(sink: BatchSink, redis: aioredis.Redis) -> DeliveryService:
    return DeliveryService(sink, sink, _ledger(redis), timeout=2.0)


def _batch(*names: str) -> list[list[object]]:
    return [
        [f"id-{name}", "notification", f"notification for {name}@example.com: hi\n", 1.0]
        for name in names
    ]


@pytest.mark.slow
async def test_a_batch_delivered_again_is_not_written_again(
    tmp_path: Path, redis: aioredis.Redis, log_sink: BatchSink
) -> None:
    """The same worker (its memory) and another worker (the ledger in Redis) skip lines
    already written; the batch still counts as done, so it gets acknowledged."""
    batch = _batch("a", "b")
    assert await _delivery(log_sink, redis).deliver(batch)
    first = _delivery(log_sink, redis)
    assert await first.deliver(batch)
    assert await first.deliver(batch)
    assert await _delivery(log_sink, redis).deliver([*batch, *_batch("c")])
    assert read_lines(tmp_path / "log.txt") == [
        "notification for a@example.com: hi",
        "notification for b@example.com: hi",
        "notification for c@example.com: hi",
    ]
    status = json.loads(await redis.get("notifications:status:id-a") or "{}")
    assert status["status"] == "written"


@pytest.mark.slow
async def test_the_memory_window_is_bounded_and_redis_still_remembers(
    tmp_path: Path, redis: aioredis.Redis, log_sink: BatchSink
) -> None:
    """With a window of two ids, the oldest is forgotten in memory; a redelivery of it is
    still skipped, because Redis says it was written."""
    delivery = DeliveryService(log_sink, log_sink, _ledger(redis), timeout=2.0, window=2)
    for name in ("a", "b", "c"):
        assert await delivery.deliver(_batch(name))
    assert await delivery.deliver(_batch("a"))
    assert read_lines(tmp_path / "log.txt") == [
        f"notification for {name}@example.com: hi" for name in ("a", "b", "c")
    ]


@pytest.mark.slow
async def test_a_record_that_is_not_one_printable_line_is_never_written(
    tmp_path: Path, redis: aioredis.Redis, log_sink: BatchSink
) -> None:
    """Whatever put it on the stream, a worker cannot be made to forge a log line."""
    forged = [
        ["id-x", "notification", "notification for x@example.com: hi\nforged line\n", 1.0],
        ["id-y", "notification", "no newline at the end", 1.0],
        ["id-z", "mystery", "notification for z@example.com: hi\n", 1.0],
        "not a record",
    ]
    assert await _delivery(log_sink, redis).deliver([*forged, *_batch("ok")])
    assert read_lines(tmp_path / "log.txt") == ["notification for ok@example.com: hi"]


@pytest.mark.parametrize(
    "raw",
    [
        ["i", "query", "found query: a\u2028b\n", 0],
        ["i", "query", "found query: a\rb\n", 0],
        ["", "query", "found query: ab\n", 0],
        ["i", "query", "found query: ab\n", "yesterday"],
        ["i", "query", "found query: ab\n"],
    ],
)
def test_parse_wire_record_rejects_what_is_not_one_line(raw: list[object]) -> None:
    """Line separators of every kind, and malformed fields, are refused."""
    with pytest.raises(ValueError, match=r"\S"):
        parse_wire_record(raw)


def test_parse_wire_record_keeps_a_good_record() -> None:
    record: WireRecord = ("i", "query", "found query: ab\n", 2.5)
    assert parse_wire_record(list(record)) == record


@pytest.mark.slow
async def test_statuses_in_redis_queued_keeps_what_a_worker_already_recorded(
    redis: aioredis.Redis,
) -> None:
    """The API sets ``queued`` for a whole batch at once, only where no status is set (a
    hand-over retried after a worker wrote the line must not undo ``written``); ``written``
    replaces it, and so does ``failed``, except a ``written`` one. Every status expires with
    the status TTL."""
    ledger = _ledger(redis)
    a, b, c = (parse_wire_record(record) for record in _batch("a", "b", "c"))
    await ledger.queued([a, b])
    await ledger.written([a], at=5.0, attempts=2)
    await ledger.queued([a, b, c])
    await ledger.failed([b], "disk full", 3)
    await ledger.failed([a], "a redelivered copy timed out", 1)  # a is in the log: kept
    assert await ledger.status("id-a") == NotificationStatus(
        id="id-a", status="written", accepted_at=1.0, written_at=5.0, attempts=2
    )
    assert await ledger.status("id-b") == NotificationStatus(
        id="id-b", status="failed", accepted_at=1.0, attempts=3, error="disk full"
    )
    assert await ledger.status("id-c") == NotificationStatus(
        id="id-c", status="queued", accepted_at=1.0
    )
    assert await ledger.status("id-d") is None
    for name in "abc":
        assert 0 < await redis.ttl(f"notifications:status:id-{name}") <= 60


@pytest.mark.slow
async def test_a_worker_stuck_on_a_full_log_leaves_the_batch_for_later(
    tmp_path: Path, redis: aioredis.Redis
) -> None:
    """A log that cannot take the lines: deliver says False (not acknowledged), records the
    failure, and the same batch is written once the log works again."""
    full = file_sink(
        Path("/dev/full"),
        BatchOptions(refuse_while_failing=True, drain_timeout=0.2),
        spool_path=tmp_path / "full.spool",
    )
    await full.start()
    try:
        assert not await DeliveryService(full, full, _ledger(redis), timeout=0.3).deliver(
            _batch("late")
        )
    finally:
        await full.aclose()
    status = json.loads(await redis.get("notifications:status:id-late") or "{}")
    assert status["status"] == "failed"
    working = file_sink(tmp_path / "log.txt", BatchOptions())
    await working.start()
    try:
        assert await _delivery(working, redis).deliver(_batch("late"))
    finally:
        await working.aclose()
    assert read_lines(tmp_path / "log.txt") == ["notification for late@example.com: hi"]


@pytest.fixture
async def stream(redis_url: str, tmp_path: Path) -> AsyncIterator[RedisStream]:
    settings = Settings(
        _env_file=None,
        log_path=tmp_path / "log.txt",
        redis_url=redis_url,
        redis_idle_timeout=0.5,
        redis_reclaim_interval=0.2,
    )
    stream = RedisStream(settings)
    yield stream
    await stream.aclose()


def _reader(stream: RedisStream, name: str) -> StreamReader:
    return StreamReader(stream, name, idle_timeout=0.5, reclaim_interval=0.2)


async def _publish(stream: RedisStream, redis: aioredis.Redis, name: str) -> None:
    """Publish one batch holding the notification of ``{name}@example.com``, as the API does."""
    publisher = StreamPublisher(stream, _ledger(redis).queued)
    await publisher.send(Batch.of(parse_wire_record(record) for record in _batch(name)))


async def _next(reader: StreamReader) -> list[Entry]:
    """The next entries ``reader`` gets (on a quiet stream: once it takes some over)."""

    async def read() -> list[Entry]:
        return await reader.read(10)

    return await eventually(read, message=f"entries for {reader.consumer}")


def _names(entry: Entry) -> list[str]:
    return [record[2] for record in entry.records]


@pytest.mark.slow
async def test_reclaim_runs_on_a_timer_on_a_quiet_stream(
    stream: RedisStream, redis: aioredis.Redis
) -> None:
    """An entry taken by a worker that never acknowledges it goes to another worker after
    the idle timeout, with no new entry arriving; acknowledging it deletes it."""
    first, second = _reader(stream, "first"), _reader(stream, "second")
    assert await first.read(10) == []  # makes the group
    await _publish(stream, redis, "q")
    (held,) = await _next(first)
    assert _names(held) == ["notification for q@example.com: hi\n"]
    (again,) = await _next(second)
    assert again == held
    assert await redis.xlen("notifications") == 1
    await second.ack([again.id])
    assert await redis.xlen("notifications") == 0
    assert (await redis.xpending("notifications", GROUP))["pending"] == 0


@pytest.mark.slow
async def test_a_lost_group_is_made_again_and_reads_from_the_start(
    stream: RedisStream, redis: aioredis.Redis
) -> None:
    """Redis lost the stream and its group (a restart without its data): the reader makes the
    group again and reads what was added meanwhile, from the stream's start."""
    reader = _reader(stream, "only")
    assert await reader.read(10) == []
    await _publish(stream, redis, "before")
    (before,) = await _next(reader)
    await reader.ack([before.id])
    await redis.delete("notifications")  # the stream, its group and their pending list
    await _publish(stream, redis, "after")  # before any worker reads again
    (after,) = await _next(reader)
    assert _names(after) == ["notification for after@example.com: hi\n"]
    groups = await redis.xinfo_groups("notifications")
    assert [group["name"] for group in groups] == [GROUP.encode()]


@pytest.mark.slow
async def test_an_entry_that_is_not_a_batch_is_dropped_not_delivered(
    stream: RedisStream, redis: aioredis.Redis
) -> None:
    """Something else wrote to the stream: its entries are removed, the worker goes on."""
    reader = _reader(stream, "only")
    assert await reader.read(10) == []
    await redis.xadd("notifications", {"not-records": "notification for x@example.com: forged\n"})
    await redis.xadd("notifications", {"records": "not JSON"})
    await redis.xadd("notifications", {"records": '{"not": "a list"}'})
    await redis.xadd("notifications", {"records": "[" * 100_000})  # past Python's recursion
    await redis.xadd("notifications", {b"data": b"[" * 100_000})
    await _publish(stream, redis, "real")
    (delivered,) = await _next(reader)
    assert _names(delivered) == ["notification for real@example.com: hi\n"]
    assert await redis.xlen("notifications") == 1
    await reader.ack([delivered.id])
    assert await redis.xlen("notifications") == 0
    assert (await redis.xpending("notifications", GROUP))["pending"] == 0


async def test_an_entry_of_the_taskiq_releases_is_written_after_an_upgrade(
    stream: RedisStream, redis: aioredis.Redis
) -> None:
    """An entry the taskiq-based releases added (taskiq-redis's ``data`` field: taskiq's
    message as JSON, the batch's records its one argument) left in the stream by an upgrade is
    read as a batch, not dropped."""
    reader = _reader(stream, "only")
    assert await reader.read(10) == []
    record = ["old-id", "notification", "notification for old@example.com: hi\n", 1.5]
    message: dict[str, object] = {
        "task_id": "0f6e",
        "task_name": "service.redis.worker:write_batch",
        "labels": {},
        "labels_types": None,
        "args": [[record]],
        "kwargs": {},
    }
    await redis.xadd("notifications", {b"data": json.dumps(message).encode()})
    await redis.xadd("notifications", {b"data": b'{"args": "not a batch"}'})
    (delivered,) = await _next(reader)
    assert delivered.records == [record]
    await reader.ack([delivered.id])
    assert await redis.xlen("notifications") == 0


def test_a_redis_error_shown_to_clients_has_no_address_and_the_log_line_has_it() -> None:
    """What a 503 and /readyz say (public_redis_error) names the error, not where Redis is;
    the service's own log line (describe_redis_error) keeps the address."""
    refused = ConnectionError("Error 111 connecting to 10.1.2.3:6379. Connection refused.")
    named = ConnectionError("Error -2 connecting to redis.internal:6380. Name not known.")
    assert public_redis_error(refused) == (
        "ConnectionError: Error 111 connecting to Redis. Connection refused."
    )
    assert "redis.internal" not in public_redis_error(named)
    assert "10.1.2.3:6379" in describe_redis_error(refused)
    wrong = ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")
    assert public_redis_error(wrong) == describe_redis_error(wrong)
