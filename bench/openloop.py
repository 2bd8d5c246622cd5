"""Open-loop HTTP/1.1 load at a fixed rate, meant to run in its own process.

Request ``i`` is sent at ``start + i / rate`` whatever became of the earlier ones (a free
keep-alive connection is reused, otherwise another is opened), each posting to a unique
``/send-notification/{email}``. For every 200 it records the response's ``X-Notification-Id``
and ``time.time()`` when the response had arrived, so another process can match what it saw
(the email benchmark: the SMTP server's receipt of that notification's message). The first
``warmup`` seconds are sent the same way but marked unmeasured.

With ``--drain S`` the wait for the last responses after the last send ends after ``S``
seconds: requests still unanswered then are counted in ``unanswered`` (and as status 0 when
measured), so a server that fell behind still yields a result. The JSON result goes to
``--out`` (or to stdout).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import secrets
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.loadgen import CONNECTION_FAILED, Address, parse_head
from bench.paths import emit_json


def header_value(head: bytes, name: str) -> str | None:
    """The value of header ``name`` (any case) in a response head, or None."""
    wanted = name.lower()
    for line in head.decode("latin-1").split("\r\n")[1:]:
        key, colon, value = line.partition(":")
        if colon and key.strip().lower() == wanted:
            return value.strip()
    return None


class Exchange(asyncio.Protocol):
    """One keep-alive connection, one request at a time; answers ``(status, id)``."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, str | None]] | None = None
        self.usable = True

    @classmethod
    async def open(cls, address: Address) -> Exchange:
        _, exchange = await asyncio.get_running_loop().create_connection(cls, *address)
        return exchange

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self._buffer[:end])
        try:
            status, length, keep_alive = parse_head(head)
        except ValueError as exc:
            self._fail(exc)
            return
        if len(self._buffer) < end + 4 + length:
            return
        del self._buffer[: end + 4 + length]
        if not keep_alive:
            self.close()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result((status, header_value(head, "x-notification-id")))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("server closed the connection"))

    def _fail(self, exc: Exception) -> None:
        self.close()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    async def send(self, request: bytes) -> tuple[int, str | None]:
        assert self._transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        return await self._waiter

    def close(self) -> None:
        self.usable = False
        if self._transport is not None:
            self._transport.close()


@dataclass
class OpenLoopResult:
    rate: float
    seconds: float
    warmup_seconds: float
    sent: int = 0
    acks: list[tuple[str, float]] = field(default_factory=list)
    """Measured 200s: ``(X-Notification-Id, time.time() at the response)``."""
    warmup_acked: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    """Measured responses by status (0: the connection failed)."""
    most_behind_ms: float = 0.0
    """How late the worst send left against its schedule (the client's own lag)."""
    connections: int = 0
    first_send: float = 0.0
    last_send: float = 0.0
    unanswered: int = 0
    """Requests without a response when the ``drain`` wait after the last send ended."""

    @property
    def achieved_rate(self) -> float:
        span = self.last_send - self.first_send
        return (self.sent - 1) / span if self.sent > 1 and span > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["statuses"] = {str(status): n for status, n in self.statuses.items()}
        data["achieved_rate"] = self.achieved_rate
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OpenLoopResult:
        fields = {key: value for key, value in data.items() if key != "achieved_rate"}
        fields["statuses"] = Counter({int(k): int(v) for k, v in data["statuses"].items()})
        fields["acks"] = [(str(nid), float(at)) for nid, at in data["acks"]]
        return cls(**fields)


def _request(email: str, host_header: str) -> bytes:
    return (
        f"POST /send-notification/{email} HTTP/1.1\r\nHost: {host_header}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode("ascii")


async def run_open_loop(
    address: Address,
    rate: float,
    seconds: float,
    warmup_seconds: float,
    token: str,
    drain: float | None = None,
) -> OpenLoopResult:
    """Send ``rate`` requests a second for ``warmup_seconds + seconds``; see the module doc."""
    result = OpenLoopResult(rate, seconds, warmup_seconds)
    host_header = f"{address[0]}:{address[1]}"
    idle: list[Exchange] = []
    opened: list[Exchange] = []
    warmup_count = math.ceil(warmup_seconds * rate)
    total = warmup_count + math.ceil(seconds * rate)

    async def one(index: int) -> None:
        measured = index >= warmup_count
        exchange = idle.pop() if idle else None
        try:
            if exchange is None:
                exchange = await Exchange.open(address)
                opened.append(exchange)
            status, nid = await exchange.send(
                _request(f"o{index}-{token}@example.com", host_header)
            )
        except (OSError, ValueError):
            status, nid = CONNECTION_FAILED, None
        at = time.time()
        if exchange is not None and exchange.usable:
            idle.append(exchange)
        if not measured:
            result.warmup_acked += status == 200
            return
        result.statuses[status] += 1
        if status == 200 and nid is not None:
            result.acks.append((nid, at))

    loop = asyncio.get_running_loop()
    tasks = []
    start = loop.time() + 0.01
    for index in range(total):
        behind = loop.time() - (start + index / rate)
        if behind < 0:
            await asyncio.sleep(-behind)
        else:
            result.most_behind_ms = max(result.most_behind_ms, behind * 1000)
        now = time.time()
        if index == warmup_count:
            result.first_send = now
        if index >= warmup_count:
            result.sent += 1
            result.last_send = now
        tasks.append(asyncio.create_task(one(index)))
    if drain is None:
        await asyncio.gather(*tasks)
    else:
        _, pending = await asyncio.wait(tasks, timeout=drain)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        result.unanswered = len(pending)
        result.statuses[CONNECTION_FAILED] += sum(
            index >= warmup_count for index, task in enumerate(tasks) if task in pending
        )
    result.connections = len(opened)
    for exchange in opened:
        exchange.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.openloop", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, default=500.0, help="requests a second")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before, unmeasured")
    parser.add_argument("--token", default=secrets.token_hex(4), help="makes emails unique")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for the whole run")
    parser.add_argument(
        "--drain",
        type=float,
        help="seconds to wait for the last responses after the last send (default: all)",
    )
    parser.add_argument("--out", type=Path, help="JSON result file (default: stdout)")
    args = parser.parse_args(argv)
    run = run_open_loop(
        (args.host, args.port), args.rate, args.seconds, args.warmup, args.token, args.drain
    )
    try:
        result = asyncio.run(asyncio.wait_for(run, args.timeout))
    except (OSError, TimeoutError) as exc:
        print(f"openloop failed: {exc!r}", file=sys.stderr)
        return 1
    emit_json(result.to_json(), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
