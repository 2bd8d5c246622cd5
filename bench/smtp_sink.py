"""The email benchmark's SMTP server: ``aiosmtpd``'s ``Controller`` (a thread of the bench
process with its own event loop, uvloop's when installed) on a free loopback port.

Its handler accepts every message and records when the data arrived (``time.time()``: the one
clock every process of the machine shares) and the message's ``X-Notification-Id``; with a
delay it then waits that long (``asyncio.sleep``, other connections go on meanwhile) before
answering, as a slow mail server would.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from bench.cpu import process_cpu_seconds
from bench.process import HOST, free_port

_READY_TIMEOUT_S = 10.0
_HEADER = re.compile(rb"^x-notification-id:[ \t]*([^\r\n]*)", re.IGNORECASE | re.MULTILINE)


def notification_id(content: bytes) -> str | None:
    """The ``X-Notification-Id`` in a message's header section, or None."""
    end = content.find(b"\r\n\r\n")
    head = content if end < 0 else content[: end + 2]
    found = _HEADER.search(head)
    if found is None:
        return None
    value = found.group(1).strip()
    return value.decode("ascii", "replace") or None


@dataclass(frozen=True, slots=True)
class Arrival:
    """One message the server accepted."""

    at: float
    """``time.time()`` when its data had arrived (before any delay)."""
    notification_id: str | None


class Recorder:
    """The server's handler (its hooks run on the server's thread)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self._arrivals: list[Arrival] = []
        self._changed = threading.Condition()

    def count(self) -> int:
        with self._changed:
            return len(self._arrivals)

    def arrivals(self) -> list[Arrival]:
        """A copy of what arrived so far, in order of arrival."""
        with self._changed:
            return list(self._arrivals)

    def clear(self) -> None:
        with self._changed:
            self._arrivals.clear()

    def wait_for(self, condition: Callable[[int], bool], timeout: float) -> bool:
        """Block until ``condition(count)`` holds, or ``timeout`` s; whether it held."""
        with self._changed:
            return self._changed.wait_for(lambda: condition(len(self._arrivals)), timeout)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        at = time.time()
        content = envelope.original_content or b""
        arrival = Arrival(at, notification_id(content))
        with self._changed:
            self._arrivals.append(arrival)
            self._changed.notify_all()
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)
        return "250 2.0.0 OK queued"


@dataclass
class SmtpSink:
    recorder: Recorder
    port: int
    thread_id: int
    """The native id of the server's thread."""

    @property
    def url(self) -> str:
        return f"smtp://{HOST}:{self.port}"

    def cpu_seconds(self) -> float:
        """CPU time the server's thread has used so far."""
        return process_cpu_seconds(self.thread_id)


async def _native_thread_id() -> int:
    return threading.get_native_id()


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


@contextmanager
def smtp_sink(delay_s: float = 0.0) -> Iterator[SmtpSink]:
    """A running SMTP server on a free loopback port, stopped when the block exits."""
    recorder = Recorder(delay_s)
    options: dict[str, Any] = {"enable_SMTPUTF8": True, "ready_timeout": _READY_TIMEOUT_S}
    for _ in range(5):  # the port was free a moment ago; another process may have taken it
        loop = _new_loop()
        controller = Controller(recorder, hostname=HOST, port=free_port(), loop=loop, **options)
        try:
            controller.start()
        except OSError:
            loop.close()
            continue
        break
    else:
        raise RuntimeError("no free loopback port for the SMTP server")
    try:
        thread_id = asyncio.run_coroutine_threadsafe(_native_thread_id(), loop).result(
            _READY_TIMEOUT_S
        )
        yield SmtpSink(recorder, controller.port, thread_id)
    finally:
        controller.stop()
        if not loop.is_closed():
            loop.close()
