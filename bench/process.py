"""Start, watch and stop one uvicorn server in its own process group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from bench.cpu import process_cpu_seconds
from bench.errors import HarnessError
from bench.servers import ServerSpec

HOST = "127.0.0.1"
_READY_POLL_S = 0.02


def free_port() -> int:
    """A port that was free on the loopback interface a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def server_env(spec: ServerSpec, run_dir: Path, repo_root: Path) -> dict[str, str]:
    """The inherited environment minus ``NOTIFY_*``, plus the repo on the path and the spec's."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("NOTIFY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo_root), env.get("PYTHONPATH")]))
    env.update(spec.env_for(run_dir))
    return env


def tail_text(path: Path, lines: int = 15) -> str:
    """The last lines of a text file, or a note that it is missing."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} is missing)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class ServerProcess:
    """A running server: its process, port and output file."""

    name: str
    port: int
    popen: subprocess.Popen[bytes]
    output_path: Path

    def wait_ready(self, timeout: float) -> float:
        """Block until the port accepts connections; return the seconds it took."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            code = self.popen.poll()
            if code is not None:
                raise HarnessError(self._died(f"exited with code {code} before listening"))
            try:
                socket.create_connection((HOST, self.port), timeout=0.5).close()
            except OSError:
                time.sleep(_READY_POLL_S)
            else:
                return time.monotonic() - started
        raise HarnessError(self._died(f"did not listen within {timeout:.0f} s"))

    def _died(self, what: str) -> str:
        return f"server {self.name!r} {what}; its output:\n{tail_text(self.output_path)}"

    def cpu_seconds(self) -> float:
        """User plus system CPU time the server has used so far."""
        try:
            return process_cpu_seconds(self.popen.pid)
        except OSError as exc:
            raise HarnessError(self._died(f"vanished ({exc.strerror})")) from None

    def peak_rss_kb(self) -> int:
        """The server's peak resident set size (``VmHWM``), in KiB."""
        try:
            status = Path(f"/proc/{self.popen.pid}/status").read_text()
        except OSError as exc:
            raise HarnessError(self._died(f"vanished ({exc.strerror})")) from None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise HarnessError(f"no VmHWM in /proc/{self.popen.pid}/status")

    def stop(self, timeout: float) -> int | None:
        """SIGTERM and wait; return the exit code, or None if it had to be killed."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        """SIGKILL the whole process group, whatever state it is in, and reap the server."""
        with suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()


@contextmanager
def running_server(spec: ServerSpec, run_dir: Path, repo_root: Path) -> Iterator[ServerProcess]:
    """Start ``uvicorn {spec.app}`` in ``run_dir``; it is killed when the block exits."""
    port = free_port()
    output_path = run_dir / "server.out"
    command = [sys.executable, "-m", "uvicorn", spec.app, "--host", HOST, "--port", str(port)]
    with output_path.open("wb") as output:
        popen = subprocess.Popen(
            command,
            cwd=run_dir,
            env=server_env(spec, run_dir, repo_root),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = ServerProcess(spec.name, port, popen, output_path)
    try:
        yield server
    finally:
        server.kill()
