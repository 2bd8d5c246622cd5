"""The log file: a ``Target`` that appends each batch with one write, through aiofiles.

Only the file's own I/O lives here; batching, retries, admission, the shutdown deadline and
the spool are the delivery core's (``service.sinks.core``).

Each batch's lines are joined into one ``bytes`` and appended with one write on a handle opened
with ``O_APPEND``, so concurrent writers (other processes too) never interleave inside a line.
The handle is unbuffered: once ``write`` returns the bytes are in the operating system and
nothing is left in a Python buffer. A short write is resumed where it stopped (``progress``),
never repeated. After a batch the file is fsynced when configured.

At most every ``check_interval`` seconds (while writing, and while idle) the target checks
that the file it writes is still the file at ``path``: a moved one is reopened at the path, and
a deleted one gets the lines written since the last check again, at its path. A log that
reaches ``rotate_bytes`` is rotated (``log.txt`` → ``log.txt.1`` …) before the write that would
pass it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, TypeVar

import aiofiles.os

from service.sinks.base import SinkListener
from service.sinks.core import Batch, BatchOptions, BatchSink, TargetError
from service.sinks.fs import MACHINE, AppendFile, file_state, open_append, pipe_sized, rotate
from service.sinks.spool import RAW_LINES, Spool
from service.wire import WireRecord

logger = logging.getLogger("service.sinks.file")

__all__ = ["FileOptions", "FileSinks", "LogFile", "WriteGuard", "file_key", "file_sink"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class FileOptions:
    """How a log file is written (from ``Settings``)."""

    fsync: Literal["never", "batch", "interval"] = "never"
    fsync_interval: float = 1.0
    rotate_bytes: int = 0
    rotate_keep: int = 5
    check_interval: float = 1.0
    """Seconds between checks that the open file is still the file at the path."""


class LogFile:
    """Appends batches of lines to the file at ``path``; see the module docstring."""

    def __init__(
        self, path: Path, options: FileOptions | None = None, *, guard: WriteGuard | None = None
    ) -> None:
        self.path = path
        self._guard = guard
        self.name = str(path)
        self.description = f"log file {path}"
        self._options = options or FileOptions()
        self._handle: AppendFile | None = None
        self._size = 0
        self._fifo = False
        self._regular = True
        """The path is a regular file: only one can be fsynced (a FIFO, a tty: EINVAL)."""
        self._unsynced: OSError | None = None
        """Why a handle closed since the last batch could not be fsynced (``_close_handle``)."""
        self._last_fsync = time.monotonic()
        self._unverified: list[bytes] = []  # written since the last check
        self._verified_at = time.monotonic()
        self._rewrite = b""  # lines a deleted log lost, to write again before anything else
        self._encoded: tuple[Batch, bytes] | None = None
        self._open_failed = False  # the last failure was opening the path, not writing

    @property
    def is_open(self) -> bool:
        return self._handle is not None

    async def open(self) -> None:
        """Open the file, creating missing parent directories (once: a directory removed at
        run time may be an unmounted volume, so later reopens wait for it instead)."""
        await aiofiles.os.makedirs(self.path.parent, exist_ok=True)
        self._handle = await self._open()

    async def send(self, batch: Batch) -> None:
        data = self._bytes_of(batch)
        while True:
            await self._write_rewrite()
            rest = data[batch.progress :]
            if not rest:
                break
            if self._guard is not None and batch.ids and not self._fifo:
                batch.progress += await self._guarded_write(rest, batch.ids)
            else:
                batch.progress += await self._write_some(rest)
        self._encoded = None
        await self._fsync_after_batch()

    async def check(self) -> bool:
        """Reopen a file that failed, notice a moved or deleted one, write a deleted one's
        lines again. True when that proved the file works again: it wrote, or it opened a
        file whose opening had failed (an open alone says nothing about a write that failed:
        ``/dev/full`` opens fine)."""
        works = False
        if self._handle is None:
            try:
                self._handle = await self._open()
            except OSError as exc:
                self._open_failed = True
                raise TargetError(_reason(exc)) from None
            works, self._open_failed = self._open_failed, False
        await self._verify()
        if self._rewrite:
            await self._write_rewrite()
            works = True
        return works

    def unsent(self, batch: Batch) -> list[WireRecord]:
        """The lines of ``batch`` past ``progress``; a line cut by a short write gives its
        unwritten end, so the spool completes it rather than repeating it."""
        done, offset, owed = batch.progress, 0, []
        for record in batch.records():
            encoded = record[2].encode()
            if offset + len(encoded) > done:
                if offset < done:
                    tail = encoded[done - offset :].decode(errors="replace")
                    record = (record[0], record[1], tail, record[3])
                owed.append(record)
            offset += len(encoded)
        return owed

    async def close(self) -> list[WireRecord]:
        """Write a log deleted in the last moments again (one try), fsync, close."""
        owed: list[WireRecord] = []
        with contextlib.suppress(TargetError):
            await self._verify()
            await self._write_rewrite()
        if self._rewrite:
            text = self._rewrite.decode(errors="replace")
            owed = [("", "notification", line, 0.0) for line in text.splitlines(keepends=True)]
            self._rewrite = b""
        await self._close_handle()  # (fsynced as configured)
        return owed

    async def under_lock(self, work: Callable[[str, int], Awaitable[T]]) -> T:
        """``work(file key, size)`` holding the file's exclusive lock, so that no writer of
        it (in any process) appends meanwhile. ``TargetError`` if the file cannot be opened."""
        handle = await self._locked_handle(0)
        async with _flocked(handle.fileno()) as opened:
            return await work(file_key(opened.st_dev, opened.st_ino), opened.st_size)

    # -- helpers --------------------------------------------------------------------------

    async def _guarded_write(self, data: bytes, ids: Sequence[str]) -> int:
        """A write preceded, under the file's lock, by its intent (see ``WriteGuard``)."""
        guard = self._guard
        assert guard is not None
        handle = await self._locked_handle(len(data))
        async with _flocked(handle.fileno()) as opened:
            key = file_key(opened.st_dev, opened.st_ino)
            await guard.before_write(key, opened.st_size, len(data), ids)
            return await self._write_some(data)

    async def _locked_handle(self, incoming: int) -> AppendFile:
        try:
            handle = await self._ready_handle(incoming)
        except OSError as exc:
            self._open_failed = True
            raise TargetError(_reason(exc)) from None
        self._open_failed = False
        return handle

    def _bytes_of(self, batch: Batch) -> bytes:
        """The batch's bytes, encoded once however many times it is retried."""
        encoded = self._encoded
        if encoded is None or encoded[0] is not batch:
            encoded = self._encoded = (batch, "".join(batch.lines).encode())
        return encoded[1]

    async def _write_rewrite(self) -> None:
        while self._rewrite:
            written = await self._write_some(self._rewrite)
            self._rewrite = self._rewrite[written:]

    async def _write_some(self, data: bytes) -> int:
        """One write of (a prefix of) ``data``; how many bytes went in, or ``TargetError``."""
        try:
            handle = await self._ready_handle(len(data))
        except OSError as exc:
            self._open_failed = True
            raise TargetError(_reason(exc)) from None
        self._open_failed = False
        try:
            written = await handle.write(pipe_sized(data) if self._fifo else data)
            if written is None:  # a FIFO whose reader is not keeping up
                raise BlockingIOError(errno.EAGAIN, "the reader of this pipe is not keeping up")
        except OSError as exc:
            await self._close_handle()
            raise TargetError(_reason(exc)) from None
        self._size += written
        self._unverified.append(data[:written])
        if time.monotonic() - self._verified_at >= self._options.check_interval:
            await self._verify()
        return written

    async def _verify(self) -> None:
        """Is the open file still the file at ``path``? A moved one is closed (the next write
        opens the path); a deleted one is closed and what was written since the last check
        is written again. One thread hop, at most every ``check_interval`` while writing."""
        self._verified_at = time.monotonic()
        unverified, self._unverified = self._unverified, []
        handle = self._handle
        if handle is None:
            return
        try:
            state = await asyncio.to_thread(file_state, handle.fileno(), self.path)
        except OSError:
            return
        if state == "same":
            return
        await self._close_handle()
        if state == "unlinked" and self._fifo:
            # A FIFO made again by its reader (a collector restarted): what went into the old
            # one was read by its reader; writing it again would repeat it.
            logger.info("%s was replaced: reopening it at its path", self.description)
        elif state == "unlinked":
            self._rewrite = b"".join(unverified) + self._rewrite
            logger.warning(
                "%s was deleted: writing it again at its path, with the last %d lines",
                self.description,
                sum(part.count(b"\n") for part in unverified),
            )
        else:
            logger.info("%s was moved away (rotated): reopening it at its path", self.description)

    async def _ready_handle(self, incoming: int) -> AppendFile:
        """The open handle, reopened if needed and rotated first if ``incoming`` overflows it."""
        limit = self._options.rotate_bytes
        if limit and self._handle is not None and self._size > 0 and self._size + incoming > limit:
            await self._close_handle()
            await asyncio.to_thread(rotate, self.path, self._options.rotate_keep)
        if self._handle is None:
            self._handle = await self._open()
        return self._handle

    async def _open(self) -> AppendFile:
        handle = await open_append(self.path)
        opened = await asyncio.to_thread(os.fstat, handle.fileno())
        self._size, self._fifo = opened.st_size, stat.S_ISFIFO(opened.st_mode)
        self._regular = stat.S_ISREG(opened.st_mode)
        return handle

    async def _close_handle(self) -> None:
        """Close the handle, fsynced first unless ``fsync="never"``: what was written to a
        file just moved away (rotated) or deleted is synced as a batch's bytes are, though the
        batch's own fsync finds no handle (a failure fails that batch: ``_unsynced``)."""
        handle, self._handle = self._handle, None
        if handle is None:
            return
        if self._options.fsync != "never" and self._regular:
            try:
                await asyncio.to_thread(os.fsync, handle.fileno())
            except OSError as exc:
                self._unsynced = exc
        with contextlib.suppress(OSError):
            await handle.close()

    async def _fsync_after_batch(self) -> None:
        """Fsync as configured. With ``fsync="batch"`` a failed fsync fails the batch: it is
        not acknowledged, and its retry (nothing left to write) fsyncs again."""
        fsync = self._options.fsync
        now = time.monotonic()
        if fsync == "batch" or (
            fsync == "interval" and now - self._last_fsync >= self._options.fsync_interval
        ):
            handle = self._handle
            failed, self._unsynced = self._unsynced, None
            if handle is not None and self._regular:
                try:
                    await asyncio.to_thread(os.fsync, handle.fileno())
                except OSError as exc:
                    failed = exc
            if failed is not None and fsync == "batch":
                raise TargetError(f"fsync failed: {_reason(failed)}") from None
            self._last_fsync = now


