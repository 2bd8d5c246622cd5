"""Closed-loop HTTP/1.1 load generator on raw asyncio, meant to run in its own process.

``C`` keep-alive connections each send one request, wait for the whole response, then
send the next, until ``N`` measured requests are done (after a few counted warmup
requests). Every request posts to a unique ``/send-notification/{email}``.

On stdout it prints ``START`` when the measured phase begins and, as soon as it ends,
``DONE <epoch> <acked>`` (the wall-clock time of the last response and how many requests,
warmup included, were acknowledged), so a parent process can act at those moments; then
the JSON result goes to ``--out`` (or to stdout).

If the server dies mid-run, each connection stops at its first failed reconnect (refused):
the run ends early, still announces ``DONE`` and still writes the JSON, whose ``failed``
counts requests that got no complete response and ``unsent`` the measured ones never sent.
With ``--acked-log FILE`` every acknowledged email is appended to ``FILE`` (one per line,
one unbuffered write each) the moment its response arrives, so that another process can
follow how many were acknowledged so far, e.g. to kill the server at a chosen point.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import os
import secrets
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.paths import emit_json

CONNECTION_FAILED = 0
"""Status recorded for a request whose connection broke before a full response."""

Job = tuple[str, bytes]
"""An email and the request bytes that post it."""

Address = tuple[str, int]


@dataclass(frozen=True)
class LoadResult:
    """What one load generator run measured."""

    requests: int
    warmup: int
    concurrency: int
    acked_emails: list[str]
    status_counts: dict[int, int]
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    duration_s: float
    rps: float
    last_response_wall: float
    client_cpu_s: float
    failed: int = 0
    """Requests, warmup included, that got no complete response: the connection was reset
    or closed mid-request, or refused when reopened (status 0 in ``status_counts``)."""
    unsent: int = 0
    """Measured requests never sent, because every connection had stopped (server gone)."""

    @property
    def non_200(self) -> dict[int, int]:
        """Measured responses by status, other than 200 (0 = connection failed)."""
        return {status: n for status, n in self.status_counts.items() if status != 200}

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["status_counts"] = {str(k): v for k, v in self.status_counts.items()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoadResult:
        counts = {int(k): int(v) for k, v in data["status_counts"].items()}
        return cls(**{**data, "status_counts": counts})


def parse_head(head: bytes) -> tuple[int, int, bool]:
    """A response head (without its blank line): ``(status, content_length, keep_alive)``."""
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    length = 0
    keep_alive = True
    for line in header_lines:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection":
            keep_alive = value.strip().lower() != "close"
        elif name == "transfer-encoding":
            raise ValueError(f"unsupported transfer-encoding: {value.strip()}")
    return status, length, keep_alive


class ResponseParser:
    """Incremental parser for the responses of one connection (Content-Length bodies only)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> tuple[int, bool] | None:
        """Add bytes; return ``(status, keep_alive)`` once a whole response has arrived."""
        self._buffer += data
        head_end = self._buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return None
        status, length, keep_alive = parse_head(bytes(self._buffer[:head_end]))
        end = head_end + 4 + length
        if len(self._buffer) < end:
            return None
        del self._buffer[:end]
        return status, keep_alive


class Connection(asyncio.Protocol):
    """One keep-alive client connection that carries one request at a time."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._parser = ResponseParser()
        self._waiter: asyncio.Future[int] | None = None
        self.usable = True

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(cls, host, port)
        return connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            response = self._parser.feed(data)
        except ValueError as exc:
            self._fail(exc)
            return
        if response is None:
            return
        status, keep_alive = response
        if not keep_alive:
            self.close()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.usable = False
        self._fail(exc or ConnectionError("server closed the connection"))

    def _fail(self, exc: Exception) -> None:
        self.close()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    async def send(self, request: bytes) -> int:
        """Write one request and return the status of its response."""
        assert self._transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        return await self._waiter

    def close(self) -> None:
        self.usable = False
        if self._transport is not None:
            self._transport.close()


class AckLog:
    """Appends each acknowledged email as one line, with one unbuffered ``write`` each."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def append(self, email: str) -> None:
        os.write(self._fd, f"{email}\n".encode())

    def close(self) -> None:
        os.close(self._fd)


class Recorder:
    """Status, latency and acknowledged email of every request of one phase."""

    def __init__(self, on_ack: Callable[[str], None] | None = None) -> None:
        self.latencies_ns: list[int] = []
        self.statuses: Counter[int] = Counter()
        self.acked: list[str] = []
        self.last_response_ns = 0
        self._on_ack = on_ack

    def record(self, email: str, status: int, started_ns: int, ended_ns: int) -> None:
        self.latencies_ns.append(ended_ns - started_ns)
        self.statuses[status] += 1
        if status == 200:
            self.acked.append(email)
            if self._on_ack is not None:
                self._on_ack(email)
        self.last_response_ns = max(self.last_response_ns, ended_ns)

    def refused(self) -> None:
        """A request that could not be sent: its connection could not be reopened."""
        self.statuses[CONNECTION_FAILED] += 1

    @property
    def attempted(self) -> int:
        return self.statuses.total()


