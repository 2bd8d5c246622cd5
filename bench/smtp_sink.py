"""The email benchmark's SMTP server: ``aiosmtpd``'s ``Controller`` (a thread of the bench
process with its own event loop, uvloop's when installed) on a free loopback port.

Its handler accepts every message and records when the data arrived (``time.time()``: the one
clock every process of the machine shares), the message's ``X-Notification-Id`` and its
envelope's first recipient; with a
delay it then waits that long (``asyncio.sleep``, other connections go on meanwhile) before
answering, as a slow mail server would.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from bench.arrivals import Arrival, ArrivalLog, ReceiverThread, native_thread_id, new_loop
from bench.process import HOST, free_port

__all__ = ["Arrival", "Recorder", "SmtpSink", "notification_id", "smtp_sink"]

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


class Recorder(ArrivalLog):
    """The server's handler (its hooks run on the server's thread)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__()
        self.delay_s = delay_s

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        at = time.time()
        content = envelope.original_content or b""
        recipient = envelope.rcpt_tos[0] if envelope.rcpt_tos else None
        self.record(Arrival(at, notification_id(content), recipient))
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)
        return "250 2.0.0 OK queued"


@dataclass
class SmtpSink(ReceiverThread):
    recorder: Recorder

    @property
    def url(self) -> str:
        return f"smtp://{HOST}:{self.port}"


@contextmanager
def smtp_sink(
    delay_s: float = 0.0, *, port: int | None = None, recorder: Recorder | None = None
) -> Iterator[SmtpSink]:
    """A running SMTP server on a free loopback port (or on ``port``: a server started again
    where an earlier one listened, recording into the same ``recorder``), stopped when the
    block exits."""
    recorder = recorder or Recorder(delay_s)
    options: dict[str, Any] = {"enable_SMTPUTF8": True, "ready_timeout": _READY_TIMEOUT_S}
    for _ in range(5):  # the port was free a moment ago; another process may have taken it
        loop = new_loop()
        chosen = port or free_port()
        controller = Controller(recorder, hostname=HOST, port=chosen, loop=loop, **options)
        try:
            controller.start()
        except OSError:
            loop.close()
            continue
        break
    else:
        where = f"port {port}" if port else "free loopback port"
        raise RuntimeError(f"no {where} for the SMTP server")
    try:
        thread_id = asyncio.run_coroutine_threadsafe(native_thread_id(), loop).result(
            _READY_TIMEOUT_S
        )
        yield SmtpSink(controller.port, thread_id, recorder)
    finally:
        controller.stop()
        if not loop.is_closed():
            loop.close()
