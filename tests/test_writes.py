"""Which batch reached the log (service.redis.writes), on a real Redis and a real file: each
intent ends written or void, decided by the file under its lock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from service.redis.writes import WriteLedger
from service.sinks.core import Batch, BatchOptions
from service.sinks.file import LogFile, file_sink

pytestmark = pytest.mark.slow  # redis-server


@pytest.fixture
async def writes(redis_url: str) -> AsyncIterator[WriteLedger]:
    async with aioredis.Redis.from_url(redis_url) as redis:
        yield WriteLedger(redis, "notifications", ttl=60)


async def _written(log: LogFile, writes: WriteLedger, ids: list[str]) -> set[str]:
    async def check(file: str, size: int) -> set[str]:
        return await writes.written(file, size, ids)

    return await log.under_lock(check)


def _batch(*names: str) -> Batch:
    return Batch.of((f"id-{n}", "notification", f"line {n}\n", 1.0) for n in names)


async def test_a_write_that_happened_is_known_and_one_that_did_not_is_void(
    tmp_path: Path, writes: WriteLedger
) -> None:
    """Intent then write: written. Intent, then the writer dies before writing: not written
    (the file's size is still the intent's offset), and it stays void once others write."""
    log = LogFile(tmp_path / "log.txt", guard=writes)
    await log.open()
    try:
        await log.send(_batch("a", "b"))
        assert await _written(log, writes, ["id-a", "id-b"]) == {"id-a", "id-b"}

        async def intent_only(file: str, size: int) -> None:  # a writer killed here
            await writes.before_write(file, size, len(b"line c\n"), ["id-c"])

        await log.under_lock(intent_only)
        assert await _written(log, writes, ["id-c"]) == set()
        await log.send(_batch("d"))  # the next write lands where c's would have
        assert await _written(log, writes, ["id-c", "id-d"]) == {"id-d"}
    finally:
        await log.close()
    assert (tmp_path / "log.txt").read_text() == "line a\nline b\nline d\n"


async def test_a_later_writer_voids_the_intent_of_one_that_died(
    tmp_path: Path, writes: WriteLedger
) -> None:
    """The dead writer's intent is the tail when the next write comes: that write voids it,
    so the takeover writes the line (once) even after the file has grown."""
    path = tmp_path / "log.txt"
    dead, alive = LogFile(path, guard=writes), LogFile(path, guard=writes)
    await dead.open()
    await alive.open()
    try:

        async def intent_only(file: str, size: int) -> None:
            await writes.before_write(file, size, len(b"line x\n"), ["id-x"])

        await dead.under_lock(intent_only)
        await alive.send(_batch("y"))
        assert await _written(alive, writes, ["id-x", "id-y"]) == {"id-y"}
    finally:
        await dead.close()
        await alive.close()


async def test_another_file_is_not_taken_for_this_one(tmp_path: Path, writes: WriteLedger) -> None:
    """A line written to another log (another machine, or rotated away) is unknown here: the
    takeover writes it again rather than guess."""
    first = file_sink(tmp_path / "a.txt", BatchOptions(), guard=writes)
    other = LogFile(tmp_path / "b.txt", guard=writes)
    await first.start()
    await other.open()
    try:
        first.admit()
        first.submit("id-z", "notification", "line z\n")
        await first.aclose()
        assert await _written(other, writes, ["id-z"]) == set()
    finally:
        await other.close()
