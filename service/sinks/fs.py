"""File-system helpers of the sinks: opening for append, noticing a moved or deleted file,
rotation, pipes, and naming the reason an open failed. Each blocking helper runs in a worker
thread (the caller says so with ``asyncio.to_thread``); nothing here touches the event loop."""

from __future__ import annotations

import os
import select
from pathlib import Path
from typing import Literal

import aiofiles
from aiofiles.threadpool.binary import AsyncFileIO

__all__ = [
    "FileState",
    "file_state",
    "open_append",
    "os_error_reason",
    "pid_alive",
    "pipe_sized",
    "rotate",
]

FileState = Literal["same", "moved", "unlinked"]


def _nonblocking_opener(path: str, flags: int) -> int:
    # O_NONBLOCK changes nothing for a regular file; for a FIFO it turns a reader that does not
    # keep up into EAGAIN (retried like any failure) instead of a thread blocked for ever.
    return os.open(path, flags | os.O_NONBLOCK, 0o644)


async def open_append(path: Path) -> AsyncFileIO:
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
