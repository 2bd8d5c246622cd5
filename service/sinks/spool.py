"""The spool: where a sink keeps, across a restart, the records it could not deliver by
shutdown's deadline, and how the next start claims them.

A spool is a file of one record per line. ``RAW_LINES`` keeps each record as its log line (a
log's spool is lines an operator could append by hand); ``JSON_RECORDS`` keeps the whole
record (the queue's spool: id, kind and time travel on). The next start *claims* the spool by
renaming it, so with several processes each spool is replayed by one, and a claim left by a
process that died is taken over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import aiofiles
import aiofiles.os

from service.sinks.fs import pid_gone
from service.wire import WireRecord, decode_record, encode_record

__all__ = ["JSON_RECORDS", "RAW_LINES", "Spool", "SpoolCodec", "claim_spools"]

logger = logging.getLogger("service.sinks.spool")


class SpoolCodec(Protocol):
    """How a record is kept in a spool: one line of text each way."""

    def encode(self, record: WireRecord) -> str: ...

    def decode(self, text: str) -> WireRecord: ...


class _RawLines:
    def encode(self, record: WireRecord) -> str:
        return record[2]

    def decode(self, text: str) -> WireRecord:
        return ("", "notification", text, 0.0)


class _JsonRecords:
    def encode(self, record: WireRecord) -> str:
        return encode_record(record)

    def decode(self, text: str) -> WireRecord:
        return decode_record(text)


RAW_LINES: SpoolCodec = _RawLines()
JSON_RECORDS: SpoolCodec = _JsonRecords()


def claim_spools(spool: Path) -> list[Path]:
    """Take the spool (and any a dead process left half-replayed) for this process to replay.

    A rename is atomic, so with several worker processes each spool is replayed by one. A
    claim carrying our own pid cannot be ours yet (we have not claimed anything): it is left
    by an earlier process that had the same pid, as PID 1 in a container always does.
    Blocking; returns the claimed files, oldest first.
    """
    me = os.getpid()

    def claim(path: Path) -> Path:
        target = spool.with_name(f"{spool.name}.{me}.{time.time_ns()}.replay")
        path.replace(target)
        return target

    claimed = []
    for stale in sorted(spool.parent.glob(f"{spool.name}.*.replay"), key=_claim_order):
        pid = stale.name.removeprefix(f"{spool.name}.").split(".")[0]
        if pid.isdigit() and pid_gone(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                claimed.append(claim(stale))
    with contextlib.suppress(FileNotFoundError):
        claimed.append(claim(spool))
    return claimed


def _claim_order(path: Path) -> tuple[int, str]:
    parts = path.name.split(".")
    stamp = parts[-2] if len(parts) >= 3 else ""
    return (int(stamp) if stamp.isdigit() else 0, path.name)


class Spool:
    """One sink's spool file; see the module docstring."""

    def __init__(self, path: Path, codec: SpoolCodec) -> None:
        self.path = path
        self._codec = codec
        self._claimed: list[Path] = []

    async def claim(self) -> list[WireRecord]:
        """Claim what earlier runs left and return its records, oldest first. Raises
        ``OSError`` when the spool's directory cannot be made or a claimed file read."""
        await aiofiles.os.makedirs(self.path.parent, exist_ok=True)
        self._claimed = await asyncio.to_thread(claim_spools, self.path)
        records: list[WireRecord] = []
        for claimed in self._claimed:
            async with aiofiles.open(claimed, "rb") as spooled:
                data = await spooled.read()
            complete, _, torn = data.rpartition(b"\n")
            if torn:  # a write cut short (killed, disk full): never a whole record
                logger.error(
                    "spool %s: dropped an incomplete last record (%d bytes, no end of line)",
                    claimed,
                    len(torn),
                )
            for raw in complete.split(b"\n"):
                if raw:
                    try:
                        records.append(self._codec.decode(raw.decode() + "\n"))
                    except ValueError as exc:
                        logger.error("spool %s: dropped a malformed record: %s", claimed, exc)
        return records

    async def release_claimed(self) -> None:
        """Delete the claimed files: their records were delivered, or are in a new spool."""
        for claimed in self._claimed:
            with contextlib.suppress(FileNotFoundError):
                await aiofiles.os.remove(claimed)
        self._claimed = []

    async def append(self, records: Sequence[WireRecord]) -> None:
        """Add ``records`` to the spool, on disk (fsynced) before this returns; ``OSError``
        if it cannot be written. No makedirs: a directory removed at run time may be an
        unmounted volume, and is not recreated."""
        data = "".join(self._codec.encode(record) for record in records).encode()
        async with aiofiles.open(self.path, "ab") as spool:
            await spool.write(data)
            await spool.flush()
            await asyncio.to_thread(os.fsync, spool.fileno())
