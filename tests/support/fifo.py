"""A FIFO whose pipe is full: a log sink made slow by real means, for tests."""

from __future__ import annotations

import contextlib
import os
import select
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FullFifo", "full_fifo", "pipe_has_data", "read_available"]

FILLER_LINE_SIZE = 64  # divides every page size, so the pipe's pages fill up exactly


def _fill_pipe(write_fd: int) -> bytes:
    """Write to the non-blocking ``write_fd`` until not one more byte fits; return it all."""
    written = bytearray()
    number = 0
    while True:
        line = f"filler {number:0{FILLER_LINE_SIZE - len('filler ') - 1}d}\n".encode()
        try:
            os.write(write_fd, line)
        except BlockingIOError:
            break
        written += line
        number += 1
    while True:  # top up whatever room the last lines left, one newline at a time
        try:
            os.write(write_fd, b"\n")
        except BlockingIOError:
            return bytes(written)
        written += b"\n"


def read_available(read_fd: int) -> bytes:
    """Whatever the non-blocking ``read_fd`` holds now (maybe nothing)."""
    data = bytearray()
    while True:
        try:
            chunk = os.read(read_fd, 65536)
        except BlockingIOError:
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk


def pipe_has_data(read_fd: int) -> bool:
    """Whether a read of the non-blocking ``read_fd`` would return something now."""
    readable, _, _ = select.select([read_fd], [], [], 0)
    return bool(readable)


@dataclass(frozen=True)
class FullFifo:
    """A FIFO whose pipe is full, with the test holding a read end and a write end."""

    path: Path
    read_fd: int
    write_fd: int
    filler: bytes  # what the test wrote to fill it, in order


@contextlib.contextmanager
def full_fifo(path: Path) -> Iterator[FullFifo]:
    """Make a FIFO at ``path`` and fill its pipe until not one more byte fits."""
    os.mkfifo(path)
    read_fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        # the test keeps a write end open, so an empty pipe reads as EAGAIN, never as EOF
        write_fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        try:
            filler = _fill_pipe(write_fd)
            assert len(filler) >= 4096  # at least a page: a real pipe, really full
            yield FullFifo(path, read_fd, write_fd, filler)
        finally:
            os.close(write_fd)
    finally:
        os.close(read_fd)
