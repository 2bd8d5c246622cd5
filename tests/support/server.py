"""Run the service as a real process: start it, wait until it answers, always stop it.

Each server runs in its own session (so its own process group) on ``127.0.0.1`` and a port
that was free a moment before, with its working directory and ``NOTIFY_*`` settings chosen by
the test and its stdout and stderr going to one file that the test can read at any time.
Leaving ``running_server`` stops the server whatever happened: SIGTERM, a bounded wait, then
SIGKILL to the whole process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tomllib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

import httpx

from bench.loadgen import parse_head
from bench.process import spawn
from tests.support.waiting import eventually

__all__ = [
    "HOST",
    "Exited",
    "PostResults",
    "ServerExitedError",
    "ServerNotReadyError",
    "ServerProcess",
    "delivery_pids",
    "free_port",
    "http_client",
    "notify_service",
    "post_notifications",
    "run_until_exit",
    "running_server",
    "running_worker",
    "script_target",
    "service_command",
    "service_env",
    "uvicorn_command",
    "uvicorn_server",
    "worker_command",
]

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[2]
_POLL_S = 0.05


class ServerExitedError(RuntimeError):
    """The server process ended before it answered ``GET /healthz``."""


class ServerNotReadyError(RuntimeError):
    """The server did not answer ``GET /healthz`` with 200 before the deadline."""


def free_port() -> int:
    """A port that was free on ``HOST`` a moment ago (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def service_env(settings: Mapping[str, str] | None = None) -> dict[str, str]:
    """The inherited environment without any ``NOTIFY_*`` variable, plus ``settings``.

    The checkout is put first on ``PYTHONPATH`` so the process runs this tree's code, and
    output is unbuffered so the output file is up to date while the server runs.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("NOTIFY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(settings or {})
    return env


def uvicorn_command(port: int) -> list[str]:
    """``python -m uvicorn service.main:app`` on ``HOST`` and ``port``."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "service.main:app",
        "--host",
        HOST,
        "--port",
        str(port),
    ]


def service_command(python: str = sys.executable) -> list[str]:
    """``python -m service``: host and port come from ``NOTIFY_HOST`` and ``NOTIFY_PORT``."""
    return [python, "-m", "service"]


def http_client(url: str, *, timeout: float = 10.0, connections: int = 16) -> httpx.AsyncClient:
    """A client for ``url`` that ignores proxy settings and keeps ``connections`` open."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits, trust_env=False)


def _read_output(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def _open_output(path: Path) -> BinaryIO:
    return path.open("wb")


@dataclass
class ServerProcess:
    """A started server: its process, its base URL and the file holding its output."""

    process: asyncio.subprocess.Process
    url: str
    output_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has been reaped (``-N``: killed by signal N)."""
        return self.process.returncode

    def output(self) -> str:
        """Everything the server has printed so far (stdout and stderr, interleaved)."""
        return _read_output(self.output_path)

    def send_signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the server process alone (not its group)."""
        self.process.send_signal(sig)

    async def wait_for_output(self, text: str) -> None:
        """Return once ``text`` is in the output (bound the wait with ``asyncio.timeout``)."""
        while True:
            if text in self.output():
                return
            await asyncio.sleep(_POLL_S)

    async def wait_exit(self) -> int:
        """The exit status, once the process has exited (bound it with ``asyncio.timeout``)."""
        return await self.process.wait()


async def _wait_ready(server: ServerProcess) -> None:
    """Poll ``GET /healthz`` until it answers 200; the caller bounds the wait."""
    async with http_client(server.url, timeout=1.0, connections=1) as client:
        while True:
            if server.returncode is not None:
                raise ServerExitedError(
                    f"server exited with {server.returncode} before it was ready; "
                    f"its output:\n{server.output()}"
                )
            with contextlib.suppress(httpx.TransportError):
                response = await client.get("/healthz")
                if response.status_code == 200:
                    return
            await asyncio.sleep(_POLL_S)


async def _stop(process: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM, wait up to ``grace`` s, then SIGKILL the process group; always reaps."""
    try:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await process.wait()
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


