"""Nothing acknowledged is lost: ack=write, rotation, spool and replay, retry policy."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from service.sinks.fs import pid_alive, pipe_sized
from tests.conftest import make_settings, read_lines, running
from tests.support.fifo import full_fifo, read_available
from tests.support.waiting import eventually, wait_until
from tests.test_file_sink import wait_for_lines, wait_for_readiness


async def test_ack_write_answers_after_the_line_is_in_the_file(tmp_path: Path) -> None:
    """With ``ack=write`` every 200 is sent only once its lines are in the file."""
    settings = make_settings(tmp_path, ack="write")
    async with running(settings) as client:
        for i in range(20):
            response = await client.post(f"/send-notification/u{i}@example.com?q=n{i}")
            assert response.status_code == 200
            lines = read_lines(settings.log_path)
            assert lines[-2:] == [
                f"found query: n{i}",
                f"notification for u{i}@example.com: some notification",
            ]


async def test_ack_write_concurrent_requests_share_writes(tmp_path: Path) -> None:
    """500 concurrent ``ack=write`` requests are all written before their 200s, in few batches."""
    settings = make_settings(tmp_path, ack="write")
    async with running(settings) as client:

        async def send(i: int) -> int:
            response = await client.post(f"/send-notification/c{i}@example.com")
            return response.status_code

        statuses = await asyncio.gather(*(send(i) for i in range(500)))
        lines = read_lines(settings.log_path)
    assert statuses == [200] * 500
    assert sorted(lines) == sorted(
        f"notification for c{i}@example.com: some notification" for i in range(500)
    )


async def test_rotation_keeps_whole_lines_and_the_newest_files(tmp_path: Path) -> None:
    """Size rotation makes log.txt.1 … .3, never splits a line, and keeps every recent line."""
    settings = make_settings(tmp_path, rotate_bytes=2000, rotate_keep=3, ack="write")
    async with running(settings) as client:
        for i in range(200):  # about 10,600 bytes: five rotations at 2,000
            await client.post(f"/send-notification/r{i:03d}@example.com")
    files = [tmp_path / f"log.txt.{n}" for n in (3, 2, 1)] + [settings.log_path]
    assert all(path.exists() for path in files)
    assert not (tmp_path / "log.txt.4").exists()
    kept = [line for path in files for line in read_lines(path)]
    expected = [f"notification for r{i:03d}@example.com: some notification" for i in range(200)]
    assert kept == expected[len(expected) - len(kept) :]
    for path in files[:-1]:
        assert path.stat().st_size <= 2000


async def test_lines_not_written_by_the_deadline_are_spooled_and_replayed(tmp_path: Path) -> None:
    """Shutdown on a failing disk spools the lines; the next start writes them before new ones."""
    spool = tmp_path / "spool"
    failing = make_settings(
        tmp_path, log_path=Path("/dev/full"), spool_path=spool, shutdown_timeout=0.3
    )
    async with running(failing) as client:
        for i in range(30):
            assert (await client.post(f"/send-notification/s{i}@example.com")).status_code == 200
    assert spool.read_text().splitlines() == [
        f"notification for s{i}@example.com: some notification" for i in range(30)
    ]
    working = make_settings(tmp_path, spool_path=spool)
    async with running(working) as client:
        await client.post("/send-notification/new@example.com")
    assert read_lines(working.log_path) == [
        *(f"notification for s{i}@example.com: some notification" for i in range(30)),
        "notification for new@example.com: some notification",
    ]
    assert not spool.exists()
    assert list(tmp_path.glob("spool*")) == []


async def test_a_spool_whose_last_write_was_cut_short_replays_only_whole_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A spool whose last append was cut short (the process killed in it, the disk full): the
    next start replays its whole lines and drops the torn end, saying so, instead of writing
    a line that was never accepted."""
    spool = tmp_path / "spool"
    spool.write_bytes(b"notification for a@example.com: whole\nnotification for b@example.com: who")
    settings = make_settings(tmp_path, spool_path=spool)
    async with running(settings):
        pass
    assert read_lines(settings.log_path) == ["notification for a@example.com: whole"]
    assert "dropped an incomplete last record (35 bytes" in caplog.text


