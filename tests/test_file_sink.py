"""The file sink: batching, and what it does when the file fails, moves or disappears."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.retry import Backoff
from service.sinks.core import Batch, BatchOptions, BatchSink
from service.sinks.file import FileOptions, file_sink
from service.sinks.spool import JSON_RECORDS, Spool
from service.wire import WireRecord
from tests.conftest import make_settings, read_lines, running
from tests.support.collector import queue_lines
from tests.support.fifo import read_available
from tests.support.waiting import eventually


async def wait_for_lines(path: Path, count: int) -> None:
    """Wait until ``path`` holds at least ``count`` lines."""
    await eventually(
        lambda: count_lines(path) >= count,
        message=lambda: f"{path} reaching {count} lines (it has {count_lines(path)})",
    )


async def wait_for_readiness(client: httpx.AsyncClient, status: int) -> dict[str, Any]:
    """Poll ``/readyz`` until it answers ``status``; return its body."""

    async def answered() -> dict[str, Any]:
        response = await client.get("/readyz")
        assert response.status_code == status, (
            f"/readyz said {response.status_code}: {response.text}"
        )
        return response.json()  # type: ignore[no-any-return]

    return await eventually(answered, interval=0.02, message=f"/readyz answering {status}")


def count_lines(*paths: Path) -> int:
    """How many lines ``paths`` hold together (a missing file holds none)."""
    return sum(path.read_bytes().count(b"\n") for path in paths if path.exists())


def write_syscalls() -> int:
    """This process's count of write system calls, from ``/proc/self/io``."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("syscw:"):
            return int(line.split()[1])
    raise AssertionError("no syscw in /proc/self/io")


async def test_queued_lines_are_written_in_few_large_writes(tmp_path: Path) -> None:
    """20,000 queued lines reach the file in order, in about one write per batch."""
    sink = file_sink(tmp_path / "log.txt", BatchOptions(queue_size=20_000, batch_size=1000))
    await sink.start()
    before = write_syscalls()
    for i in range(20_000):
        sink.admit()
        sink.submit(str(i), "notification", f"line {i}\n")
    await sink.aclose()
    writes = write_syscalls() - before
    assert read_lines(tmp_path / "log.txt") == [f"line {i}" for i in range(20_000)]
    assert writes <= 20_000 // 1000 + 5


async def test_waiting_lines_leave_no_object_for_the_garbage_collector(tmp_path: Path) -> None:
    """Lines wait for their batch after their request has ended; queued as plain strings they
    add nothing to the collector's count (an object per line did: with ~50 requests per
    collection of the young generation under load, see ``Sink.submit``)."""
    count = 10_000
    sink = file_sink(tmp_path / "log.txt", BatchOptions(queue_size=count))
    _, _, grown = queue_lines(sink, count)
    assert grown < count // 100, f"{grown} tracked objects for {count} queued lines"
    await sink.start()
    await sink.aclose()
    assert read_lines(tmp_path / "log.txt") == [f"line {i}" for i in range(count)]


async def test_missing_parent_directories_are_created(tmp_path: Path) -> None:
    """A log path whose directories do not exist yet is created at startup."""
    settings = make_settings(tmp_path, log_path=tmp_path / "a" / "b" / "log.txt")
    async with running(settings) as client:
        await client.post("/send-notification/a@example.com")
    assert read_lines(settings.log_path) == ["notification for a@example.com: some notification"]


async def test_failing_writes_are_logged_once_and_requests_still_succeed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """On ``/dev/full`` every request still gets 200, ``/readyz`` says why, one error is logged."""
    settings = make_settings(
        tmp_path, log_path=Path("/dev/full"), spool_path=tmp_path / "spool", shutdown_timeout=0.3
    )
    async with running(settings) as client:
        statuses = [
            (await client.post(f"/send-notification/u{i}@example.com")).status_code
            for i in range(30)
        ]
        body = await wait_for_readiness(client, 503)
        more = [
            (await client.post("/send-notification/late@example.com")).status_code for _ in range(5)
        ]
    assert statuses == [200] * 30
    assert more == [200] * 5
    assert body["status"] == "unavailable"
    assert "No space left on device" in body["reasons"][0]
    failures = [
        record
        for record in caplog.records
        if record.levelno == logging.ERROR and "write failed" in record.getMessage()
    ]
    assert len(failures) == 1
    assert "/dev/full" in failures[0].getMessage()
    assert "Errno 28" in failures[0].getMessage()


