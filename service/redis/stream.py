"""The Redis stream of batches (``NOTIFY_BACKEND=redis``), spoken with redis-py's stream
commands: ``XADD``, ``XREADGROUP``, ``XAUTOCLAIM``, ``XACK``, ``XDEL``, ``XGROUP CREATE``.

An API process adds each batch of lines as one entry (``RedisStream.add``): the field
``records``, the batch's records as a JSON array. Workers read the stream in the consumer group
``writers`` (``StreamReader``) and acknowledge an entry only once its lines are in the log,
deleting it in the same transaction (``XACK`` and ``XDEL``), so the stream holds only what is
not yet written. Nothing trims the stream (``MAXLEN`` would drop the oldest entries whether
they were written or not).

A reader

- **reclaims on a timer**: every ``NOTIFY_REDIS_RECLAIM_INTERVAL`` seconds, whatever it read,
  it takes over (``XAUTOCLAIM``) the entries another consumer has held unacknowledged for
  ``NOTIFY_REDIS_IDLE_TIMEOUT`` (a worker that died), so they are written on a quiet stream
  too. ``XAUTOCLAIM`` is atomic and restarts a claimed entry's idle time, so no two readers
  take the same entry: there is no lock (one held by a killed worker would stop reclaim);
- **makes the group again** when Redis has none (``NOGROUP``: the stream does not exist yet,
  or Redis restarted without its data), reading from the stream's start, so what the API added
  before any worker ran is read too;
- **reads the entries of earlier releases** (taskiq's messages, in the field ``data``), so an
  upgrade loses none of those left in the stream;
- **drops an entry that is not a batch** (no ``records`` field holding a JSON array, nor an
  earlier release's message: something else wrote to the stream) with one log line,
  acknowledged and deleted, so it can neither block the stream nor stop the worker. What it
  held is not logged.

Errors talking to Redis are raised; the worker's loop (``service.redis.worker``) backs off and
reads again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from config import Settings
from service.wire import WireRecord

__all__ = ["GROUP", "RECORDS", "Entry", "RedisStream", "StreamReader"]

logger = logging.getLogger("service.redis.stream")

GROUP = "writers"
"""The consumer group every worker reads in."""
RECORDS = "records"
"""The field of an entry that holds its batch."""


class RedisStream:
    """The stream ``NOTIFY_REDIS_STREAM`` and the client of its Redis, which a process's other
    Redis parts (statuses, write intents, the outbox) share: one connection pool."""

    def __init__(self, settings: Settings) -> None:
        self.name = settings.redis_stream
        timeout = settings.redis_timeout
        self.redis = Redis.from_url(
            settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        # A blocked read must return well before the socket timeout would cut it.
        self.block = min(settings.redis_reclaim_interval, timeout / 2)

    async def add(self, records: Sequence[WireRecord]) -> None:
        """One batch, one entry (``XADD``)."""
        await self.redis.xadd(self.name, {RECORDS: json.dumps(records)})

    async def aclose(self) -> None:
        """Close the connections (the pool belongs to this client)."""
        await self.redis.aclose()


@dataclass(frozen=True, slots=True)
class Entry:
    """One batch read from the stream: its entry id, and its records as JSON decoded them
    (each one is checked before it is written: ``service.wire.parse_wire_record``)."""

    id: bytes
    records: list[Any]


class StreamReader:
    """One consumer of the group ``writers``: new entries as they come, and, on a timer, the
    entries other consumers left."""

    def __init__(
        self, stream: RedisStream, consumer: str, *, idle_timeout: float, reclaim_interval: float
    ) -> None:
        self.consumer = consumer
        self._redis = stream.redis
        self._name = stream.name
        self._block_ms = max(1, int(stream.block * 1000))
        self._idle_ms = int(idle_timeout * 1000)
        self._reclaim_interval = reclaim_interval
        self._next_reclaim = 0.0  # time.monotonic(): the first read reclaims
        self._cursor = "0-0"  # where the next XAUTOCLAIM goes on looking

    async def read(self, count: int) -> list[Entry]:
        """Once per reclaim interval, up to ``count`` entries that other consumers held longer
        than the idle timeout; then up to ``count`` new entries, waiting up to
        ``RedisStream.block`` seconds for the first if there was nothing to take over. Raises
        ``RedisError`` or ``OSError`` when Redis fails."""
        try:
            entries = []
            if time.monotonic() >= self._next_reclaim:
                self._next_reclaim = time.monotonic() + self._reclaim_interval
                entries = await self._reclaim(count)
            fetched: Any = await self._redis.xreadgroup(
                GROUP,
                self.consumer,
                {self._name: ">"},
                count=count,
                block=None if entries else self._block_ms,
            )
            entries += [entry for _, new in fetched or [] for entry in new]
        except ResponseError as exc:
            if not str(exc).startswith("NOGROUP"):
                raise
            await self._make_group()
            return []
        return await self._batches(entries)

    async def ack(self, ids: Sequence[bytes]) -> None:
        """Acknowledge and delete the entries ``ids`` (one transaction)."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xack(self._name, GROUP, *ids)
            pipe.xdel(self._name, *ids)
            await pipe.execute()

    async def _reclaim(self, count: int) -> list[Any]:
        claimed: Any = await self._redis.xautoclaim(
            self._name,
            GROUP,
            self.consumer,
            min_idle_time=self._idle_ms,
            start_id=self._cursor,
            count=count,
        )
        self._cursor = claimed[0]  # "0-0" once the whole pending list has been looked through
        # An entry deleted while pending comes back without fields: nothing to write.
        taken = [entry for entry in claimed[1] if entry[1]]
        if taken:
            logger.warning("redis: took over %d batches another worker did not finish", len(taken))
        return taken

    async def _make_group(self) -> None:
        self._cursor = "0-0"
        try:
            await self._redis.xgroup_create(self._name, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):  # another worker made it first: as good
                raise

    async def _batches(self, entries: list[Any]) -> list[Entry]:
        batches: list[Entry] = []
        foreign: list[bytes] = []
        for entry_id, fields in entries:
            records = _records(fields)
            if records is None:
                foreign.append(entry_id)
            else:
                batches.append(Entry(entry_id, records))
        if foreign:
            logger.error("redis: dropped %d stream entries that are not batches", len(foreign))
            await self.ack(foreign)
        return batches


def _records(fields: dict[bytes, bytes]) -> list[Any] | None:
    """The batch an entry holds, or None if it holds none. An entry that the taskiq-based
    releases added (``data``: a taskiq message whose one argument was the batch's records) is
    read too, so that the entries left in the stream by an upgrade are written, not lost."""
    raw = fields.get(RECORDS.encode())
    if raw is None:
        return _records_of_taskiq_message(fields.get(b"data"))
    try:
        records = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, or nested past Python's stack
        return None
    return records if isinstance(records, list) else None


def _records_of_taskiq_message(raw: bytes | None) -> list[Any] | None:
    """The records of an entry the releases before 2026-12-07 added: taskiq-redis's ``data``
    field, taskiq's message as JSON (``{"task_id": ..., "args": [records], "kwargs": {}}``)."""
    if raw is None:
        return None
    try:
        message = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, or nested past Python's stack
        return None
    args = message.get("args") if isinstance(message, dict) else None
    if not isinstance(args, list) or len(args) != 1 or not isinstance(args[0], list):
        return None
    records: list[Any] = args[0]
    return records