def build_jobs(prefix: str, count: int, token: str, host_header: str) -> Iterator[Job]:
    """Yield ``count`` unique emails with the raw request that posts each one."""
    for i in range(count):
        email = f"{prefix}{i}-{token}@example.com"
        request = (
            f"POST /send-notification/{email} HTTP/1.1\r\n"
            f"Host: {host_header}\r\n"
            "Content-Length: 0\r\n"
            "\r\n"
        )
        yield email, request.encode("ascii")


async def _worker(
    pool: list[Connection], slot: int, jobs: Iterator[Job], recorder: Recorder, address: Address
) -> None:
    """Send jobs one after another over ``pool[slot]``, reconnecting when it breaks.

    Stops (leaving the remaining jobs to the other workers) when it cannot reconnect.
    """
    for email, request in jobs:
        if not pool[slot].usable:
            try:
                pool[slot] = await Connection.open(*address)
            except OSError:  # refused, reset, unreachable: the server is gone
                recorder.refused()
                return
        started = time.perf_counter_ns()
        try:
            status = await pool[slot].send(request)
        except (OSError, ValueError):  # reset, broken pipe, EOF, garbled response
            status = CONNECTION_FAILED
        recorder.record(email, status, started, time.perf_counter_ns())


async def _drive(
    pool: list[Connection],
    jobs: Iterator[Job],
    address: Address,
    on_ack: Callable[[str], None] | None = None,
) -> Recorder:
    """Run all jobs through the pool, one closed-loop worker per connection."""
    recorder = Recorder(on_ack)
    workers = (_worker(pool, slot, jobs, recorder, address) for slot in range(len(pool)))
    await asyncio.gather(*workers)
    return recorder


def _percentile_ms(sorted_ns: list[int], fraction: float) -> float:
    """Nearest-rank percentile, in milliseconds."""
    if not sorted_ns:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_ns)))
    return sorted_ns[rank - 1] / 1e6


async def run_load(
    address: Address,
    requests: int,
    concurrency: int,
    warmup: int,
    token: str,
    on_start: Callable[[], None] = lambda: None,
    on_done: Callable[[float, int], None] = lambda wall, acked: None,
    on_ack: Callable[[str], None] | None = None,
) -> LoadResult:
    """Warm up, then measure ``requests`` requests over ``concurrency`` connections.

    ``on_ack`` is called with each acknowledged email (warmup included) as it is acknowledged.
    """
    host_header = f"{address[0]}:{address[1]}"
    pool = list(await asyncio.gather(*(Connection.open(*address) for _ in range(concurrency))))
    try:
        warm = await _drive(pool, build_jobs("w", warmup, token, host_header), address, on_ack)
        jobs = build_jobs("u", requests, token, host_header)
        gc.collect()
        gc.disable()
        on_start()
        cpu_start = time.process_time()
        start_ns = time.perf_counter_ns()
        measured = await _drive(pool, jobs, address, on_ack)
        now_ns = time.perf_counter_ns()
        last_ns = measured.last_response_ns or now_ns  # 0: not one measured response (aborted)
        last_wall = time.time() - (now_ns - last_ns) / 1e9
        client_cpu = time.process_time() - cpu_start
        on_done(last_wall, len(warm.acked) + len(measured.acked))
    finally:
        gc.enable()
        for connection in pool:
            connection.close()
    latencies = sorted(measured.latencies_ns)
    duration = max(0, last_ns - start_ns) / 1e9
    attempted = measured.attempted  # == requests unless the server went away
    return LoadResult(
        requests=requests,
        warmup=warmup,
        concurrency=concurrency,
        acked_emails=warm.acked + measured.acked,
        status_counts=dict(measured.statuses),
        p50_ms=_percentile_ms(latencies, 0.50),
        p99_ms=_percentile_ms(latencies, 0.99),
        mean_ms=sum(latencies) / len(latencies) / 1e6 if latencies else 0.0,
        max_ms=latencies[-1] / 1e6 if latencies else 0.0,
        duration_s=duration,
        rps=attempted / duration if duration > 0 else 0.0,
        last_response_wall=last_wall,
        client_cpu_s=client_cpu,
        failed=warm.statuses[CONNECTION_FAILED] + measured.statuses[CONNECTION_FAILED],
        unsent=requests - attempted,
    )


def _announce(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=256, help="counted, unmeasured requests")
    parser.add_argument("--token", default=secrets.token_hex(4), help="makes emails unique")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for the whole run")
    parser.add_argument("--out", type=Path, help="JSON result file (default: stdout)")
    parser.add_argument(
        "--acked-log",
        type=Path,
        help="append each acknowledged email to this file, one line each, as it is acknowledged",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        ack_log = AckLog(args.acked_log) if args.acked_log is not None else None
    except OSError as exc:
        print(f"loadgen failed: cannot open --acked-log: {exc!r}", file=sys.stderr)
        return 1
    load = run_load(
        (args.host, args.port),
        args.requests,
        args.concurrency,
        args.warmup,
        args.token,
        on_start=lambda: _announce("START"),
        on_done=lambda wall, acked: _announce(f"DONE {wall:.6f} {acked}"),
        on_ack=ack_log.append if ack_log is not None else None,
    )
    try:
        result = asyncio.run(asyncio.wait_for(load, args.timeout))
    except (OSError, TimeoutError) as exc:
        print(f"loadgen failed: {exc!r}", file=sys.stderr)
        return 1
    finally:
        if ack_log is not None:
            ack_log.close()
    emit_json(result.to_json(), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
