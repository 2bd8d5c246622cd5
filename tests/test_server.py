"""The service as a real process: uvicorn on a real port, real files, real signals."""

from __future__ import annotations

import asyncio
import errno
import os
import re
import signal
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx
import pytest

from tests.support.fifo import full_fifo, pipe_has_data, read_available
from tests.support.server import (
    HOST,
    ServerProcess,
    free_port,
    http_client,
    run_until_exit,
    running_server,
    service_command,
    service_env,
    uvicorn_command,
    uvicorn_server,
)
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow  # uvicorn subprocesses

ACKNOWLEDGEMENT = b'{"message":"Notification sent in the background"}'
LINE = re.compile(r"notification for (user\d{5}@example\.com): some notification")


def _pipe_is_full(write_fd: int) -> bool:
    """Whether a one-byte write to the non-blocking ``write_fd`` fails with EAGAIN."""
    try:
        os.write(write_fd, b"\n")
    except BlockingIOError as exc:
        return exc.errno == errno.EAGAIN
    return False


async def _read_until(read_fd: int, wanted: bytes) -> bytes:
    """Read the non-blocking ``read_fd`` until what was read ends with ``wanted``."""
    data = bytearray()

    def read_it_all() -> bool:
        try:
            chunk = os.read(read_fd, 65536)
        except BlockingIOError:
            return data.endswith(wanted)
        if not chunk:
            raise EOFError("every writer closed the FIFO")
        data.extend(chunk)
        return data.endswith(wanted)

    await eventually(read_it_all, interval=0.02, message=f"{wanted!r} read from the FIFO")
    return bytes(data)


async def _wait_until_write_fails(client: httpx.AsyncClient) -> str:
    """Poll ``/readyz`` until a writer reports a failing write; return its reason."""

    async def failing() -> str:
        response = await client.get("/readyz")
        assert response.status_code == 503, response.text
        reasons: list[str] = response.json()["reasons"]
        return "; ".join(reasons)

    return await eventually(failing, interval=0.02, message="/readyz answering 503")


async def test_response_arrives_before_a_slow_write_completes(tmp_path: Path) -> None:
    """The 200 arrives while the FIFO log is full, and the line follows once it is drained."""
    with full_fifo(tmp_path / "log.fifo") as fifo:
        settings = {"NOTIFY_LOG_PATH": str(fifo.path), "NOTIFY_SHUTDOWN_TIMEOUT": "2"}
        async with uvicorn_server(tmp_path, settings) as server, http_client(server.url) as client:
            response = await client.post("/send-notification/slow@example.com")
            assert response.status_code == 200
            assert response.content == ACKNOWLEDGEMENT
            assert _pipe_is_full(fifo.write_fd), "the pipe had room: the write was not slow"
            reason = await _wait_until_write_fails(client)
            assert "Errno 11" in reason  # the writer really is stuck on EAGAIN

            line = b"notification for slow@example.com: some notification\n"
            drained = await _read_until(fifo.read_fd, line)
            assert drained == fifo.filler + line


async def test_sigterm_writes_the_backlog_before_exiting(tmp_path: Path) -> None:
    """Lines queued behind a full FIFO when shutdown starts are all written before the exit."""
    emails = [f"user{number:05d}@example.com" for number in range(50)]
    with full_fifo(tmp_path / "log.fifo") as fifo:
        async with uvicorn_server(tmp_path, {"NOTIFY_LOG_PATH": str(fifo.path)}) as server:
            async with http_client(server.url) as client:
                for email in emails:
                    response = await client.post(f"/send-notification/{email}")
                    assert response.content == ACKNOWLEDGEMENT
                await _wait_until_write_fails(client)
            server.send_signal(signal.SIGTERM)
            async with asyncio.timeout(5):  # shutdown has begun with every line still queued
                await server.wait_for_output("Waiting for application shutdown.")
            assert server.returncode is None, "it exited before its queued lines were written"

            drained = bytearray()

            def exited_and_drained() -> bool:
                drained.extend(read_available(fifo.read_fd))
                return server.returncode is not None and not pipe_has_data(fifo.read_fd)

            await eventually(exited_and_drained, interval=0.02, message="the backlog drained")
            returncode = await server.wait_exit()

    assert returncode in (0, -signal.SIGTERM), server.output()
    assert "not delivered by the shutdown deadline" not in server.output()
    assert drained.startswith(fifo.filler)
    lines = bytes(drained[len(fifo.filler) :]).decode().splitlines()
    assert sorted(lines) == [f"notification for {email}: some notification" for email in emails]


