"""A lean SMTP receiver for the benchmarks: SMTP on raw asyncio (uvloop's loop when installed),
on a thread of the bench process, on a free loopback port, as ``bench.webhook_sink`` is for
HTTP.

Why: ``bench.smtp_sink`` (aiosmtpd) takes about 0.3 ms of CPU per message, as much as the
service's delivery process spends sending it. On the benchmark's two cores, at the thousands of
emails a second of ``bench.distance``'s pace run, the receiver alone then needs most of a
core, which a real mail server, on a machine of its own, never takes from the sender. This one
does the least a server must: it answers ``EHLO``, ``HELO``, ``MAIL``, ``RCPT``, ``DATA`` (to
the line holding a lone dot), ``RSET``, ``NOOP`` and ``QUIT`` in order (pipelined commands
included), records when each message's data had arrived with its ``X-Notification-Id`` and
first recipient (``bench.smtp_sink.Recorder``'s record), and answers the data ``250`` at once
or after the recorder's delay (``call_later``: that connection waits, the others go on). It
verifies nothing else; anything else gets ``502``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

from bench.arrivals import Arrival, protocol_server
from bench.smtp_sink import Recorder, SmtpSink, notification_id

__all__ = ["lean_smtp_sink"]

_MAX_LINE = 4096
_GREETING = b"220 lean.sink ESMTP\r\n"
_EHLO = b"250-lean.sink\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-PIPELINING\r\n250 SIZE 33554432\r\n"
_OK = b"250 2.0.0 OK\r\n"
_QUEUED = b"250 2.0.0 OK queued\r\n"
_END_OF_DATA = b"\r\n.\r\n"


class _Connection(asyncio.Protocol):
    """One client connection: commands answered in order, one message at a time."""

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._recipients: list[str] = []
        self._in_data = False
        self._waiting = False
        """An answer to a message's data is delayed: what follows waits for it."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._transport.write(_GREETING)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._serve()

    def _serve(self) -> None:
        while self._transport is not None and not self._waiting:
            if self._in_data:
                if not self._message():
                    return
                continue
            end = self._buffer.find(b"\r\n")
            if end < 0:
                if len(self._buffer) > _MAX_LINE:
                    self._answer(b"500 5.5.6 line too long\r\n", close=True)
                return
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 2]
            self._command(line)

    def _command(self, line: bytes) -> None:
        verb = line[:4].upper()
        if verb == b"EHLO":
            self._answer(_EHLO)
        elif verb in (b"HELO", b"NOOP"):
            self._answer(_OK)
        elif verb in (b"MAIL", b"RSET"):
            self._recipients = []
            self._answer(_OK)
        elif verb == b"RCPT":
            start, end = line.find(b"<"), line.find(b">")
            if start < 0 or end < start:
                self._answer(b"501 5.5.4 syntax: RCPT TO:<address>\r\n")
                return
            self._recipients.append(line[start + 1 : end].decode("utf-8", "replace"))
            self._answer(_OK)
        elif verb == b"DATA":
            if not self._recipients:
                self._answer(b"503 5.5.1 RCPT first\r\n")
                return
            self._in_data = True
            self._answer(b"354 end data with <CR><LF>.<CR><LF>\r\n")
        elif verb == b"QUIT":
            self._answer(b"221 2.0.0 bye\r\n", close=True)
        else:
            self._answer(b"502 5.5.2 not implemented\r\n")

    def _message(self) -> bool:
        """Take one message's data if it is whole (``DATA``'s first line may be the dot)."""
        if self._buffer.startswith(b".\r\n"):
            content, taken = b"", 3
        else:
            end = self._buffer.find(_END_OF_DATA)
            if end < 0:
                return False
            content, taken = bytes(self._buffer[: end + 2]), end + len(_END_OF_DATA)
        del self._buffer[:taken]
        self._in_data = False
        recipients, self._recipients = self._recipients, []
        self._recorder.record(Arrival(time.time(), notification_id(content), recipients[0]))
        delay = self._recorder.delay_s
        if delay > 0:
            self._waiting = True
            asyncio.get_running_loop().call_later(delay, self._answer_later)
        else:
            self._answer(_QUEUED)
        return True

    def _answer_later(self) -> None:
        self._waiting = False
        self._answer(_QUEUED)
        self._serve()

    def _answer(self, response: bytes, *, close: bool = False) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(response)
        if close:
            transport.close()
            self._transport = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


@contextmanager
def lean_smtp_sink(delay_s: float = 0.0) -> Iterator[SmtpSink]:
    """A running lean SMTP server on a free loopback port, stopped when the block exits."""
    recorder = Recorder(delay_s)
    with protocol_server(lambda: _Connection(recorder), "lean SMTP server") as (port, thread):
        yield SmtpSink(port, thread, recorder)
