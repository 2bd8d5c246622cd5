"""File-system helpers of the sinks: opening for append, noticing a moved or deleted file,
rotation, pipes, and naming the reason an open failed. Each blocking helper runs in a worker
thread (the caller says so with ``asyncio.to_thread``); nothing here touches the event loop."""

from __future__ import annotations

import os
import select
import socket
import uuid
from pathlib import Path
from typing import Literal, Protocol

import aiofiles

__all__ = [
    "MACHINE",
    "AppendFile",
    "FileState",
    "file_state",
    "holder_gone",
    "open_append",
    "os_error_reason",
    "pid_alive",
    "pid_gone",
    "pipe_sized",
    "process_token",
    "rotate",
]

FileState = Literal["same", "moved", "unlinked"]

MACHINE = socket.gethostname()
"""This machine, in what one process leaves for another (leases, a log file's identity)."""


def _nonblocking_opener(path: str, flags: int) -> int:
    # O_NONBLOCK changes nothing for a regular file; for a FIFO it turns a reader that does not
    # keep up into EAGAIN (retried like any failure) instead of a thread blocked for ever.
    return os.open(path, flags | os.O_NONBLOCK, 0o644)


class AppendFile(Protocol):
    """What the log file sink uses of the file ``aiofiles.open`` gives (its documented async
    ``write`` and ``close``, and ``fileno``), rather than naming aiofiles' own class."""

    async def write(self, data: bytes, /) -> int: ...

    def fileno(self) -> int: ...

    async def close(self) -> None: ...


async def open_append(path: Path) -> AppendFile:
    """Open ``path`` for appending, unbuffered (``O_APPEND``: whole writes never interleave)."""
    return await aiofiles.open(path, "ab", buffering=0, opener=_nonblocking_opener)


def file_state(fd: int, path: Path) -> FileState:
    """Is the open file ``fd`` still the file at ``path``? Blocking."""
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


def rotate(path: Path, keep: int) -> None:
    """``path.{keep-1}`` → ``path.{keep}`` … ``path`` → ``path.1``. Blocking."""
    for number in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{number}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{number + 1}"))
    path.replace(path.with_name(f"{path.name}.1"))


def pid_alive(pid: int) -> bool:
    """Is there a running process ``pid`` (ours to signal or not)? A zombie (dead, not yet
    reaped: a killed worker whose parent was killed too) is not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # Linux: the state is the field after the command's closing parenthesis
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def pid_gone(pid: int) -> bool:
    """Whether what process ``pid`` of this machine holds (a lease, a claimed spool) is free:
    it runs no more, or it is our own pid, left by an earlier process (PID 1 in a container:
    we have not taken anything yet)."""
    return pid == os.getpid() or not pid_alive(pid)


def process_token() -> str:
    """``<machine>:<pid>:<random>``: who holds something, so that another process can tell
    (``holder_gone``) when the holder is gone."""
    return f"{MACHINE}:{os.getpid()}:{uuid.uuid4().hex}"


def holder_gone(holder: str) -> bool:
    """Whether the holder ``process_token()`` names is a process of this machine that is
    gone (see ``pid_gone``); a holder on another machine is never known to be gone."""
    machine, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    return machine == MACHINE and pid.isdigit() and pid_gone(int(pid))


def pipe_sized(data: bytes) -> bytes:
    """The longest prefix of ``data`` that is whole lines and at most PIPE_BUF bytes.

    A write of at most PIPE_BUF bytes to a pipe is all or nothing, so a line is never split
    between what a reader got and what is retried (or spooled). A longer single line goes alone.
    """
    if len(data) <= select.PIPE_BUF:
        return data
    cut = data.rfind(b"\n", 0, select.PIPE_BUF) + 1
    return data[:cut] if cut else data[: data.index(b"\n") + 1]


def os_error_reason(exc: OSError, path: Path) -> str:
    """Why opening ``path`` failed, naming the file at fault when it is another one."""
    reason = exc.strerror or str(exc)
    if exc.filename is not None and os.fspath(exc.filename) != os.fspath(path):
        return f"{reason} ({exc.filename})"
    return reason
