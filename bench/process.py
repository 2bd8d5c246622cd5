"""Start, watch and stop the harness's child processes, each in its own process group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

from bench.cpu import process_cpu_seconds
from bench.errors import HarnessError
from bench.servers import ServerSpec

HOST = "127.0.0.1"
Popen: TypeAlias = subprocess.Popen[bytes]
_READY_POLL_S = 0.02


def free_port() -> int:
    """A port that was free on the loopback interface a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def server_env(
    spec: ServerSpec, run_dir: Path, repo_root: Path, redis_url: str = ""
) -> dict[str, str]:
    """The inherited environment minus ``NOTIFY_*``, plus the repo on the path and the spec's."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("NOTIFY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo_root), env.get("PYTHONPATH")]))
    env.update(spec.env_for(run_dir, redis_url))
    return env


def tail_text(path: Path, lines: int = 15) -> str:
    """The last lines of a text file, or a note that it is missing."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} is missing)"
    return "\n".join(text.splitlines()[-lines:])


def spawn(command: Sequence[str], cwd: Path, env: Mapping[str, str], output_path: Path) -> Popen:
    """Start ``command`` in its own session (so its own process group), output to one file."""
    with output_path.open("wb") as output:
        return subprocess.Popen(
            command,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def group_pids(group: int) -> list[int]:
    """The processes whose process group is ``group`` right now, and their descendants (a
    process that started one in a group of its own: notify-service's delivery process)."""
    parents: dict[int, int] = {}
    members = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        if int(fields[2]) == group:
            members.add(int(entry.name))
    grown = True
    while grown:
        found = {pid for pid, parent in parents.items() if parent in members} - members
        members |= found
        grown = bool(found)
    return sorted(members)


def _peak_rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise HarnessError(f"no VmHWM in /proc/{pid}/status")


@dataclass
class ChildProcess:
    """A process the harness started with ``spawn``: its ``Popen`` and output file.

    CPU time and peak RSS are summed over ``pids``: the process itself unless ``track_group``
    recorded every member of its process group (a parent that forks its workers).
    """

    name: str
    popen: Popen
    output_path: Path
    pids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        self.pids = self.pids or (self.popen.pid,)

    def track_group(self) -> None:
        """From now on, measure every process that is in the process group at this moment, and
        their descendants."""
        self.pids = tuple(group_pids(self.popen.pid)) or (self.popen.pid,)

    def died(self, what: str) -> str:
        """An error message: ``what`` happened to the process, and the end of its output."""
        return f"{self.name} {what}; its output:\n{tail_text(self.output_path)}"

    def cpu_seconds(self) -> float:
        """User plus system CPU time the process (or its tracked group) has used so far."""
        try:
            return sum(process_cpu_seconds(pid) for pid in self.pids)
        except OSError as exc:
            raise HarnessError(self.died(f"vanished ({exc.strerror})")) from None

    def peak_rss_kb(self) -> int:
        """Peak resident set size (``VmHWM``) in KiB; summed over a tracked group."""
        try:
            return sum(_peak_rss_kb(pid) for pid in self.pids)
        except OSError as exc:
            raise HarnessError(self.died(f"vanished ({exc.strerror})")) from None

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
        """SIGKILL the whole process group, whatever state it is in, and reap the process."""
        with suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()


@dataclass
class ServerProcess(ChildProcess):
    """A running uvicorn server: a ``ChildProcess`` that listens on ``port``."""

    port: int = 0

    def wait_ready(self, timeout: float) -> float:
        """Block until the port accepts connections; return the seconds it took."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            code = self.popen.poll()
            if code is not None:
                raise HarnessError(self.died(f"exited with code {code} before listening"))
            try:
                socket.create_connection((HOST, self.port), timeout=0.5).close()
            except OSError:
                time.sleep(_READY_POLL_S)
            else:
                return time.monotonic() - started
        raise HarnessError(self.died(f"did not listen within {timeout:.0f} s"))

    def died(self, what: str) -> str:
        return f"server {self.name!r} {what}; its output:\n{tail_text(self.output_path)}"


@contextmanager
def running_server(
    spec: ServerSpec,
    run_dir: Path,
    repo_root: Path,
    redis_url: str = "",
    *,
    wrapper: Sequence[str] = (),
    extra_env: Mapping[str, str] | None = None,
    notify_service: bool = False,
) -> Iterator[ServerProcess]:
    """Start ``uvicorn {spec.app}`` in ``run_dir`` (under ``wrapper``, a command such as
    valgrind, when given); it is killed when the block exits. With ``notify_service`` (the
    ``service.main`` rows only) the server is ``python -m service`` instead, as a user runs
    ``notify-service``: the API with ``NOTIFY_DELIVERY=external`` and its delivery process,
    which stops by itself once ``notify-service`` is killed."""
    port = free_port()
    if notify_service:
        serve = [sys.executable, "-m", "service", "--host", HOST, "--port", str(port)]
    else:
        serve = [sys.executable, "-m", "uvicorn", spec.app, "--host", HOST, "--port", str(port)]
    if spec.workers > 1:
        serve += ["--workers", str(spec.workers)]
    command = [*wrapper, *serve]
    env = {**server_env(spec, run_dir, repo_root, redis_url), **(extra_env or {})}
    popen = spawn(command, run_dir, env, run_dir / "server.out")
    server = ServerProcess(spec.name, popen, run_dir / "server.out", port=port)
    try:
        yield server
    finally:
        server.kill()
