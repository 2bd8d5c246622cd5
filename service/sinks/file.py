"""The file sink: one writer task per log file, one append per batch, through aiofiles.

``admit`` reserves room while the request is handled; ``submit`` appends the finished line to a
queue. The writer task takes everything queued (up to ``batch_size`` lines), joins it into one
``bytes`` and appends it with one write on a handle opened with ``O_APPEND``, so concurrent
writers (other processes too) never interleave inside a line. The handle is unbuffered: once
``write`` returns the bytes are in the operating system and nothing is left in a Python buffer.
A line may carry a future, resolved once its batch is written (and fsynced, with
``fsync="batch"``): many waiting requests share one write (group commit).

A write that fails is retried with capped exponential backoff and jitter; the batch and the
lines behind it wait, in order. Each failure episode is logged once when it starts and once
when it ends. At most every second the writer checks that the file it writes is still the file
at ``path``: a moved one is reopened, and a deleted one gets the lines written since the last
check again, at its path.

Shutdown drains for at most ``drain_timeout`` seconds; what is not written by then goes to
the spool file, which the next start replays into the log before any new line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import select
import stat
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import aiofiles
import aiofiles.os
from aiofiles.threadpool.binary import AsyncFileIO

from service.sinks.base import (
    SinkFull,
    SinkHealth,
    SinkListener,
    SinkUnavailable,
    Wait,
    fail_waits,
    kept_indices,
    resolve_waits,
)

__all__ = [
    "FileSink",
    "FileSinkOptions",
    "FileSinks",
    "RetryPolicy",
    "claim_spools",
    "open_append",
]

logger = logging.getLogger("service.sinks.file")

_REPLAY_CHUNK = 1 << 20

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


@dataclass(frozen=True, slots=True)
class FileSinkOptions:
    """How every file sink of a process behaves (from ``Settings``)."""

    queue_size: int = 100_000
    batch_size: int = 4096
    batch_delay: float = 0.0
    """Seconds to wait for more lines after the first of a batch: under load, lines arrive
    one at a time faster than a thread hop, and a write per line costs more than the line."""
    drain_timeout: float = 10.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    fsync: Literal["never", "batch", "interval"] = "never"
    fsync_interval: float = 1.0
    rotate_bytes: int = 0
    rotate_keep: int = 5
    check_interval: float = 1.0
    """Seconds between checks that the open file is still the file at the path."""
    refuse_while_failing: bool = False
    """Refuse new lines (503) while writes fail, for callers that wait for the write."""


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


def _rotate(path: Path, keep: int) -> None:
    """``path.{keep-1}`` → ``path.{keep}`` … ``path`` → ``path.1``. Runs in a worker thread."""
    for number in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{number}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{number + 1}"))
    path.replace(path.with_name(f"{path.name}.1"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_spools(spool: Path) -> list[Path]:
    """Take the spool (and any a dead process left half-replayed) for this process to replay.

    A rename is atomic, so with several worker processes each spool is replayed by one. A
    claim carrying our own pid cannot be ours yet (we have not claimed anything): it is left
    by an earlier process that had the same pid, as PID 1 in a container always does.
    Runs in a worker thread; returns the claimed files, oldest first.
    """
    me = os.getpid()

    def claim(path: Path) -> Path:
        target = spool.with_name(f"{spool.name}.{me}.{time.time_ns()}.replay")
        path.replace(target)
        return target

    claimed = []
    for stale in sorted(spool.parent.glob(f"{spool.name}.*.replay"), key=_claim_order):
        pid = stale.name.removeprefix(f"{spool.name}.").split(".")[0]
        if pid.isdigit() and (int(pid) == me or not _pid_alive(int(pid))):
            with contextlib.suppress(FileNotFoundError):
                claimed.append(claim(stale))
    with contextlib.suppress(FileNotFoundError):
        claimed.append(claim(spool))
    return claimed


def _claim_order(path: Path) -> tuple[int, str]:
    parts = path.name.split(".")
    stamp = parts[-2] if len(parts) >= 3 else ""
    return (int(stamp) if stamp.isdigit() else 0, path.name)


def _pipe_sized(data: bytes) -> bytes:
    """The longest prefix of ``data`` that is whole lines and at most PIPE_BUF bytes.

    A write of at most PIPE_BUF bytes to a pipe is all or nothing, so a line is never split
    between what a reader got and what is retried (or spooled). A longer single line goes alone.
    """
    if len(data) <= select.PIPE_BUF:
        return data
    cut = data.rfind(b"\n", 0, select.PIPE_BUF) + 1
    return data[:cut] if cut else data[: data.index(b"\n") + 1]


class _Abandoned(Exception):
    """Shutdown's deadline passed while a batch was still unwritten."""


