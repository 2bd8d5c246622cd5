"""The file sink: one writer task per log file, one append per batch, through aiofiles.

``submit`` only puts a finished line on a bounded queue. The writer task takes everything that
is queued (up to ``batch_size`` lines), joins it into one ``bytes`` and appends it with one
write on a handle opened once with ``O_APPEND``, so concurrent writers (other processes too)
never interleave inside a line. The handle is unbuffered: once ``write`` returns, the bytes are
in the operating system, and a failed write leaves nothing half-buffered in Python.

A write that fails is retried with capped exponential backoff and jitter; the batch and the
lines behind it wait, in order. Each failure episode is logged once when it starts and once
when it ends. After every write the writer checks that the file it wrote to is still the file
at ``path``: a file deleted from outside is written again at the path, a moved one is reopened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import aiofiles
import aiofiles.os
from aiofiles.threadpool.binary import AsyncFileIO

from service.records import Entry
from service.sinks.base import SinkFull, SinkHealth

__all__ = ["FileSink", "FileSinks", "RetryPolicy", "open_append"]

logger = logging.getLogger("service.sinks.file")

_FileState = Literal["same", "moved", "unlinked"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Capped exponential backoff with jitter between attempts to write a failing batch."""

    initial: float = 0.05
    maximum: float = 2.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 0)."""
        ceiling = min(self.maximum, self.initial * 2.0**attempt)
        return random.uniform(ceiling / 2, ceiling)


def _nonblocking_opener(path: str, flags: int) -> int:
    # O_NONBLOCK changes nothing for a regular file; for a FIFO it turns a reader that does not
    # keep up into EAGAIN (retried like any failure) instead of a thread blocked for ever.
    return os.open(path, flags | os.O_NONBLOCK, 0o644)


async def open_append(path: Path) -> AsyncFileIO:
    """Open ``path`` for appending, unbuffered."""
    return await aiofiles.open(path, "ab", buffering=0, opener=_nonblocking_opener)


def _file_state(fd: int, path: Path) -> _FileState:
    """Is the open file still the file at ``path``? Runs in a worker thread."""
    opened = os.fstat(fd)
    if opened.st_nlink == 0:
        return "unlinked"
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return "moved"
    if (current.st_dev, current.st_ino) != (opened.st_dev, opened.st_ino):
        return "moved"
    return "same"


class _Abandoned(Exception):
    """Shutdown's deadline passed while a batch was still unwritten."""


