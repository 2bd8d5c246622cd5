"""The outbox's intake: a ``Channel`` that adds each batch of accepted deliveries to the outbox
in one transaction, behind the delivery core (admission, batching, retries, the shutdown
deadline and the spool are the core's, as for the log).

A notification travels through the core as one record whose line is the JSON array
``[email, message, q]`` (ASCII, one line), so it spools and replays like any other record. The
writer turns each record into one row per delivery channel (``email``, one per webhook URL),
all of a batch's rows in one transaction: a notification enters every channel, or none.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from service.outbox.base import NewDelivery, Outbox
from service.records import Kind
from service.sinks.base import SinkFull, Wait
from service.sinks.core import Batch, BatchOptions, BatchSink
from service.sinks.spool import JSON_RECORDS, Spool
from service.wire import WireRecord

__all__ = [
    "OutboxIntake",
    "OutboxWriter",
    "RowBuilder",
    "delivery_line",
    "email_rows",
    "outbox_sink",
]

RowBuilder = Callable[[str, str, str, str | None, float], Iterable[NewDelivery]]
"""The outbox rows of one notification ``(id, email, message, q, accepted_at)`` for one kind of
channel."""


def delivery_line(email: str, message: str, q: str | None = None) -> str:
    """The record line of one notification's deliveries: ``[email, message, q]`` as ASCII
    JSON (``json.dumps``'s defaults, its quickest way), one line."""
    return json.dumps([email, message, q]) + "\n"


def email_rows(
    notification_id: str, email: str, message: str, q: str | None, accepted_at: float
) -> list[NewDelivery]:
    """The email channel's one row: to the notification's address, the message as body."""
    return [(notification_id, "email", email, message, None, accepted_at)]


class OutboxWriter:
    """Adds batches of notifications to the outbox, one row per channel (``builders``)."""

    is_open = True

    def __init__(
        self, outbox: Outbox, builders: Sequence[RowBuilder], added: Callable[[], None]
    ) -> None:
        self._outbox = outbox
        self._builders = tuple(builders)
        self._added = added
        self.name = f"outbox {outbox.path}"
        self.description = f"the outbox {outbox.path}"

    async def open(self) -> None:
        """The outbox is opened by its owner (the runtime), before this."""

    async def send(self, batch: Batch) -> None:
        rows: list[NewDelivery] = []
        for record_id, line, accepted_at in zip(batch.ids, batch.lines, batch.times, strict=True):
            email, message, *rest = json.loads(line)  # a spool of before q: [email, message]
            q = rest[0] if rest else None
            for build in self._builders:
                rows.extend(build(record_id, email, message, q, accepted_at))
        await self._outbox.add(rows)  # ChannelError if the outbox cannot take them now
        self._added()

    async def check(self) -> bool:
        return False

    def unsent(self, batch: Batch) -> list[WireRecord]:
        return batch.records()

    async def close(self) -> list[WireRecord]:
        return []


def outbox_sink(
    outbox: Outbox,
    builders: Sequence[RowBuilder],
    options: BatchOptions,
    *,
    added: Callable[[], None],
    spool: Path,
) -> BatchSink:
    """The sink that takes notifications into ``outbox``, a row per channel (``builders``)."""
    writer = OutboxWriter(outbox, builders, added)
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