class FileSink:
    """Appends lines to one file; see the module docstring for the guarantees."""

    def __init__(
        self,
        path: Path,
        options: FileSinkOptions | None = None,
        *,
        spool_path: Path | None = None,
        listener: SinkListener | None = None,
    ) -> None:
        self.path = path
        self._listener = listener
        self.spool_path = spool_path or path.with_name(path.name + ".spool")
        self._options = options = options or FileSinkOptions()
        self._handle: AsyncFileIO | None = None
        self._size = 0
        # Admission bounds the queue, so it needs no maxlen. Plain deques cost far less per line
        # than asyncio.Queue; the writer waits on _wake only when the queue is empty.
        self._queue = _Pending()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # set by the writer each time it has written everything
        self._held = 0  # lines admitted and not yet written: reserved, queued or being written
        self._capacity = options.queue_size
        self._error: str | None = None
        self._failing_since = 0.0
        self._probe_after = math.inf
        """While failing, when a request may be admitted again to try the file (see _write)."""
        self._abandon = asyncio.Event()
        self._unwritten = b""
        self._writing = False
        self._last_fsync = time.monotonic()
        self._replays: list[Path] = []  # claimed spools not yet fully written, oldest first
        self._replay_offset = 0  # bytes of self._replays[0] already written
        self._fifo = False
        self._replayed = asyncio.Event()
        self._unverified: list[bytes] = []  # written since the last _verify
        self._verified_at = time.monotonic()
        self._writer: asyncio.Task[None] | None = None

    # -- the Sink protocol ----------------------------------------------------------------

    async def start(self) -> None:
        """Open the file (raising ``OSError`` if it cannot be) and start the writer task.

        Missing parent directories are created here, once. Later reopens do not create them:
        a directory removed at run time may be an unmounted volume, so the writer waits for it
        (and ``/readyz`` says so) rather than writing somewhere nobody looks. A spool left by
        an earlier run is claimed here and written before any new line.
        """
        await aiofiles.os.makedirs(self.path.parent, exist_ok=True)
        await aiofiles.os.makedirs(self.spool_path.parent, exist_ok=True)
        self._handle = await self._open()
        self._replays = await asyncio.to_thread(claim_spools, self.spool_path)
        self._writer = asyncio.create_task(self._run(), name=f"log writer for {self.path}")

    def admit(self) -> None:
        """Reserve room for one line; raise ``SinkFull`` when ``queue_size`` lines are held."""
        if self._held >= self._capacity:
            raise SinkFull(
                f"the buffer of log file {self.path} is full ({self._capacity} lines waiting)"
            )
        if self._error is not None and self._options.refuse_while_failing and not self._probing():
            raise SinkUnavailable(f"log file {self.path}: writes failing: {self._error}")
        self._held += 1

    def release(self) -> None:
        """Give back one reservation."""
        self._held -= 1

    def submit(self, record_id: str, line: str, done: Wait = None) -> None:
        """Queue an admitted ``line`` for the writer."""
        lines = self._queue.add(record_id, line, done)
        if lines == 1:  # it was empty: the writer may be waiting for it
            self._wake.set()

    @property
    def held(self) -> int:
        """Lines admitted and not yet written."""
        return self._held

    def health(self) -> SinkHealth:
        writer = self._writer
        return SinkHealth(
            name=str(self.path),
            running=writer is not None and not writer.done(),
            open=self._handle is not None,
            queued=self._held,
            capacity=self._capacity,
            error=None if self._probing() else self._error,
        )

    def _probing(self) -> bool:
        """Failing, but with nothing left to retry (every line was withdrawn) and the retry
        delay over: lines are taken again, and the next write tries the file (half-open)."""
        return time.monotonic() >= self._probe_after

    async def aclose(self) -> None:
        """Write what is queued, for at most the drain timeout; spool the rest; close."""
        if self._writer is None:  # never started
            await self._close_handle()
            return
        try:
            async with asyncio.timeout(self._options.drain_timeout):
                await self._replayed.wait()
                while self._queue or self._writing:  # until every submitted line is written
                    self._idle.clear()
                    await self._idle.wait()
        except TimeoutError:
            self._abandon.set()
        writer = self._writer
        if writer is not None:
            if not self._writing:
                writer.cancel()  # waiting for a line: nothing is half-written
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        rewrite = await self._verify()  # a log deleted in the last second gets its lines back
        if rewrite:
            self._abandon.set()  # the writer has stopped: one attempt, else to the spool
            with contextlib.suppress(_Abandoned):
                await self._write(rewrite, rewrite.count(b"\n"))
        if self._handle is not None and self._options.fsync != "never":
            with contextlib.suppress(OSError):
                await asyncio.to_thread(os.fsync, self._handle.fileno())
        await self._close_handle()
        # Oldest first: the batch that was being written, the spools not yet replayed, the queue.
        leftover = self._unwritten + await self._unreplayed() + self._drain_queue()
        if leftover:
            await self._spool(leftover)
        for replayed in self._replays:  # their lines are in the new spool now
            with contextlib.suppress(FileNotFoundError):
                await aiofiles.os.remove(replayed)

    # -- the writer task -------------------------------------------------------------------

    async def _run(self) -> None:
        queue = self._queue
        self._writing = True
        try:
            await self._replay_spools()
        except _Abandoned:
            return
        finally:
            self._writing = False
            self._replayed.set()
        if self._abandon.is_set():
            return
        batch_size, delay = self._options.batch_size, self._options.batch_delay
        while True:
            try:
                if not queue:
                    self._idle.set()
                    self._wake.clear()
                    async with asyncio.timeout(
                        self._options.check_interval if self._unverified else None
                    ):
                        await self._wake.wait()
            except TimeoutError:  # idle after writing: check the file (and rewrite) now
                self._writing = True
                try:
                    if rewrite := await self._verify():
                        await self._write(rewrite, rewrite.count(b"\n"))
                except _Abandoned:
                    return
                finally:
                    self._writing = False
                continue
            self._writing = True  # from here on the batch is ours: never cancel mid-batch
            if delay and len(queue) < batch_size:
                await asyncio.sleep(delay)
            batch = queue.take(batch_size)
            kept = batch.live()
            started = time.perf_counter()
            try:
                attempts, written = await self._write(kept.data(), len(kept), kept)
            except _Abandoned:
                batch.fail("not written by the shutdown deadline; kept in the spool")
                return
            else:
                self._held -= len(batch)
                await self._after_write(batch)
                if written and self._listener is not None:
                    self._listener.written(written.ids, attempts, time.perf_counter() - started)
            finally:
                self._writing = False
            if self._abandon.is_set():  # shutdown's deadline passed: leave the rest to aclose
                return

    async def _after_write(self, batch: _Batch) -> None:
        """Fsync as configured, then tell the waiting requests their lines are written."""
        fsync = self._options.fsync
        now = time.monotonic()
        if fsync == "batch" or (
            fsync == "interval" and now - self._last_fsync >= self._options.fsync_interval
        ):
            handle = self._handle
            if handle is not None:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(os.fsync, handle.fileno())
            self._last_fsync = now
        batch.resolve()

    async def _replay_spools(self) -> None:
        """Write the claimed spools to the log, a chunk of whole lines at a time, then delete
        each. On shutdown's deadline the rest stays claimed, for ``aclose`` to spool again."""
        while self._replays:
            replay = self._replays[0]
            logger.warning("log file %s: writing the lines spooled in %s first", self.path, replay)
            async with aiofiles.open(replay, "rb") as spooled:
                while chunk := await spooled.read(_REPLAY_CHUNK):
                    cut = chunk.rfind(b"\n") + 1 if len(chunk) == _REPLAY_CHUNK else len(chunk)
                    data = chunk[: cut or len(chunk)]
                    # Handed to _write: if abandoned, what it did not write is in _unwritten.
                    self._replay_offset += len(data)
                    await spooled.seek(self._replay_offset)
                    await self._write(data, data.count(b"\n"))
                    if self._abandon.is_set():
                        return
            await aiofiles.os.remove(replay)
            self._replays.pop(0)
            self._replay_offset = 0

    async def _unreplayed(self) -> bytes:
        """What the claimed spools still hold that was not written (after ``_unwritten``)."""
        parts = []
        for index, replay in enumerate(self._replays):
            with contextlib.suppress(FileNotFoundError):
                async with aiofiles.open(replay, "rb") as spooled:
                    await spooled.seek(self._replay_offset if index == 0 else 0)
                    parts.append(await spooled.read())
        return b"".join(parts)

    async def _write(
        self, data: bytes, lines: int, batch: _Batch | None = None
    ) -> tuple[int, _Batch | None]:
        """Append ``data`` completely, retrying failures until it is written or abandoned.

        ``data`` is ``batch``'s lines, when given: each failure is reported to the listener,
        and a retry before any byte reached the file leaves out withdrawn lines. Returns how
        many attempts it took and ``batch`` without the lines withdrawn before it was written.
        """
        attempt, begun = 0, False
        while data:
            if attempt and batch is not None and not begun:
                # Before a retry of a batch not begun: leave out the lines whose requests gave
                # up waiting (ack=write answered them 503), so a 503 means "not written".
                batch = batch.live()
                data = batch.data()
                if not data:
                    break
            try:
                handle = await self._ready_handle(len(data))
                written = await handle.write(_pipe_sized(data) if self._fifo else data)
                if written is None:  # a FIFO whose reader is not keeping up
                    raise BlockingIOError(11, "the reader of this pipe is not keeping up")
            except OSError as exc:
                self._unwritten = data
                self._probe_after = math.inf
                await self._close_handle()
                self._record_failure(exc)
                attempt += 1
                if batch is not None and self._listener is not None:
                    self._listener.failed(batch.ids, self._error or str(exc), attempt)
                await self._wait_before_retry(attempt - 1)
                continue
            begun = True
            self._size += written
            self._unverified.append(data[:written])
            data = data[written:]
            if time.monotonic() - self._verified_at >= self._options.check_interval:
                data = await self._verify() + data
        if self._handle is None:  # every line was withdrawn after a failure: reopen anyway
            with contextlib.suppress(OSError):
                self._handle = await self._open()
        self._unwritten = b""
        if begun:
            self._record_recovery(lines)
        elif attempt:
            # Every line was withdrawn, none written: the file is still failing as far as we
            # know, and nothing is left to retry with. After one more retry delay new lines are
            # taken again to try it (_probing); until then they are refused at once.
            self._probe_after = time.monotonic() + self._options.retry.delay(attempt)
        return attempt + 1, batch

    async def _verify(self) -> bytes:
        """Is the open file still the file at ``path``? Returns what must be written again.

        Checked at most every ``check_interval`` seconds (one extra thread trip), not after
        every write: until then the bytes written are kept, so that a log deleted from outside
        gets them again at its path; a moved log keeps them, and the path is reopened.
        """
        self._verified_at = time.monotonic()
        unverified, self._unverified = self._unverified, []
        handle = self._handle
        if handle is None:
            return b""
        try:
            state = await asyncio.to_thread(_file_state, handle.fileno(), self.path)
        except OSError:
            return b""
        if state == "same":
            return b""
        await self._close_handle()
        return b"".join(unverified) if state == "unlinked" else b""

    async def _ready_handle(self, incoming: int) -> AsyncFileIO:
        """The open handle, reopened if needed and rotated first if ``incoming`` overflows it."""
        limit = self._options.rotate_bytes
        if limit and self._handle is not None and self._size > 0 and self._size + incoming > limit:
            await self._close_handle()
            await asyncio.to_thread(_rotate, self.path, self._options.rotate_keep)
        if self._handle is None:
            self._handle = await self._open()
        return self._handle

    async def _open(self) -> AsyncFileIO:
        handle = await open_append(self.path)
        opened = await asyncio.to_thread(os.fstat, handle.fileno())
        self._size, self._fifo = opened.st_size, stat.S_ISFIFO(opened.st_mode)
        return handle

    async def _close_handle(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            with contextlib.suppress(OSError):
                await handle.close()

    async def _wait_before_retry(self, attempt: int) -> None:
        delay = self._options.retry.delay(attempt)
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
            self._held,
        )
        self._error = None

    def _drain_queue(self) -> bytes:
        batch = self._queue.take(len(self._queue))
        batch.fail("not written by the shutdown deadline; kept in the spool")
        return batch.data()

    async def _spool(self, data: bytes) -> None:
        """Keep ``data`` for the next start; if even that fails, put the lines in our log."""
        lines = data.count(b"\n")
        try:
            # No makedirs here: a directory removed at run time is not recreated (see start).
            async with aiofiles.open(self.spool_path, "ab") as spool:
                await spool.write(data)
                await spool.flush()
                await asyncio.to_thread(os.fsync, spool.fileno())
        except OSError as exc:
            logger.error(
                "log file %s: %d lines not written by the shutdown deadline, and the spool %s "
                "failed too (%s); the lines follow",
                self.path,
                lines,
                self.spool_path,
                exc,
            )
            for line in data.decode(errors="replace").splitlines():
                logger.error("unwritten: %s", line)
            return
        logger.error(
            "log file %s: %d lines not written by the shutdown deadline; kept in %s",
            self.path,
            lines,
            self.spool_path,
        )


