"""Faults under real uvicorn processes: a full disk, a stuck sink, SIGKILL, several workers,
a removed directory and an external move of the log. Real ports, files, signals and pipes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import signal
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.support.fifo import full_fifo, read_available
from tests.support.server import (
    HOST,
    REPO_ROOT,
    ServerProcess,
    free_port,
    http_client,
    post_notifications,
    running_server,
    service_env,
    uvicorn_command,
    uvicorn_server,
)
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow  # uvicorn subprocesses under load

ACKNOWLEDGEMENT = b'{"message":"Notification sent in the background"}'
LINE = re.compile(r"notification for ([A-Za-z0-9_.+-]+@example\.com): some notification")
NO_SPACE = "No space left on device"


def _emails(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{number:05d}@example.com" for number in range(count)]


def _line(email: str) -> str:
    return f"notification for {email}: some notification"


def _count_emails(text: str, *, where: str) -> Counter[str]:
    """How often each email is in ``text``; fails on any line that is not a whole notification."""
    assert text == "" or text.endswith("\n"), f"{where} ends inside a line"
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        match = LINE.fullmatch(line)
        assert match is not None, f"malformed line in {where}: {line!r}"
        counts[match.group(1)] += 1
    return counts


def _repeated(counts: Counter[str]) -> dict[str, int]:
    return {email: n for email, n in counts.items() if n != 1}


async def _wait_for_readyz(client: httpx.AsyncClient, status: int) -> httpx.Response:
    """Poll ``/readyz`` until it answers ``status``."""

    async def answered() -> httpx.Response:
        response = await client.get("/readyz")
        assert response.status_code == status, f"/readyz {response.status_code}: {response.text}"
        return response

    return await eventually(answered, interval=0.02, message=f"/readyz answering {status}")


async def _wait_for_lines(path: Path, count: int) -> list[str]:
    """Poll ``path`` until it holds ``count`` whole lines."""

    def whole_lines() -> list[str]:
        with contextlib.suppress(FileNotFoundError):
            text = path.read_text(encoding="utf-8")
            if text.endswith("\n") and text.count("\n") >= count:
                return text.splitlines()
        return []

    return await eventually(whole_lines, interval=0.02, message=f"{count} whole lines in {path}")


async def _post_all(
    client: httpx.AsyncClient, emails: list[str], *, concurrency: int
) -> tuple[Counter[int], Counter[str]]:
    """POST every email over ``concurrency`` workers; count statuses and transport errors."""
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    jobs = iter(emails)

    async def worker() -> None:
        for email in jobs:
            try:
                response = await client.post(f"/send-notification/{email}")
            except httpx.TransportError as exc:
                errors[type(exc).__name__] += 1
                continue
            ok = response.status_code == 200 and response.content == ACKNOWLEDGEMENT
            statuses[200 if ok else -response.status_code] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses, errors


async def _terminate(server: ServerProcess, *, within: float) -> int:
    """SIGTERM the server and return its exit status; fails if it takes longer than ``within``."""
    server.send_signal(signal.SIGTERM)
    async with asyncio.timeout(within):
        returncode = await server.wait_exit()
    assert returncode in (0, -signal.SIGTERM), server.output()
    return returncode


# -- the tests -------------------------------------------------------------------------------


async def test_dev_full_keeps_answering_and_reports_once(tmp_path: Path) -> None:
    """On /dev/full every POST still gets 200, /readyz names ENOSPC and one error is logged."""
    settings = {
        "NOTIFY_LOG_PATH": "/dev/full",
        "NOTIFY_SPOOL_PATH": str(tmp_path / "spool" / "notify.spool"),
        "NOTIFY_SHUTDOWN_TIMEOUT": "0.5",
        "NOTIFY_RETRY_MAX": "0.2",
    }
    async with uvicorn_server(tmp_path, settings) as server:
        async with http_client(server.url, connections=4) as client, asyncio.timeout(20):
            statuses, errors = await _post_all(client, _emails("full", 300), concurrency=4)
            ready = await _wait_for_readyz(client, 503)
        await _terminate(server, within=10)
    output = server.output()

    assert statuses == {200: 300}
    assert errors == {}, "a client connection was dropped"
    assert ready.json()["status"] == "unavailable"
    assert [reason for reason in ready.json()["reasons"] if NO_SPACE in reason] != []
    assert len([line for line in output.splitlines() if "write failed" in line]) == 1, output
    assert "Traceback" not in output


async def test_sigterm_spools_what_a_stuck_sink_did_not_take_and_replays_it(
    tmp_path: Path,
) -> None:
    """Past the shutdown deadline the backlog goes to the spool, which the next start logs first."""
    emails = _emails("spooled", 200)
    spool = tmp_path / "spool" / "notify.spool"
    with full_fifo(tmp_path / "log.fifo") as fifo:
        settings = {
            "NOTIFY_LOG_PATH": str(fifo.path),
            "NOTIFY_SPOOL_PATH": str(spool),
            "NOTIFY_SHUTDOWN_TIMEOUT": "1",
        }
        async with uvicorn_server(tmp_path, settings, output_name="first-output.txt") as first:
            async with http_client(first.url, connections=8) as client, asyncio.timeout(20):
                statuses, errors = await _post_all(client, emails, concurrency=8)
            # A sink stuck for good: only the shutdown deadline lets the server exit at all.
            await _terminate(first, within=10)
        drained = read_available(fifo.read_fd)

    assert statuses == {200: 200}
    assert errors == {}
    assert "not delivered by the shutdown deadline" in first.output()
    assert drained.startswith(fifo.filler)
    spooled = spool.read_text(encoding="utf-8")
    from_fifo = _count_emails(drained[len(fifo.filler) :].decode(), where="the FIFO")
    in_spool = _count_emails(spooled, where="the spool")
    total = from_fifo + in_spool
    assert set(total) == set(emails)
    assert _repeated(total) == {}

    log = tmp_path / "log.txt"
    settings = {"NOTIFY_LOG_PATH": str(log), "NOTIFY_SPOOL_PATH": str(spool)}
    async with uvicorn_server(tmp_path, settings, output_name="second-output.txt") as second:
        async with http_client(second.url) as client:
            response = await client.post("/send-notification/after.restart@example.com")
        assert response.status_code == 200
        lines = await _wait_for_lines(log, len(in_spool) + 1)
        await _terminate(second, within=10)

    assert lines == [*spooled.splitlines(), _line("after.restart@example.com")]
    assert log.read_text(encoding="utf-8").splitlines() == lines
    assert not spool.exists()
    assert list(spool.parent.iterdir()) == [], "a claimed spool (.replay) was left behind"
    assert "Traceback" not in second.output()


async def test_sigkill_with_ack_write_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """With NOTIFY_ACK=write a SIGKILL mid-load loses no acknowledged notification."""
    total, kill_after = 5000, 1500
    log = tmp_path / "log.txt"
    async with uvicorn_server(tmp_path, {"NOTIFY_ACK": "write"}) as server:

        def kill_at(count: int) -> None:
            if count == kill_after:
                server.send_signal(signal.SIGKILL)

        async with asyncio.timeout(60):
            results = await post_notifications(
                server.url,
                _emails("killed", total),
                concurrency=32,
                acknowledgement=ACKNOWLEDGEMENT,
                on_acknowledged=kill_at,
                stop_on_error=True,
            )
            returncode = await server.wait_exit()

    acknowledged = set(results.acknowledged)
    print(f"SIGKILL: {len(acknowledged)} of {total} acknowledged", file=sys.stderr)  # noqa: T201
    assert returncode == -signal.SIGKILL
    assert results.unexpected == []
    assert kill_after <= len(acknowledged) < total, "the kill did not cut the load short"
    assert sum(results.transport_errors.values()) > 0
    text = log.read_text(encoding="utf-8")
    # a write cut by the kill may leave an unfinished last line; it was not acknowledged
    whole = text[: text.rfind("\n") + 1]
    logged = _count_emails(whole, where="the log")
    assert acknowledged - set(logged) == set(), "acknowledged but not in the log"
    assert _repeated(logged) == {}


async def test_ack_write_on_dev_full_answers_503_after_the_timeout_then_at_once(
    tmp_path: Path,
) -> None:
    """NOTIFY_ACK=write on /dev/full: 503 after the ack timeout, then 503 at once while failing.
    Once the line that timed out is withdrawn and a retry delay has passed, the log is tried
    again (/readyz 200): the next POST gets its 503 after the ack timeout, the one after it at
    once, and withdrawn lines never count as the log writing again."""
    settings = {
        "NOTIFY_LOG_PATH": "/dev/full",
        "NOTIFY_SPOOL_PATH": str(tmp_path / "notify.spool"),
        "NOTIFY_ACK": "write",
        "NOTIFY_ACK_TIMEOUT": "1",
        "NOTIFY_SHUTDOWN_TIMEOUT": "0.5",
    }
    async with uvicorn_server(tmp_path, settings) as server, http_client(server.url) as client:
        first = await client.post("/send-notification/first@example.com")
        later = [
            await client.post(f"/send-notification/later{number}@example.com")
            for number in range(5)
        ]
        await _wait_for_readyz(client, 200)  # every line withdrawn, and the retry delay over
        probe = await client.post("/send-notification/probe@example.com")
        refused_again = await client.post("/send-notification/again@example.com")
        await _terminate(server, within=10)

    # Which 503 each got says whether it waited: the first was taken and waited out the ack
    # timeout; the later ones were refused at admission, without waiting for a write.
    assert first.status_code == 503
    assert first.headers["retry-after"] == "1"
    assert "did not confirm the write within 1 s" in first.json()["detail"]
    for response in later:
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        detail = response.json()["detail"]
        assert detail.startswith("not accepted: ")
        assert "writes failing" in detail
        assert NO_SPACE in detail
    assert probe.status_code == 503
    assert "did not confirm the write within 1 s" in probe.json()["detail"]
    assert refused_again.status_code == 503
    assert refused_again.json()["detail"].startswith("not accepted: ")
    assert NO_SPACE in refused_again.json()["detail"]
    assert "writing again" not in server.output()
    assert "Traceback" not in server.output()


async def test_four_workers_share_one_log_without_tearing_losing_or_duplicating(
    tmp_path: Path,
) -> None:
    """Four uvicorn workers appending 25,000 notifications to one log tear, lose and repeat none."""
    total = 25_000
    log = tmp_path / "log.txt"
    result_path = tmp_path / "load.json"
    port = free_port()
    async with running_server(
        [*uvicorn_command(port), "--workers", "4"],
        url=f"http://{HOST}:{port}",
        cwd=tmp_path,
        env=service_env({"NOTIFY_LOG_PATH": str(log)}),
        output_path=tmp_path / "server-output.txt",
        ready_timeout=60,
        stop_timeout=20,
    ) as server:
        with (tmp_path / "loadgen-output.txt").open("wb") as loadgen_output:
            loadgen = await asyncio.create_subprocess_exec(
                *[sys.executable, "-m", "bench.loadgen", "--host", HOST, "--port", str(port)],
                *["--requests", str(total), "--concurrency", "64", "--warmup", "0"],
                *["--timeout", "60", "--out", str(result_path)],
                cwd=REPO_ROOT,
                env=service_env(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=loadgen_output,
                stderr=asyncio.subprocess.STDOUT,
            )
        try:
            async with asyncio.timeout(90):
                loadgen_status = await loadgen.wait()
        finally:
            if loadgen.returncode is None:
                loadgen.kill()
                await loadgen.wait()
        await _terminate(server, within=30)

    loadgen_text = (tmp_path / "loadgen-output.txt").read_text()
    assert loadgen_status == 0, loadgen_text
    result = json.loads(result_path.read_text())
    acknowledged: list[str] = result["acked_emails"]
    assert result["status_counts"] == {"200": total}
    assert len(acknowledged) == total
    output = server.output()
    assert output.count("Application startup complete.") == 4, output
    assert "Traceback" not in output
    logged = _count_emails(log.read_text(encoding="utf-8"), where="the log")  # 0 torn lines
    assert set(acknowledged) - set(logged) == set(), "acknowledged but not in the log"
    assert _repeated(logged) == {}, "logged more than once"
    assert sum(logged.values()) == total


async def test_removed_log_directory_holds_lines_until_it_is_back(tmp_path: Path) -> None:
    """Lines accepted while the log's directory is gone are written, in order, once it is back."""
    logs = tmp_path / "logs"
    log = logs / "log.txt"
    settings = {
        "NOTIFY_LOG_PATH": str(log),
        "NOTIFY_SPOOL_PATH": str(tmp_path / "notify.spool"),
        "NOTIFY_RETRY_MAX": "0.2",
        "NOTIFY_FILE_CHECK_INTERVAL": "0.1",
    }
    before, while_gone = _emails("before", 3), _emails("gone", 50)
    async with uvicorn_server(tmp_path, settings) as server, http_client(server.url) as client:
        async with asyncio.timeout(20):
            for email in before:
                assert (await client.post(f"/send-notification/{email}")).status_code == 200
            assert await _wait_for_lines(log, len(before)) == [_line(e) for e in before]
            shutil.rmtree(logs)
            for email in while_gone:  # one at a time, so the order of the lines is known
                response = await client.post(f"/send-notification/{email}")
                assert response.status_code == 200
                assert response.content == ACKNOWLEDGEMENT
            gone = await _wait_for_readyz(client, 503)
            assert not logs.exists(), "the service recreated the removed directory"
            logs.mkdir()
            await _wait_for_readyz(client, 200)
        await _terminate(server, within=10)

    assert [reason for reason in gone.json()["reasons"] if "writes failing" in reason] != []
    lines = log.read_text(encoding="utf-8").splitlines()
    assert lines[-len(while_gone) :] == [_line(e) for e in while_gone]
    # Lines written just before the removal may come again: the removed file had them.
    earlier = lines[: -len(while_gone)]
    assert earlier == [_line(e) for e in before[len(before) - len(earlier) :]]
    assert "Traceback" not in server.output()


