"""The outbox's intake: a ``Channel`` that adds each batch of accepted deliveries to the outbox
in one transaction, behind the delivery core (admission, batching, retries, the shutdown
deadline and the spool are the core's, as for the log).

A delivery travels through the core as a record whose line is the JSON array
``[recipient, message]`` (ASCII, one line), so it spools and replays like any other record.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

from service.outbox.sqlite import NewDelivery, SqliteOutbox
from service.records import Kind
from service.sinks.base import SinkFull, Wait
from service.sinks.core import Batch, BatchOptions, BatchSink, ChannelError
from service.sinks.spool import JSON_RECORDS, Spool
from service.wire import WireRecord

__all__ = ["OutboxIntake", "OutboxWriter", "delivery_line", "outbox_sink"]


def delivery_line(recipient: str, message: str) -> str:
    """The record line of one delivery: ``[recipient, message]`` as ASCII JSON, one line."""
    return json.dumps([recipient, message], ensure_ascii=True, separators=(",", ":")) + "\n"


class OutboxWriter:
    """Adds batches of deliveries of ``channel`` (``email``) to the outbox."""

    is_open = True

    def __init__(self, outbox: SqliteOutbox, channel: str, added: Callable[[], None]) -> None:
        self._outbox = outbox
        self._channel = channel
        self._added = added
        self.name = f"outbox {outbox.path}"
        self.description = f"the outbox {outbox.path}"

    async def open(self) -> None:
        """The outbox is opened by its owner (the runtime), before this."""

    async def send(self, batch: Batch) -> None:
        rows: list[NewDelivery] = []
        for record_id, line, accepted_at in zip(batch.ids, batch.lines, batch.times, strict=True):
            recipient, message = json.loads(line)
            rows.append((record_id, self._channel, recipient, message, accepted_at))
        try:
            await self._outbox.add(rows)
        except sqlite3.Error as exc:
            raise ChannelError(f"{type(exc).__name__}: {exc}") from None
        self._added()

    async def check(self) -> bool:
        return False

    def unsent(self, batch: Batch) -> list[WireRecord]:
        return batch.records()

    async def close(self) -> list[WireRecord]:
        return []


def outbox_sink(
    outbox: SqliteOutbox,
    channel: str,
    options: BatchOptions,
    *,
    added: Callable[[], None],
    spool: Path,
) -> BatchSink:
    """The sink that takes deliveries of ``channel`` into ``outbox``."""
    writer = OutboxWriter(outbox, channel, added)
    return BatchSink(writer, options, spool=Spool(spool, JSON_RECORDS))


class OutboxIntake:
    """The intake's ``Lines``, refusing (503) once the outbox holds ``limit`` pending
    deliveries: those counted in the outbox (``depth``) and those on their way in."""

    def __init__(self, sink: BatchSink, limit: int, depth: Callable[[], int]) -> None:
        self._sink = sink
        self._limit = limit
        self._depth = depth

    def admit(self) -> None:
        if self._depth() + self._sink.held >= self._limit:
            raise SinkFull(f"the outbox is full ({self._limit} deliveries pending)")
        self._sink.admit()

    def release(self) -> None:
        self._sink.release()

    def submit(self, record_id: str, kind: Kind, line: str, done: Wait = None) -> None:
        self._sink.submit(record_id, kind, line, done)