class _Batch:
    """Lines taken from the queue together, as parallel lists: ``ids[i]``'s line is
    ``lines[i]``, and ``waits[i]`` is its request's future (``NOTIFY_ACK=write``) or None."""

    __slots__ = ("ids", "lines", "waits")

    def __init__(self, ids: list[str], lines: list[str], waits: list[Wait]) -> None:
        self.ids, self.lines, self.waits = ids, lines, waits

    def __len__(self) -> int:
        return len(self.lines)

    def data(self) -> bytes:
        return "".join(self.lines).encode()

    def live(self) -> _Batch:
        """This batch without the lines whose waiting request gave up (and answered 503)."""
        kept = kept_indices(self.waits)
        if kept is None:
            return self
        return _Batch(
            [self.ids[index] for index in kept],
            [self.lines[index] for index in kept],
            [self.waits[index] for index in kept],
        )

    def resolve(self) -> None:
        """Tell the waiting requests that their lines are written."""
        resolve_waits(self.waits)

    def fail(self, reason: str) -> None:
        """Tell the waiting requests that their lines will not be written now."""
        fail_waits(self.waits, reason)


class _Pending:
    """The lines waiting for the writer, in order: three deques of plain values rather than
    one deque of an object per line (see ``Sink.submit`` for why)."""

    __slots__ = ("ids", "lines", "waits")

    def __init__(self) -> None:
        self.ids: deque[str] = deque()
        self.lines: deque[str] = deque()
        self.waits: deque[Wait] = deque()

    def __len__(self) -> int:
        return len(self.lines)

    def add(self, record_id: str, line: str, done: Wait) -> int:
        """Append a line; returns how many are waiting now."""
        self.ids.append(record_id)
        self.waits.append(done)
        lines = self.lines
        lines.append(line)
        return len(lines)

    def take(self, limit: int) -> _Batch:
        """The first ``limit`` lines, removed from the queue."""
        if len(self.lines) <= limit:
            batch = _Batch(list(self.ids), list(self.lines), list(self.waits))
            self.ids.clear()
            self.lines.clear()
            self.waits.clear()
            return batch
        return _Batch(
            [self.ids.popleft() for _ in range(limit)],
            [self.lines.popleft() for _ in range(limit)],
            [self.waits.popleft() for _ in range(limit)],
        )


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