@dataclass
class Load:
    """What a load run saw: the acknowledged emails and everything else."""

    acknowledged: set[str] = field(default_factory=set)
    acknowledged_after_signal: int = 0
    transport_errors: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)


async def _load_and_signal(
    server: ServerProcess, sig: signal.Signals, *, total: int, signal_after: int, concurrency: int
) -> Load:
    """POST ``total`` unique emails; send ``sig`` once ``signal_after`` are acknowledged."""
    load = Load()
    emails: Iterator[str] = (f"user{number:05d}@example.com" for number in range(total))
    signalled = False

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal signalled
        for email in emails:  # one shared iterator: each email is sent once
            try:
                response = await client.post(f"/send-notification/{email}")
            except httpx.TransportError as exc:
                load.transport_errors[type(exc).__name__] += 1
                continue
            if response.status_code != 200 or response.content != ACKNOWLEDGEMENT:
                load.unexpected.append(f"{email}: {response.status_code} {response.text!r}")
                continue
            load.acknowledged.add(email)
            if signalled:
                load.acknowledged_after_signal += 1
            elif len(load.acknowledged) >= signal_after:
                signalled = True
                server.send_signal(sig)

    async with http_client(server.url, connections=concurrency) as client, asyncio.timeout(60):
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return load


def _logged_emails(log_path: Path) -> Counter[str]:
    """How often each email is in the log; fails on any line that is not a whole notification."""
    text = log_path.read_text(encoding="utf-8")
    assert text.endswith("\n"), "the log ends inside a line"
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        match = LINE.fullmatch(line)
        assert match is not None, f"malformed line in the log: {line!r}"
        counts[match.group(1)] += 1
    return counts


async def _check_signal_under_load(
    tmp_path: Path, sig: signal.Signals, *, total: int, signal_after: int
) -> None:
    async with uvicorn_server(tmp_path) as server:
        load = await _load_and_signal(
            server, sig, total=total, signal_after=signal_after, concurrency=32
        )
        async with asyncio.timeout(30):
            returncode = await server.wait_exit()
    output = server.output()
    assert returncode in (0, -sig), output
    assert "Traceback" not in output
    assert load.unexpected == []
    assert signal_after <= len(load.acknowledged) < total, "the signal did not cut the load short"
    assert sum(load.transport_errors.values()) > 0
    assert load.acknowledged_after_signal > 0, "no request was in flight when the signal came"

    logged = _logged_emails(tmp_path / "log.txt")
    assert load.acknowledged - logged.keys() == set(), "acknowledged but not logged"
    assert {email: n for email, n in logged.items() if n != 1} == {}, "logged more than once"
    sent = {f"user{number:05d}@example.com" for number in range(total)}
    assert logged.keys() <= sent


async def test_sigterm_under_load_keeps_every_acknowledged_notification(tmp_path: Path) -> None:
    """SIGTERM during a load leaves every acknowledged notification logged once, untorn."""
    await _check_signal_under_load(tmp_path, signal.SIGTERM, total=3000, signal_after=1000)


async def test_sigint_under_load_keeps_every_acknowledged_notification(tmp_path: Path) -> None:
    """SIGINT (Ctrl-C) during a load leaves every acknowledged notification logged once."""
    await _check_signal_under_load(tmp_path, signal.SIGINT, total=1000, signal_after=300)