async def test_a_log_path_turned_into_a_directory_waits_then_recovers(tmp_path: Path) -> None:
    """When the log path becomes a directory, lines wait (503 ready) and land once it is a file."""
    settings = make_settings(tmp_path, file_check_interval=0.05)
    async with running(settings) as client:
        await client.post("/send-notification/first@example.com")
        await wait_for_lines(settings.log_path, 1)
        settings.log_path.unlink()
        settings.log_path.mkdir()
        for i in range(5):
            await client.post(f"/send-notification/d{i}@example.com")
        body = await wait_for_readiness(client, 503)
        assert "Is a directory" in body["reasons"][0]
        shutil.rmtree(settings.log_path)
        await wait_for_readiness(client, 200)
    lines = read_lines(settings.log_path)
    assert lines[-5:] == [f"notification for d{i}@example.com: some notification" for i in range(5)]
    assert lines[:-5] in ([], ["notification for first@example.com: some notification"])


async def test_a_replay_stopped_by_shutdown_is_spooled_again_whole(tmp_path: Path) -> None:
    """A stop while a spool is being replayed loses no line and splits none: the log is a
    FIFO whose pipe is full, so the replay cannot finish, and shutdown (no grace) puts every
    line it did not deliver back in the spool, in order; no claimed copy is left behind."""
    spool = tmp_path / "spool"
    lines = [f"notification for s{i}@example.com: spooled line {i}" for i in range(2000)]
    spool.write_text("".join(f"{line}\n" for line in lines))
    with full_fifo(tmp_path / "log.fifo") as fifo:
        settings = make_settings(tmp_path, log_path=fifo.path, spool_path=spool, shutdown_timeout=0)
        async with running(settings):
            pass
        drained = read_available(fifo.read_fd)
    assert drained.startswith(fifo.filler)
    written = drained[len(fifo.filler) :].decode().splitlines()
    kept = read_lines(spool)
    assert written + kept == lines
    assert kept, "the replay finished into a full pipe"
    assert list(tmp_path.glob("spool.*")) == []


async def test_a_stale_claim_with_our_own_pid_is_replayed_not_overwritten(tmp_path: Path) -> None:
    """A half-replayed spool left by an earlier process with our pid (PID 1) is replayed first."""
    spool = tmp_path / "spool"
    spool.with_name(f"spool.{os.getpid()}.1.replay").write_text("old line\n")
    spool.write_text("new line\n")
    settings = make_settings(tmp_path, spool_path=spool)
    async with running(settings):
        pass
    assert read_lines(settings.log_path) == ["old line", "new line"]
    assert list(tmp_path.glob("spool*")) == []


def test_writes_to_a_pipe_are_whole_lines_of_at_most_pipe_buf() -> None:
    """A pipe write is cut at a line end within PIPE_BUF, so a reader never gets half a line."""
    data = b"".join(f"line {i} {'x' * (i % 97)}\n".encode() for i in range(500))
    rest = data
    while rest:
        part = pipe_sized(rest)
        assert part.endswith(b"\n")
        assert len(part) <= select.PIPE_BUF
        rest = rest[len(part) :]
    long_line = b"y" * (2 * select.PIPE_BUF) + b"\n"
    assert pipe_sized(long_line + b"next\n") == long_line


async def test_shutdown_does_not_recreate_a_removed_log_directory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With the log's directory gone, the spool is not written there; the lines are logged."""
    log_dir = tmp_path / "logs"
    settings = make_settings(tmp_path, log_path=log_dir / "log.txt", shutdown_timeout=0.3)
    async with running(settings) as client:
        shutil.rmtree(log_dir)
        for i in range(3):
            await client.post(f"/send-notification/g{i}@example.com")
    assert not log_dir.exists()
    logged = [record.getMessage() for record in caplog.records]
    for i in range(3):
        assert f"unwritten: notification for g{i}@example.com: some notification" in logged