async def test_log_moved_away_under_load_is_reopened_and_loses_nothing(tmp_path: Path) -> None:
    """After `mv log.txt log.txt.1` under load, the two files hold every acknowledged line once."""
    total, move_after = 2000, 700
    log, moved = tmp_path / "log.txt", tmp_path / "log.txt.1"
    async with uvicorn_server(tmp_path, {"NOTIFY_FILE_CHECK_INTERVAL": "0.05"}) as server:

        def move_at(count: int) -> None:
            if count == move_after:
                log.rename(moved)

        async with asyncio.timeout(60):
            results = await post_notifications(
                server.url,
                _emails("moved", total),
                concurrency=16,
                acknowledgement=ACKNOWLEDGEMENT,
                on_acknowledged=move_at,
            )
        await _terminate(server, within=15)

    assert results.unexpected == []
    assert results.transport_errors == {}
    assert len(results.acknowledged) == total
    in_moved = _count_emails(moved.read_text(encoding="utf-8"), where="log.txt.1")
    in_log = _count_emails(log.read_text(encoding="utf-8"), where="log.txt")
    assert sum(in_moved.values()) > 0
    assert sum(in_log.values()) > 0, "the writer did not reopen log.txt after the move"
    both = in_moved + in_log
    assert set(both) == set(results.acknowledged)
    assert _repeated(both) == {}