@dataclass(frozen=True)
class StartupFailure:
    """How to start the service wrongly, and the line that must explain why it stopped."""

    launcher: Literal["uvicorn", "service"]
    settings: dict[str, str]
    expected: str  # the start of the one line that must explain the failure


STARTUP_FAILURES = {
    "log path is a directory": StartupFailure(
        "uvicorn", {"NOTIFY_LOG_PATH": "{tmp}/logs"}, "ERROR:    cannot open log file {tmp}/logs: "
    ),
    "log path is a directory, python -m service": StartupFailure(
        "service", {"NOTIFY_LOG_PATH": "{tmp}/logs"}, "ERROR:    cannot open log file {tmp}/logs: "
    ),
    "log path under /proc": StartupFailure(
        "uvicorn",
        {"NOTIFY_LOG_PATH": "/proc/x/log.txt"},
        "ERROR:    cannot open log file /proc/x/log.txt: ",
    ),
    "NOTIFY_PORT=abc": StartupFailure(
        "service", {"NOTIFY_PORT": "abc"}, "error: invalid setting NOTIFY_PORT='abc': "
    ),
    "NOTIFY_QUEUE_SIZE=-1": StartupFailure(
        "uvicorn", {"NOTIFY_QUEUE_SIZE": "-1"}, "error: invalid setting NOTIFY_QUEUE_SIZE='-1': "
    ),
}


@pytest.mark.parametrize("case", list(STARTUP_FAILURES.values()), ids=list(STARTUP_FAILURES))
def test_startup_failure_prints_one_line_and_exits_non_zero(
    tmp_path: Path, case: StartupFailure
) -> None:
    """A bad log path or setting exits non-zero with one line naming it and no traceback."""
    (tmp_path / "logs").mkdir()
    port = free_port()
    settings = {name: value.format(tmp=tmp_path) for name, value in case.settings.items()}
    env = service_env({"NOTIFY_HOST": HOST, "NOTIFY_PORT": str(port), **settings})
    command = uvicorn_command(port) if case.launcher == "uvicorn" else service_command()
    exited = run_until_exit(
        command, cwd=tmp_path, env=env, output_path=tmp_path / "output.txt", timeout=20
    )

    expected = case.expected.format(tmp=tmp_path)
    lines = exited.output.splitlines()
    assert exited.returncode != 0, exited.output
    assert "Traceback" not in exited.output
    assert [line for line in lines if line.startswith(expected)] != [], exited.output
    if expected.startswith("error:"):  # a bad setting: that one line is all there is
        assert len(lines) == 1, exited.output
        assert len(lines[0]) > len(expected)  # and it says what is wrong with the value
    else:  # a bad log path: the line, then uvicorn's own, and no other error
        errors = [line for line in lines if line.startswith("ERROR:")]
        assert len(errors) == 2, exited.output
        assert errors[0].startswith(expected)
        assert len(errors[0]) > len(expected)
        assert errors[1] == "ERROR:    Application startup failed. Exiting."
    assert not (tmp_path / "log.txt").exists()


async def test_python_m_service_serves_on_its_settings_and_logs_to_cwd(tmp_path: Path) -> None:
    """`python -m service` listens on NOTIFY_HOST:NOTIFY_PORT and appends to ./log.txt."""
    port = free_port()
    env = service_env({"NOTIFY_HOST": HOST, "NOTIFY_PORT": str(port)})
    async with running_server(
        service_command(),
        url=f"http://{HOST}:{port}",
        cwd=tmp_path,
        env=env,
        output_path=tmp_path / "server-output.txt",
    ) as server:
        async with http_client(server.url) as client:
            response = await client.post(
                "/send-notification/default@example.com", json={"message": "hello"}
            )
        assert response.status_code == 200
        assert response.content == ACKNOWLEDGEMENT
        server.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            returncode = await server.wait_exit()

    assert returncode in (0, -signal.SIGTERM), server.output()
    assert f"Uvicorn running on http://{HOST}:{port}" in server.output()
    log = tmp_path / "log.txt"
    assert log.read_text(encoding="utf-8") == "notification for default@example.com: hello\n"
