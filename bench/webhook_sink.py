"""The webhook benchmark's receiver: a bare HTTP/1.1 server on raw asyncio (uvloop's loop when
installed), on a thread of the bench process, on a free loopback port.

It verifies nothing (the service signs; checking signatures is the receiver's business, not
what is measured): it reads each request (``Content-Length`` bodies, keep-alive), records when
it had arrived (``time.time()``, the clock every process of the machine shares) and its
``webhook-id``, and answers ``200`` at once or, in the slow variant, after a delay
(``call_later``: the connection waits, the others go on), as a receiver taking that long
would. Anything it cannot parse gets a 400 and the connection is closed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

from bench.arrivals import Arrival, ArrivalLog, ReceiverThread, protocol_server
from bench.process import HOST

PATH = "/hook"
_MAX_HEAD = 64 * 1024
OK = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"
UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"
BAD = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


@dataclass(frozen=True)
class Request:
    """What the receiver reads of one request's head."""

    length: int
    """The body's length (``Content-Length``; 0 without one)."""
    webhook_id: str | None
    close: bool
    """The client asked to close the connection after this request."""


def parse_request_head(head: bytes) -> Request:
    """A request head without its blank line; ValueError for what it does not take (a chunked
    body, a bad ``Content-Length``, no request line)."""
    request_line, *lines = head.decode("latin-1").split("\r\n")
    if len(request_line.split(" ")) != 3:
        raise ValueError(f"not a request line: {request_line[:80]!r}")
    length, webhook_id, close = 0, None, request_line.endswith("HTTP/1.0")
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon:
            raise ValueError(f"not a header line: {line[:80]!r}")
        name, value = name.strip().lower(), value.strip()
        if name == "content-length":
            length = int(value)
            if length < 0:
                raise ValueError("negative content-length")
        elif name == "transfer-encoding":
            raise ValueError(f"transfer-encoding {value!r} not supported")
        elif name == "webhook-id":
            webhook_id = value
        elif name == "connection":
            close = value.lower() == "close"
    return Request(length, webhook_id, close)


class Receiver(ArrivalLog):
    """The record of arrivals, and how long each answer waits.

    While ``unavailable`` is set (by the benchmark's thread) every request is answered ``503``
    (no ``Retry-After``) and is not an arrival: its time goes to ``refused`` instead.
    """

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.unavailable = False
        self.refused: list[float] = []


class _Connection(asyncio.Protocol):
    """One client connection: requests in order, each answered once it is whole."""

    def __init__(self, receiver: Receiver) -> None:
        self._receiver = receiver
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while not self._closing:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > _MAX_HEAD:
                    self._answer(BAD, close=True)
                return
            try:
                request = parse_request_head(bytes(self._buffer[:end]))
            except ValueError:
                self._answer(BAD, close=True)
                return
            whole = end + 4 + request.length
            if len(self._buffer) < whole:
                return
            del self._buffer[:whole]
            self._closing = request.close
            if self._receiver.unavailable:
                self._receiver.refused.append(time.time())
                self._answer(UNAVAILABLE, request.close)
                continue
            self._receiver.record(Arrival(time.time(), request.webhook_id))
            delay = self._receiver.delay_s
            if delay > 0:
                asyncio.get_running_loop().call_later(delay, self._answer, OK, request.close)
            else:
                self._answer(OK, request.close)

    def _answer(self, response: bytes, close: bool) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(response)
        if close:
            self._closing = True
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


@dataclass
class WebhookSink(ReceiverThread):
    recorder: Receiver

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}{PATH}"


@contextmanager
def webhook_sink(delay_s: float = 0.0) -> Iterator[WebhookSink]:
    """A running receiver on a free loopback port, stopped when the block exits."""
    receiver = Receiver(delay_s)
    with protocol_server(lambda: _Connection(receiver), "webhook receiver") as (port, thread):
        yield WebhookSink(port, thread, receiver)