class WriteGuard(Protocol):
    """Told of each write before it happens, holding the file's lock (the Redis backend's
    workers record where each batch goes: ``service.redis.writes``)."""

    async def before_write(
        self, file: str, offset: int, length: int, ids: Sequence[str]
    ) -> None: ...


def file_key(device: int, inode: int) -> str:
    """A log file's identity across processes: this machine, the file's device and inode."""
    return f"{MACHINE}:{device}:{inode}"


@contextlib.asynccontextmanager
async def _flocked(fd: int) -> AsyncIterator[os.stat_result]:
    """An exclusive ``flock`` of the open file ``fd`` (taken in a worker thread: it may wait
    for another process), and the file's state once held. The lock is on a duplicate of the
    descriptor, so that closing the handle meanwhile cannot unlock some other file."""
    locked = os.dup(fd)
    try:
        await asyncio.to_thread(fcntl.flock, locked, fcntl.LOCK_EX)
        try:
            yield await asyncio.to_thread(os.fstat, locked)
        finally:
            fcntl.flock(locked, fcntl.LOCK_UN)
    finally:
        os.close(locked)


def _reason(exc: OSError) -> str:
    return f"[Errno {exc.errno}] {exc.strerror or exc}"


def file_sink(
    path: Path,
    options: BatchOptions,
    file_options: FileOptions | None = None,
    *,
    spool_path: Path | None = None,
    listener: SinkListener | None = None,
    guard: WriteGuard | None = None,
) -> BatchSink:
    """The sink of one log file: ``LogFile`` behind the delivery core, spooling to
    ``spool_path`` (default ``<log>.spool``) as plain lines."""
    spool = Spool(spool_path or path.with_name(path.name + ".spool"), RAW_LINES)
    log = LogFile(path, file_options, guard=guard)
    return BatchSink(log, options, spool=spool, listener=listener)


class FileSinks:
    """The file sinks of one run: paths that resolve to the same file share one sink."""

    def __init__(self, make_sink: Callable[[Path], BatchSink]) -> None:
        self._make_sink = make_sink
        self._sinks: dict[str, BatchSink] = {}

    def for_path(self, path: Path) -> BatchSink:
        """The sink for ``path``, made on first use; no I/O beyond resolving symlinks."""
        key = os.path.realpath(path)
        sink = self._sinks.get(key)
        if sink is None:
            sink = self._sinks[key] = self._make_sink(path)
        return sink

    def __iter__(self) -> Iterator[BatchSink]:
        return iter(self._sinks.values())
