"""The redis row's other processes: a ``redis-server`` and one worker, in the run's directory.

Redis listens on a free loopback port with an append-only file (``appendfsync everysec``, no
RDB snapshots), as ``make redis`` runs it; the worker is ``python -m service.redis.worker``
(one process, what ``make worker``'s ``notify-worker`` runs), with the API's
``NOTIFY_*`` settings. Both run in their own process group and are killed when their block
exits.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.errors import HarnessError
from bench.process import HOST, ChildProcess, free_port, server_env, spawn
from bench.servers import REDIS_MISSING, ServerSpec

WORKER_READY_TEXT = "worker writing redis stream"
"""What the worker prints once it reads the stream and has its log open."""

_POLL_S = 0.02


@dataclass
class RedisServer(ChildProcess):
    """A running ``redis-server`` on ``port``, spoken to in RESP over short connections."""

    port: int = 0

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def command(self, *args: str, timeout: float = 1.0) -> bytes:
        """Send one command; return its one-line reply without the ``\\r\\n``."""
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
        reply = b""
        with socket.create_connection((HOST, self.port), timeout=timeout) as connection:
            connection.sendall(b"".join(parts))
            while b"\r\n" not in reply:
                chunk = connection.recv(256)
                if not chunk:
                    raise OSError("redis-server closed the connection")
                reply += chunk
        return reply.split(b"\r\n", 1)[0]

    def answers(self) -> bool:
        try:
            return self.command("PING") == b"+PONG"
        except OSError:
            return False

    def stream_length(self, stream: str) -> int:
        """``XLEN``: entries still in the stream (the worker deletes what it has written)."""
        try:
            reply = self.command("XLEN", stream)
        except OSError as exc:
            raise HarnessError(self.died(f"did not answer XLEN ({exc})")) from None
        if not reply.startswith(b":"):
            raise HarnessError(f"redis-server answered XLEN {stream} with {reply!r}")
        return int(reply[1:])

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.answers():
            code = self.popen.poll()
            if code is not None:
                raise HarnessError(self.died(f"exited with code {code} before answering"))
            if time.monotonic() > deadline:
                raise HarnessError(self.died(f"did not answer PING within {timeout:.0f} s"))
            time.sleep(_POLL_S)


@contextmanager
def running_redis(run_dir: Path, ready_timeout: float) -> Iterator[RedisServer]:
    """A fresh ``redis-server`` with its data in ``run_dir``, answering; killed on exit."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise HarnessError(REDIS_MISSING)
    port = free_port()
    command = [
        binary,
        "--bind", HOST,
        "--port", str(port),
        "--dir", str(run_dir),
        "--save", "",
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--daemonize", "no",
    ]  # fmt: skip
    output_path = run_dir / "redis.out"
    popen = spawn(command, run_dir, os.environ, output_path)
    redis = RedisServer("redis-server", popen, output_path, port=port)
    try:
        redis.wait_ready(ready_timeout)
        yield redis
    finally:
        redis.kill()


def _wait_for_output(process: ChildProcess, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if text in process.output_path.read_text(errors="replace"):
                return
        except FileNotFoundError:
            pass
        code = process.popen.poll()
        if code is not None:
            raise HarnessError(process.died(f"exited with code {code} before it was ready"))
        if time.monotonic() > deadline:
            raise HarnessError(process.died(f"did not say {text!r} within {timeout:.0f} s"))
        time.sleep(_POLL_S)


@contextmanager
def running_worker(
    spec: ServerSpec, run_dir: Path, repo_root: Path, redis_url: str, ready_timeout: float
) -> Iterator[ChildProcess]:
    """One worker with the API's settings, in ``run_dir``, ready; killed when the block exits."""
    command = [sys.executable, "-m", "service.redis.worker"]  # notify-worker, as `make worker`
    env = {**server_env(spec, run_dir, repo_root, redis_url), "PYTHONUNBUFFERED": "1"}
    output_path = run_dir / "worker.out"
    worker = ChildProcess("worker", spawn(command, run_dir, env, output_path), output_path)
    try:
        _wait_for_output(worker, WORKER_READY_TEXT, ready_timeout)
        yield worker
    finally:
        worker.kill()
