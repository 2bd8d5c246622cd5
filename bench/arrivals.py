"""What the delivery benchmarks' receivers share: the record of arrivals, the event loop of
their thread, and waiting for a count.

A receiver (``bench.smtp_sink``'s SMTP server, ``bench.webhook_sink``'s HTTP server) runs on a
thread of the bench process with its own event loop and records every delivery it accepts as
an ``Arrival``; the benchmark waits on that record and reads the thread's CPU time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from bench.cpu import process_cpu_seconds
from bench.process import HOST, free_port

STALL_S = 5.0
"""Waiting for arrivals ends when none has arrived for this long."""


@dataclass(frozen=True, slots=True)
class Arrival:
    """One delivery the receiver accepted."""

    at: float
    """``time.time()`` when its data had arrived (before any delay)."""
    notification_id: str | None
    recipient: str | None = None
    """The envelope's first recipient (SMTP only): the email the load generator posted."""


class ArrivalLog:
    """Arrivals in order, written by the receiver's thread, read by the benchmark's."""

    def __init__(self) -> None:
        self._arrivals: list[Arrival] = []
        self._changed = threading.Condition()

    def record(self, arrival: Arrival) -> None:
        with self._changed:
            self._arrivals.append(arrival)
            self._changed.notify_all()

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


class Sink(Protocol):
    """A running receiver: its record of arrivals and its thread's CPU time."""

    @property
    def recorder(self) -> ArrivalLog: ...

    @property
    def url(self) -> str: ...

    def cpu_seconds(self) -> float: ...


@dataclass
class ReceiverThread:
    """Where a running receiver listens, and the thread it runs on."""

    port: int
    thread_id: int
    """The native id of the receiver's thread."""

    def cpu_seconds(self) -> float:
        """CPU time the receiver's thread has used so far."""
        return process_cpu_seconds(self.thread_id)


def wait_for_arrivals(
    recorder: ArrivalLog, expected: int, limit_s: float, stall_s: float = STALL_S
) -> bool:
    """Until ``expected`` arrivals, none for ``stall_s``, or ``limit_s`` passed; whether all
    ``expected`` arrived."""
    deadline = time.monotonic() + limit_s
    seen, changed = recorder.count(), time.monotonic()
    while True:
        if recorder.wait_for(lambda count: count >= expected, timeout=0.25):
            return True
        now, count = time.monotonic(), recorder.count()
        if count != seen:
            seen, changed = count, now
        if now - changed >= stall_s or now >= deadline:
            return False


async def native_thread_id() -> int:
    return threading.get_native_id()


def new_loop() -> asyncio.AbstractEventLoop:
    """A fresh event loop for a receiver's thread: uvloop's when installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


_READY_TIMEOUT_S = 10.0


@contextmanager
def protocol_server(
    protocol: Callable[[], asyncio.Protocol], name: str
) -> Iterator[tuple[int, int]]:
    """A server of ``protocol`` connections on a free loopback port, on a thread of its own
    with its own event loop (``new_loop``); yields ``(port, native thread id)`` and stops
    when the block exits."""
    loop = new_loop()
    thread = threading.Thread(target=loop.run_forever, name=name, daemon=True)
    thread.start()
    server: asyncio.Server | None = None
    try:
        for _ in range(5):  # the port was free a moment ago; another process may have taken it
            port = free_port()
            opening = loop.create_server(protocol, HOST, port, backlog=1024)
            try:
                server = asyncio.run_coroutine_threadsafe(opening, loop).result(_READY_TIMEOUT_S)
            except OSError:
                continue
            break
        else:
            raise RuntimeError(f"no free loopback port for the {name}")
        thread_id = asyncio.run_coroutine_threadsafe(native_thread_id(), loop).result(
            _READY_TIMEOUT_S
        )
        yield port, thread_id
    finally:
        if server is not None:
            loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_READY_TIMEOUT_S)
        if not thread.is_alive():
            loop.close()