async def test_lines_wait_while_the_directory_is_gone_and_are_written_after(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The log's directory removed then recreated: the waiting lines land afterwards, in order."""
    caplog.set_level(logging.INFO, logger="service")
    log_dir = tmp_path / "logs"
    settings = make_settings(tmp_path, log_path=log_dir / "log.txt", file_check_interval=0.05)
    async with running(settings) as client:
        await client.post("/send-notification/before@example.com")
        await wait_for_lines(settings.log_path, 1)
        shutil.rmtree(log_dir)
        for i in range(20):
            assert (await client.post(f"/send-notification/w{i}@example.com")).status_code == 200
        body = await wait_for_readiness(client, 503)
        assert "No such file or directory" in body["reasons"][0]
        log_dir.mkdir()
        await wait_for_readiness(client, 200)
    # The line written just before the removal may come again (the removed file had it).
    lines = read_lines(settings.log_path)
    assert lines[-20:] == [
        f"notification for w{i}@example.com: some notification" for i in range(20)
    ]
    assert lines[:-20] in ([], ["notification for before@example.com: some notification"])
    messages = [record.getMessage() for record in caplog.records]
    assert sum("write failed" in message for message in messages) == 1
    assert sum("writing again" in message for message in messages) == 1


async def test_a_deleted_log_is_recreated_and_nothing_after_is_lost(tmp_path: Path) -> None:
    """When the log file is deleted from outside, later lines go to a new file at the path."""
    settings = make_settings(tmp_path, file_check_interval=0.05)
    async with running(settings) as client:
        await client.post("/send-notification/first@example.com")
        await wait_for_lines(settings.log_path, 1)
        settings.log_path.unlink()
        for i in range(50):
            await client.post(f"/send-notification/after{i}@example.com")
    lines = read_lines(settings.log_path)
    assert lines[-50:] == [
        f"notification for after{i}@example.com: some notification" for i in range(50)
    ]
    assert lines[:-50] in ([], ["notification for first@example.com: some notification"])


async def test_a_moved_log_is_reopened_and_nothing_is_lost(tmp_path: Path) -> None:
    """After an outside rename (logrotate), lines go to a new file; none is lost or doubled."""
    settings = make_settings(tmp_path, file_check_interval=0.05)
    log, moved = settings.log_path, tmp_path / "log.txt.1"
    async with running(settings) as client:
        for i in range(10):
            await client.post(f"/send-notification/a{i}@example.com")
        await wait_for_lines(log, 10)
        log.rename(moved)
        # One line at a time, each written (to either file) before the next is sent, until
        # the sink's next check of its file notices the move and a line lands at the path.
        sent = 10

        async def one_more_line_written() -> bool:
            nonlocal sent
            await client.post(f"/send-notification/a{sent}@example.com")
            sent += 1
            await eventually(
                lambda: count_lines(moved, log) >= sent,
                message=f"a{sent - 1}@example.com written",
            )
            return count_lines(log) > 0

        if count_lines(log) == 0:
            await eventually(one_more_line_written, interval=0, message=f"a new file at {log}")
        for i in range(sent, sent + 20):
            await client.post(f"/send-notification/a{i}@example.com")
        sent += 20
    expected = [f"notification for a{i}@example.com: some notification" for i in range(sent)]
    old, new = read_lines(moved), read_lines(log)
    assert old + new == expected
    # The line that showed the new file, and every line sent after it, are in the new file.
    assert new[-21:] == expected[-21:]


async def _acknowledged(sink: BatchSink, line: str) -> None:
    """Submit ``line`` as a ``NOTIFY_ACK=write`` request would, and wait for its write."""
    written = asyncio.get_running_loop().create_future()
    sink.admit()
    sink.submit(line, "notification", f"{line}\n", written)
    await written


async def test_with_fsync_batch_an_acknowledged_batch_was_fsynced_even_if_the_log_moved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``NOTIFY_FSYNC=batch``: a batch written to the log just before logrotate moved it (the
    writer's check then closes that file) is acknowledged only once that file, where its
    bytes are, was fsynced."""
    synced: list[int] = []
    fsync = os.fsync

    def recording(fd: int) -> None:  # the real fsync, noting which file it synced
        synced.append(os.fstat(fd).st_ino)
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    log = tmp_path / "log.txt"
    options = BatchOptions(refuse_while_failing=True, check_interval=3600)
    sink = file_sink(log, options, FileOptions(fsync="batch", check_interval=0.0))
    await sink.start()
    try:
        await _acknowledged(sink, "first")
        moved = tmp_path / "log.txt.1"
        log.rename(moved)  # logrotate's create: move, then a new file
        log.touch()
        synced.clear()
        await _acknowledged(sink, "second")
        assert moved.read_text() == "first\nsecond\n"
        assert moved.stat().st_ino in synced
    finally:
        await sink.aclose()


async def test_with_fsync_batch_a_log_that_is_a_pipe_is_acknowledged(tmp_path: Path) -> None:
    """``NOTIFY_FSYNC=batch`` and a log that is a FIFO (or a tty), which cannot be fsynced
    (EINVAL): the batch is acknowledged once in the pipe, not retried for ever."""
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        sink = file_sink(fifo, BatchOptions(refuse_while_failing=True), FileOptions(fsync="batch"))
        await sink.start()
        try:
            await _acknowledged(sink, "line 1")
        finally:
            await sink.aclose()
        assert read_available(reader) == b"line 1\n"
    finally:
        os.close(reader)


class _HungTarget:
    """A target whose first delivery hangs until ``release`` (a disk that stopped
    answering); what it delivers is kept in ``delivered``."""

    name = "hung"
    description = "a target that hangs"
    is_open = True

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.sending = asyncio.Event()
        self.delivered: list[str] = []

    async def open(self) -> None:
        """Nothing to open."""

    async def send(self, batch: Batch) -> None:
        self.sending.set()
        await self.release.wait()
        self.delivered += batch.lines

    async def check(self) -> bool:
        return False

    def unsent(self, batch: Batch) -> list[WireRecord]:
        return batch.records()

    async def close(self) -> list[WireRecord]:
        return []


async def test_shutdown_spools_what_waits_behind_a_hung_write_without_waiting_for_it(
    tmp_path: Path,
) -> None:
    """A write hangs past the shutdown deadline (a disk that stopped answering): the lines
    queued behind it are in the spool (fsynced) while it still hangs, not once it returns, so
    a SIGKILL after the grace period loses none of them; the batch in flight follows its write."""
    target = _HungTarget()
    spool = tmp_path / "spool"
    options = BatchOptions(batch_size=10, drain_timeout=0.0)
    sink = BatchSink(target, options, spool=Spool(spool, JSON_RECORDS))
    await sink.start()
    _, lines, _ = queue_lines(sink, 50)
    await target.sending.wait()
    closing = asyncio.create_task(sink.aclose())
    try:
        await eventually(lambda: spool.exists() and spool.read_text().count("\n") == 40)
        assert not closing.done()  # the write still hangs
    finally:
        target.release.set()
        await closing
    assert target.delivered == lines[:10]
    assert [record[2] for record in await Spool(spool, JSON_RECORDS).claim()] == lines[10:]


async def test_a_fifo_made_again_by_its_reader_gets_no_line_twice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The log is a FIFO whose reader (a collector) restarts and makes it again (rm, mkfifo):
    the writer reopens the new one and goes on; the lines the old reader read are not written
    again (a deleted regular file's last lines are, as nobody read them)."""
    caplog.set_level(logging.INFO, logger="service.sinks")
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    options = BatchOptions(check_interval=0.01)
    sink = file_sink(fifo, options, FileOptions(check_interval=3600), spool_path=tmp_path / "s")
    await sink.start()
    try:
        _, lines, _ = queue_lines(sink, 3)
        received = b""

        def read(expected: bytes) -> bool:
            nonlocal received
            received += read_available(reader)
            return received == expected

        await eventually(lambda: read("".join(lines).encode()))
        os.close(reader)
        fifo.unlink()
        os.mkfifo(fifo)  # the collector's new FIFO
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        await eventually(lambda: f"{fifo} was " in caplog.text)  # noticed: replaced (deleted)
        received = b""
        sink.admit()
        sink.submit("id-3", "notification", "line 3\n")
        await eventually(lambda: b"line 3\n" in received or read(b"line 3\n"))
    finally:
        await sink.aclose()
        os.close(reader)
    assert received == b"line 3\n"


async def test_shutdown_on_a_failing_disk_spools_the_lines_in_order(tmp_path: Path) -> None:
    """The disk fails (``/dev/full``) and the writer waits between two attempts at its first
    batch when shutdown comes: that batch, then the lines behind it, go to the spool in the
    order they came (the next start writes them so)."""
    spool = tmp_path / "spool"
    options = BatchOptions(batch_size=3, drain_timeout=0.0, retry=Backoff(5.0, 5.0))
    sink = file_sink(Path("/dev/full"), options, spool_path=spool)
    await sink.start()
    _, lines, _ = queue_lines(sink, 9)
    await eventually(lambda: sink.health().error is not None)  # the first attempt failed
    await sink.aclose()
    assert spool.read_text() == "".join(lines)