async def _start(
    command: Sequence[str], *, cwd: Path, env: Mapping[str, str], output_path: Path
) -> asyncio.subprocess.Process:
    """Start ``command`` in its own session (process group), stdout and stderr to one file."""
    with _open_output(output_path) as output:
        return await asyncio.create_subprocess_exec(
            *command,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@contextlib.asynccontextmanager
async def running_server(
    command: Sequence[str],
    *,
    url: str,
    cwd: Path,
    env: Mapping[str, str],
    output_path: Path,
    ready_timeout: float = 20.0,
    stop_timeout: float = 10.0,
) -> AsyncIterator[ServerProcess]:
    """Start ``command``, wait until ``{url}/healthz`` answers 200, yield; stop it on exit.

    Raises ``ServerExitedError`` or ``ServerNotReadyError`` (with the server's output) if it
    does not get ready. A test may signal the server and wait for it to exit itself; whatever
    is still running when the block exits is stopped as ``_stop`` says.
    """
    process = await _start(command, cwd=cwd, env=env, output_path=output_path)
    try:
        server = ServerProcess(process=process, url=url, output_path=output_path)
        try:
            async with asyncio.timeout(ready_timeout):
                await _wait_ready(server)
        except TimeoutError:
            raise ServerNotReadyError(
                f"server at {url} not ready within {ready_timeout} s; "
                f"its output:\n{server.output()}"
            ) from None
        yield server
    finally:
        await _stop(process, stop_timeout)


@contextlib.asynccontextmanager
async def uvicorn_server(
    workdir: Path,
    settings: Mapping[str, str] | None = None,
    *,
    output_name: str = "server-output.txt",
    ready_timeout: float = 20.0,
    stop_timeout: float = 10.0,
) -> AsyncIterator[ServerProcess]:
    """``python -m uvicorn service.main:app`` in ``workdir`` on a free port.

    The log defaults to ``workdir/log.txt``; ``settings`` (``NOTIFY_*`` names) override it.
    The output goes to ``workdir/output_name``.
    """
    port = free_port()
    env = service_env({"NOTIFY_LOG_PATH": str(workdir / "log.txt"), **(settings or {})})
    async with running_server(
        uvicorn_command(port),
        url=f"http://{HOST}:{port}",
        cwd=workdir,
        env=env,
        output_path=workdir / output_name,
        ready_timeout=ready_timeout,
        stop_timeout=stop_timeout,
    ) as server:
        yield server


def worker_command() -> list[str]:
    """``notify-worker``, as ``make worker`` runs it: the entry point pyproject.toml declares
    for it, called as the installed script calls it, from this checkout."""
    module, _, function = script_target("notify-worker").partition(":")
    return [
        sys.executable,
        "-c",
        f"import sys; from {module} import {function}; sys.exit({function}())",
    ]


def script_target(name: str) -> str:
    """``module:function``, the entry point of the console script ``name`` in pyproject.toml."""
    with (REPO_ROOT / "pyproject.toml").open("rb") as file:
        target: str = tomllib.load(file)["project"]["scripts"][name]
    return target


@contextlib.asynccontextmanager
async def running_worker(
    workdir: Path,
    settings: Mapping[str, str],
    *,
    output_name: str = "worker-output.txt",
    ready_timeout: float = 20.0,
    stop_timeout: float = 10.0,
) -> AsyncIterator[ServerProcess]:
    """A worker (``NOTIFY_BACKEND=redis``) in ``workdir``, its own process group, ready once
    it says it is writing; stopped like a server on exit. Its ``url`` is empty."""
    env = service_env({"NOTIFY_LOG_PATH": str(workdir / "log.txt"), **settings})
    output_path = workdir / output_name
    process = await _start(worker_command(), cwd=workdir, env=env, output_path=output_path)
    try:
        worker = ServerProcess(process=process, url="", output_path=output_path)
        try:
            async with asyncio.timeout(ready_timeout):
                await worker.wait_for_output("worker writing redis stream")
        except TimeoutError:
            raise ServerNotReadyError(
                f"worker not ready within {ready_timeout} s; its output:\n{worker.output()}"
            ) from None
        yield worker
    finally:
        await _stop(process, stop_timeout)


@dataclass(frozen=True)
class Exited:
    """How a process that was expected to exit by itself ended."""

    returncode: int
    output: str


def run_until_exit(
    command: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    output_path: Path,
    timeout: float,
) -> Exited:
    """Run ``command`` until it exits; past ``timeout`` s kill its group and raise.

    Raises ``subprocess.TimeoutExpired`` (its ``output`` is what the process printed).
    """
    popen = spawn(command, cwd, env, output_path)
    try:
        returncode = popen.wait(timeout)
    except subprocess.TimeoutExpired as exc:
        exc.output = _read_output(output_path)
        raise
    finally:
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()
    return Exited(returncode=returncode, output=_read_output(output_path))


# -- a fast raw HTTP/1.1 client (httpx manages only a few hundred requests a second) ---------


@dataclass
class PostResults:
    """What ``post_notifications`` saw, request by request."""

    acknowledged: list[str] = field(default_factory=list)
    """Emails answered 200, in the order the answers arrived."""
    statuses: Counter[int] = field(default_factory=Counter)
    """Complete responses by status."""
    transport_errors: Counter[str] = field(default_factory=Counter)
    """Requests without a complete response (refused, reset, closed), by exception name."""
    unexpected: list[str] = field(default_factory=list)
    """Answers that were not the service's 200, with their status and body."""


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """One response with a ``Content-Length`` body: ``(status, body, keep_alive)``."""
    head = await reader.readuntil(b"\r\n\r\n")
    status, length, keep_alive = parse_head(head[:-4])
    body = await reader.readexactly(length)
    return status, body, keep_alive


async def post_notifications(
    url: str,
    emails: Iterable[str],
    *,
    concurrency: int,
    acknowledgement: bytes,
    on_acknowledged: Callable[[int], None] = lambda count: None,
    stop_on_error: bool = False,
) -> PostResults:
    """``POST /send-notification/{email}`` for each email, over ``concurrency`` connections.

    Each keep-alive connection sends one request at a time (closed loop) on raw asyncio
    streams. Every 200 whose body is ``acknowledgement`` is recorded as it arrives, and
    ``on_acknowledged`` is called with the running count (so a test can act at a given
    point). A request whose connection breaks counts as a transport error; the worker then
    stops if ``stop_on_error``, else reconnects for its next email. Bound the whole call with
    ``asyncio.timeout``.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or HOST, parts.port or 80
    results = PostResults()
    jobs = iter(emails)  # shared by every worker: each email is posted once

    async def worker() -> None:
        writer: asyncio.StreamWriter | None = None
        reader: asyncio.StreamReader | None = None
        try:
            for email in jobs:
                request = (
                    f"POST /send-notification/{email} HTTP/1.1\r\n"
                    f"Host: {host}:{port}\r\nContent-Length: 0\r\n\r\n"
                ).encode("ascii")
                try:
                    if writer is None or reader is None:
                        reader, writer = await asyncio.open_connection(host, port)
                    writer.write(request)
                    status, body, keep_alive = await _read_response(reader)
                except (OSError, EOFError, ValueError) as exc:
                    results.transport_errors[type(exc).__name__] += 1
                    if writer is not None:
                        writer.close()
                    reader = writer = None
                    if stop_on_error:
                        return
                    continue
                results.statuses[status] += 1
                if status == 200 and body == acknowledgement:
                    results.acknowledged.append(email)
                    on_acknowledged(len(results.acknowledged))
                else:
                    results.unexpected.append(f"{email}: {status} {body!r}")
                if not keep_alive:
                    writer.close()
                    reader = writer = None
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


_DELIVERY_STARTED = re.compile(r"delivery process \[(\d+)\] started")


@contextlib.asynccontextmanager
async def notify_service(
    workdir: Path,
    settings: Mapping[str, str],
    *,
    output_name: str = "service-output.txt",
    options: Sequence[str] = (),
    python: str = sys.executable,
) -> AsyncIterator[ServerProcess]:
    """``python -m service`` (notify-service, run by ``python``) with ``options`` in
    ``workdir`` on a free port, once it answers and its delivery process has started."""
    port = free_port()
    env = service_env({"NOTIFY_HOST": HOST, "NOTIFY_PORT": str(port), **settings})
    async with running_server(
        [*service_command(python), *options],
        url=f"http://{HOST}:{port}",
        cwd=workdir,
        env=env,
        output_path=workdir / output_name,
    ) as server:
        await eventually(lambda: delivery_pids(server), message="the delivery process started")
        yield server


def delivery_pids(server: ServerProcess) -> list[int]:
    """The delivery processes a notify-service has started so far, in order."""
    return [int(pid) for pid in _DELIVERY_STARTED.findall(server.output())]
