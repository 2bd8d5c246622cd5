"""The outbox's intake: a ``Target`` that adds each batch of accepted notifications to the
outbox in one transaction, behind the delivery core (admission, batching, retries, the shutdown
deadline and the spool are the core's, as for the log).

A notification travels through the core as one record whose line is its notification line
(``base.notification_line``: ``[accepted_at, id, email, message, q]`` as ASCII JSON, one
line, with ``subject, channels`` when its request gave them), so it spools and replays like
any other record, and reaches the outbox as it is. The notifications of one request of many
recipients travel as one record too (``base.notification_group``), so they enter the outbox
in one transaction. The
outbox makes it a row per delivery channel (``email``, one per webhook URL), all of a batch's
rows in one transaction, so a notification enters every channel, or none. (The SQLite outbox
has SQLite unpack the lines: no line is decoded and encoded again on the way.)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from service.outbox.base import Outbox, group_size, is_group, notification_line
from service.records import Kind
from service.sinks.base import SinkFull, Wait
from service.sinks.core import Batch, BatchOptions, BatchSink
from service.sinks.spool import JSON_RECORDS, Spool
from service.wire import WireRecord

__all__ = ["OutboxIntake", "OutboxWriter", "outbox_sink"]


def _upgraded(line: str, notification_id: str, accepted_at: float) -> str:
    """A line spooled by an earlier version (``[email, message]`` or ``[email, message, q]``:
    no time, no id) as a notification line; a notification line as it is."""
    if not line.startswith('["'):
        return line
    email, message, *rest = json.loads(line)
    return notification_line(
        notification_id, email, message, rest[0] if rest else None, accepted_at
    )


class OutboxWriter:
    """Adds batches of notifications to the outbox, a row per channel of ``channels``."""

    is_open = True

    def __init__(
        self, outbox: Outbox, channels: Sequence[str], added: Callable[[int], None]
    ) -> None:
        self._outbox = outbox
        self._channels = tuple(channels)
        self._added = added
        self.name = f"outbox {outbox.path}"
        self.description = f"the outbox {outbox.path}"

    async def open(self) -> None:
        """The outbox is opened by its owner (the runtime), before this."""

    async def send(self, batch: Batch) -> None:
        lines = [
            _upgraded(line, record_id, accepted_at)
            for record_id, line, accepted_at in zip(
                batch.ids, batch.lines, batch.times, strict=True
            )
        ]
        await self._outbox.add(lines, self._channels)  # TargetError if it cannot take them now
        self._added(sum(group_size(line) - 1 for line in lines if is_group(line)))

    async def check(self) -> bool:
        return False

    def unsent(self, batch: Batch) -> list[WireRecord]:
        return batch.records()

    async def close(self) -> list[WireRecord]:
        return []


def outbox_sink(
    outbox: Outbox,
    channels: Sequence[str],
    options: BatchOptions,
    *,
    added: Callable[[int], None],
    spool: Path,
) -> BatchSink:
    """The sink that takes notifications into ``outbox``, a row per channel of ``channels``."""
    writer = OutboxWriter(outbox, channels, added)
    return BatchSink(writer, options, spool=Spool(spool, JSON_RECORDS))


class OutboxIntake:
    """The intake's ``Lines``, refusing (503) once the outbox holds ``limit`` pending
    deliveries: those counted in the outbox (``depth``) and those on their way in: a line
    each (the sink's ``held``), and the notifications of groups beyond their first
    (``_beyond``, what ``took_in`` is told as their batches go in)."""

    def __init__(self, sink: BatchSink, limit: int, depth: Callable[[], int]) -> None:
        self._sink = sink
        self._limit = limit
        self._depth = depth
        self._beyond = 0
        """Notifications on their way in beyond one a line: an outbox that cannot take them
        (Redis down) must not let requests of many recipients pile up past ``limit``."""

    def admit(self, notifications: int = 1) -> None:
        """Reserve room for a line of ``notifications`` notifications (a group, from one
        request of many recipients, counts as many), or raise ``SinkUnavailable``."""
        sink = self._sink
        if not sink.held:  # nothing on its way (a withdrawn group's count ends here)
            self._beyond = 0
        if self._depth() + sink.held + self._beyond + notifications > self._limit:
            raise SinkFull(f"the outbox is full ({self._limit} deliveries pending)")
        sink.admit()
        self._beyond += notifications - 1

    @property
    def arriving(self) -> bool:
        """Whether notifications are on their way into the outbox (admitted, not yet in)."""
        return self._sink.held > 0

    def took_in(self, beyond: int) -> None:
        """A batch went into the outbox, with ``beyond`` notifications more than its lines."""
        self._beyond = max(0, self._beyond - beyond)

    def release(self) -> None:
        self._sink.release()

    def submit(self, record_id: str, kind: Kind, line: str, done: Wait = None) -> None:
        self._sink.submit(record_id, kind, line, done)
