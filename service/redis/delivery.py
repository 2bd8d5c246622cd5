"""What a worker does with a batch taken from the queue (``NOTIFY_BACKEND=redis``).

The batch's lines go to the worker's file sinks, the same code that writes the log with the
local backend. A batch may arrive more than once (a worker died before acknowledging it, or
took longer than the idle timeout), so lines already written are skipped: those this worker
wrote recently (a bounded window in memory, which also covers lines still being written) and
those any worker recorded as written in the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from service.records import Kind
from service.redis.writes import WriteLedger
from service.sinks.base import Lines, SinkUnavailable
from service.sinks.core import TargetError
from service.sinks.file import LogFile
from service.wire import WireRecord, parse_wire_record

__all__ = ["DeliveryService", "WrittenLedger"]

logger = logging.getLogger("service.redis.worker")


class WrittenLedger(Protocol):
    """Where workers record what they wrote (``service.redis.ledger.RedisLedger``)."""

    async def written_among(self, ids: Sequence[str]) -> set[str]: ...

    async def written(self, records: Iterable[WireRecord], at: float, attempts: int) -> None: ...

    async def failed(self, records: Iterable[WireRecord], error: str, attempts: int) -> None: ...


class DeliveryService:
    """Writes each delivered line once; says whether the batch may be acknowledged."""

    def __init__(
        self,
        notifications: Lines,
        queries: Lines,
        ledger: WrittenLedger,
        *,
        timeout: float,
        window: int = 100_000,
        files: Mapping[Kind, LogFile] | None = None,
        writes: WriteLedger | None = None,
    ) -> None:
        self._sinks = {"notification": notifications, "query": queries}
        self._files = files or {}
        self._writes = writes
        self._ledger = ledger
        self._timeout = timeout
        self._window = window
        # Ids written or being written here, oldest first. An OrderedDict: a dict emptied from
        # the front finds its oldest entry in time growing with the deleted slots before it.
        self._recent: OrderedDict[str, None] = OrderedDict()

    async def deliver(self, batch: object) -> bool:
        """Write the lines of ``batch`` not written before. True when all of them are in the
        log (acknowledge the message); False when the batch must be delivered again (the log
        or the ledger failed, or the write took longer than ``timeout``)."""
        records = _parse(batch)
        fresh = [record for record in records if record[0] not in self._recent]
        try:
            done = await self._ledger.written_among([record[0] for record in fresh])
        except SinkUnavailable as exc:
            logger.error("cannot tell which lines were written (%s); batch left for later", exc)
            return False
        todo = [record for record in fresh if record[0] not in done]
        try:
            already = await self._in_the_log(todo)
        except TargetError as exc:
            logger.error("cannot tell which lines reached the log (%s); batch left for later", exc)
            return False
        if already:  # written by a worker that died before recording it: not written again
            await self._record_written([r for r in todo if r[0] in already])
            todo = [record for record in todo if record[0] not in already]
        if not todo:
            return True
        refused = self._admit(todo)
        if refused is not None:
            await self._record_failure(todo, refused)
            return False
        loop = asyncio.get_running_loop()
        waits: list[asyncio.Future[None]] = []
        for record_id, kind, line, _ in todo:
            waits.append(loop.create_future())
            self._remember(record_id)
            self._sinks[kind].submit(record_id, kind, line, waits[-1])
        try:
            async with asyncio.timeout(self._timeout):
                await asyncio.gather(*waits)
        except (TimeoutError, SinkUnavailable) as exc:
            await self._give_up(todo, waits, str(exc) or f"not written within {self._timeout:g} s")
            return False
        try:
            await self._ledger.written(todo, time.time(), attempts=1)
        except SinkUnavailable as exc:  # written but not recorded: only this worker knows
            logger.error("lines written but not recorded as written (%s)", exc)
            return False
        return True

    async def _in_the_log(self, todo: list[WireRecord]) -> set[str]:
        """Which of ``todo`` a worker already wrote to the log this worker writes (see
        ``service.redis.writes``): checked under each file's lock."""
        writes = self._writes
        if writes is None or not todo:
            return set()
        found: set[str] = set()
        for kind, log in self._files.items():
            ids = [record[0] for record in todo if record[1] == kind]
            if ids:

                async def check(file: str, size: int, ids: list[str] = ids) -> set[str]:
                    assert writes is not None
                    return await writes.written(file, size, ids)

                found |= await log.under_lock(check)
        return found

    async def _record_written(self, records: list[WireRecord]) -> None:
        with contextlib.suppress(SinkUnavailable):
            await self._ledger.written(records, time.time(), attempts=1)

    def _admit(self, todo: list[WireRecord]) -> str | None:
        """Reserve room for every line, or none (and say why)."""
        admitted: list[Lines] = []
        try:
            for record in todo:
                sink = self._sinks[record[1]]
                sink.admit()
                admitted.append(sink)
        except SinkUnavailable as exc:
            for sink in admitted:
                sink.release()
            logger.warning(
                "the log cannot take %d lines now (%s); batch left for later", len(todo), exc
            )
            return str(exc)
        return None

    def _remember(self, record_id: str) -> None:
        recent = self._recent
        recent[record_id] = None
        while len(recent) > self._window:
            recent.popitem(last=False)

    async def _give_up(
        self, todo: list[WireRecord], waits: list[asyncio.Future[None]], reason: str
    ) -> None:
        """The write did not finish in time: withdraw the lines whose write has not begun
        (see ``service.sinks.core``) and leave the batch to be delivered again."""
        for wait in waits:
            wait.cancel()
        for record in todo:
            self._recent.pop(record[0], None)
        logger.warning("%d lines not written in time (%s); batch left for later", len(todo), reason)
        await self._record_failure(todo, reason)

    async def _record_failure(self, todo: list[WireRecord], reason: str) -> None:
        with contextlib.suppress(SinkUnavailable):
            await self._ledger.failed(todo, reason, attempts=1)


def _parse(batch: object) -> list[WireRecord]:
    """The well-formed records of ``batch``; each malformed one is logged and dropped (it can
    never become well-formed, so retrying it would only block the stream)."""
    if not isinstance(batch, list):
        logger.error("dropped a message that is not a list of records (%s)", type(batch).__name__)
        return []
    records: list[WireRecord] = []
    for raw in batch:
        try:
            records.append(parse_wire_record(raw))
        except ValueError as exc:
            logger.error("dropped a malformed record: %s", exc)
    return records