class FileSink:
    """Appends entries to one file; see the module docstring for the guarantees."""

    def __init__(
        self,
        path: Path,
        *,
        queue_size: int,
        batch_size: int,
        drain_timeout: float = 10.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.path = path
        self._drain_timeout = drain_timeout
        self._handle: AsyncFileIO | None = None
        # Admission (``admit``) bounds the queue, so the queue itself needs no maxsize.
        self._queue: asyncio.Queue[Entry] = asyncio.Queue()
        self._capacity = queue_size
        self._held = 0  # lines admitted and not yet written: reserved, queued or being written
        self._batch_size = batch_size
        self._retry = retry or RetryPolicy()
        self._error: str | None = None
        self._failing_since = 0.0
        self._abandon = asyncio.Event()
        self._unwritten = b""
        self._writing = False
        self._writer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the file (raising ``OSError`` if it cannot be) and start the writer task.

        Missing parent directories are created here, once. Later reopens do not create them:
        a directory removed at run time may be an unmounted volume, so the writer waits for it
        (and ``/readyz`` says so) rather than writing somewhere nobody looks.
        """
        await aiofiles.os.makedirs(self.path.parent, exist_ok=True)
        self._handle = await open_append(self.path)
        self._writer = asyncio.create_task(self._run(), name=f"log writer for {self.path}")

    def admit(self) -> None:
        """Reserve room for one line; raise ``SinkFull`` when ``queue_size`` lines are held."""
        if self._held >= self._capacity:
            raise SinkFull(
                f"the buffer of log file {self.path} is full ({self._capacity} lines waiting)"
            )
        self._held += 1

    def release(self) -> None:
        """Give back one reservation."""
        self._held -= 1

    async def submit(self, entry: Entry) -> None:
        """Queue an admitted ``entry`` for the writer."""
        self._queue.put_nowait(entry)

    def health(self) -> SinkHealth:
        writer = self._writer
        return SinkHealth(
            name=str(self.path),
            running=writer is not None and not writer.done(),
            open=self._handle is not None,
            queued=self._held,
            capacity=self._capacity,
            error=self._error,
        )

    async def aclose(self) -> None:
        """Write what is queued, for at most the drain timeout, then stop and close."""
        try:
            async with asyncio.timeout(self._drain_timeout):
                await self._queue.join()
        except TimeoutError:
            self._abandon.set()
        writer = self._writer
        if writer is not None:
            if not self._writing:
                writer.cancel()  # waiting for a line: nothing is half-written
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        await self._close_handle()
        leftover = self._unwritten + self._drain_queue()
        if leftover:
            logger.error(
                "log file %s: %d lines not written by the shutdown deadline",
                self.path,
                leftover.count(b"\n"),
            )

    # -- the writer task -------------------------------------------------------------------

    async def _run(self) -> None:
        queue = self._queue
        while True:
            batch = [await queue.get()]
            while len(batch) < self._batch_size:
                try:
                    batch.append(queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
            data = "".join([entry.line for entry in batch]).encode()
            self._writing = True
            try:
                await self._write(data, len(batch))
            except _Abandoned:
                return
            else:
                self._held -= len(batch)
            finally:
                self._writing = False
                for _ in batch:
                    queue.task_done()
            if self._abandon.is_set():  # shutdown's deadline passed: leave the rest to aclose
                return

    async def _write(self, data: bytes, lines: int) -> None:
        """Append ``data`` completely, retrying failures until it is written or abandoned."""
        attempt = 0
        while data:
            try:
                handle = await self._reopened_if_needed()
                written = await handle.write(data)
                if written is None:  # a FIFO whose reader is not keeping up
                    raise BlockingIOError(11, "the reader of this pipe is not keeping up")
                state = await asyncio.to_thread(_file_state, handle.fileno(), self.path)
            except OSError as exc:
                self._unwritten = data
                await self._close_handle()
                self._record_failure(exc)
                await self._wait_before_retry(attempt)
                attempt += 1
                continue
            if state == "unlinked":  # deleted from outside: what we wrote is gone, write again
                await self._close_handle()
                continue
            if state == "moved":  # renamed from outside: what we wrote is safe in the old file
                await self._close_handle()
            data = data[written:]
        self._unwritten = b""
        self._record_recovery(lines)

    async def _reopened_if_needed(self) -> AsyncFileIO:
        if self._handle is None:
            self._handle = await open_append(self.path)
        return self._handle

    async def _close_handle(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            with contextlib.suppress(OSError):
                await handle.close()

    async def _wait_before_retry(self, attempt: int) -> None:
        delay = self._retry.delay(attempt)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._abandon.wait()
        if self._abandon.is_set():
            raise _Abandoned

    def _record_failure(self, exc: OSError) -> None:
        if self._error is not None:
            return
        self._failing_since = time.monotonic()
        self._error = f"[Errno {exc.errno}] {exc.strerror or exc}"
        logger.error(
            "log file %s: write failed: %s; keeping the lines and retrying", self.path, self._error
        )

    def _record_recovery(self, lines: int) -> None:
        if self._error is None:
            return
        logger.warning(
            "log file %s: writing again after %.1f s; %d lines had waited",
            self.path,
            time.monotonic() - self._failing_since,
            self._queue.qsize() + lines,
        )
        self._error = None

    def _drain_queue(self) -> bytes:
        lines = []
        while True:
            try:
                lines.append(self._queue.get_nowait().line)
            except asyncio.QueueEmpty:
                return "".join(lines).encode()


class FileSinks:
    """The file sinks of one process: paths that resolve to the same file share one writer."""

    def __init__(self, make_sink: Callable[[Path], FileSink]) -> None:
        self._make_sink = make_sink
        self._sinks: dict[str, FileSink] = {}

    def for_path(self, path: Path) -> FileSink:
        """The sink for ``path``, made on first use; no I/O beyond resolving symlinks."""
        key = os.path.realpath(path)
        sink = self._sinks.get(key)
        if sink is None:
            sink = self._make_sink(path)
            self._sinks[key] = sink
        return sink

    def __iter__(self) -> Iterator[FileSink]:
        return iter(self._sinks.values())

    async def aclose(self) -> None:
        """Drain and close every sink, concurrently, each within its drain timeout."""
        await asyncio.gather(*(sink.aclose() for sink in self))