async def test_a_503_in_write_mode_withdraws_the_line(tmp_path: Path) -> None:
    """With ``ack=write``, a request answered 503 after the ack timeout is never written (nor
    counted accepted)."""
    with full_fifo(tmp_path / "log.fifo") as fifo:
        settings = make_settings(
            tmp_path,
            log_path=fifo.path,
            ack="write",
            ack_timeout=0.3,
            retry_max=0.05,
            spool_path=tmp_path / "spool",
        )
        async with running(settings) as client:
            gave_up = await client.post("/send-notification/gave-up@example.com")
            assert gave_up.status_code == 503
            assert "withdrawn" in gave_up.json()["detail"]
            # Ready again with the pipe still full: the writer has left the withdrawn line
            # out of its batch (no write of it is under way), and takes lines to try again.
            # (Room made before that could let a write already begun go through, as the 503
            # says: "unless their write had already begun".)
            await wait_for_readiness(client, 200)
            assert read_available(fifo.read_fd) == fifo.filler  # the pipe has room again
            kept = await client.post("/send-notification/kept@example.com")
            assert kept.status_code == 200
            written = read_available(fifo.read_fd)
            metrics = (await client.get("/metrics")).text
    assert written == b"notification for kept@example.com: some notification\n"
    # Accepted counts what was answered 200: the one kept, not the one answered 503.
    assert "\nnotify_notifications_accepted_total 1.0\n" in metrics
    assert 'notify_notifications_rejected_total{reason="unavailable"} 1.0' in metrics


def test_a_zombie_is_not_alive(tmp_path: Path) -> None:
    """A process that has exited but is not yet reaped (a killed worker whose parent died too)
    holds no lease and no spool: pid_alive says so, as it does for a running one."""
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        assert pid_alive(running.pid)
        stat = Path(f"/proc/{exited.pid}/stat")
        wait_until(
            lambda: stat.read_text().rpartition(")")[2].split()[0] == "Z",
            message="the child exiting (a zombie until it is reaped)",
        )
        assert not pid_alive(exited.pid)
    finally:
        running.kill()
        running.wait()
        exited.wait()
    assert not pid_alive(exited.pid)


KEY = {"Idempotency-Key": "the-one"}


async def _waiting_for_its_write(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> asyncio.Task[httpx.Response]:
    """``POST /send-notification/a@example.com`` with ``headers``, once admitted (it shows in
    the activity log) and so waiting for its write (``ack=write``)."""
    first = asyncio.create_task(client.post("/send-notification/a@example.com", headers=headers))

    async def admitted() -> bool:
        listed = await client.get("/notifications")
        return bool(listed.json()["items"])

    await eventually(admitted)
    return first


async def test_a_cancelled_ack_write_request_frees_its_idempotency_key(tmp_path: Path) -> None:
    """With ``ack=write``, a request cancelled while it waits for its write (uvicorn's
    graceful-shutdown timeout does that) is not acknowledged: its Idempotency-Key is free
    again, so a retry with it is a new request, written, and not a replay of nothing."""
    with full_fifo(tmp_path / "log.fifo") as fifo:
        settings = make_settings(
            tmp_path, log_path=fifo.path, ack="write", ack_timeout=30, retry_max=0.05
        )
        async with running(settings) as client:
            first = await _waiting_for_its_write(client, KEY)
            first.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await first

            async def dropped() -> bool:  # the writer left the withdrawn line out
                sinks = (await client.get("/readyz")).json()["sinks"]
                return all(sink["queued"] == 0 for sink in sinks)

            # (Room made before that could let a write already under way go through, as a
            # withdrawal says: "unless their write had already begun".)
            await eventually(dropped, message="the withdrawn line dropped by the writer")
            assert read_available(fifo.read_fd) == fifo.filler  # room in the pipe
            await wait_for_readiness(client, 200)  # the writer takes lines again
            retry = await client.post("/send-notification/a@example.com", headers=KEY)
            assert retry.status_code == 200
            written = read_available(fifo.read_fd)
    assert written == b"notification for a@example.com: some notification\n"


async def test_a_copy_sent_while_the_first_waits_for_its_write_is_not_a_200_first(
    tmp_path: Path,
) -> None:
    """With ``ack=write``, a copy of a request (its Idempotency-Key) sent while the first waits
    for its write waits for the first's answer: the first refused (503, withdrawn, its key
    forgotten), the copy is a new request, refused as well while the log cannot take it; not
    a 200 for a line never written."""
    with full_fifo(tmp_path / "log.fifo") as fifo:
        settings = make_settings(
            tmp_path, log_path=fifo.path, ack="write", ack_timeout=0.5, retry_max=0.05
        )
        async with running(settings) as client:
            first = await _waiting_for_its_write(client, KEY)
            copy = await client.post("/send-notification/a@example.com", headers=KEY)
            assert (await first).status_code == 503
        assert read_available(fifo.read_fd) == fifo.filler  # nothing of theirs written
    assert copy.status_code == 503
