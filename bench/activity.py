"""``python -m bench.activity``: a recipient's lookup in the activity log with 1,000,000
notifications stored (issue 24: p99 < 10 ms; an index lookup, not a scan).

1. **Fill**, through the service's own store classes: ``SqliteLedger.accepted`` for each of
   ``--notifications`` notifications (``--recipients`` addresses, a few each), written by the
   ledger's own batches, and ``SqliteOutbox.add`` for each one's email delivery (the outbox
   the ledger attaches), in a directory of their own.
2. **Serve** them: ``uvicorn service.main:app`` with those files (``NOTIFY_DELIVERY=external``,
   so nothing is sent, and ``NOTIFY_STATUS_MAX_ENTRIES`` above the count, so nothing expires).
3. **Look up**: ``--lookups`` requests ``GET /notifications?email=<a random recipient>`` over
   one keep-alive connection, one at a time, through the real HTTP endpoint: the latency is
   the client's, from request to the whole response (uvicorn, the route, the two indexed
   reads, the JSON). The same lookups are then timed on the store method alone
   (``SqliteLedger.activity``, in this process), to show what of it is SQLite.

Results: ``bench/results/activity.json``. ``--quick``: 20,000 notifications, into a temporary
directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.machine import machine_info
from bench.options import results_dir
from bench.paths import REPO_ROOT, save_json
from bench.process import HOST, free_port, spawn, tail_text
from service.ledger.sqlite import SqliteLedger
from service.outbox.base import notification_line
from service.outbox.sqlite import SqliteOutbox
from service.status import ActivityQuery, StatusStore

GOAL_P99_MS = 10.0
_CHUNK = 20_000
"""Notifications handed to the ledger (and the outbox) at a time while filling."""


def _ids(count: int, seed: int) -> Iterator[str]:
    """UUID4-shaped ids (as ``service.ids`` makes them), reproducibly."""
    rng = random.Random(seed)
    for _ in range(count):
        bits = rng.getrandbits(128)
        text = f"{bits:032x}"
        yield f"{text[:8]}-{text[8:12]}-4{text[13:16]}-a{text[17:20]}-{text[20:32]}"


def recipient(number: int) -> str:
    return f"user{number}@example.com"


async def fill(directory: Path, notifications: int, recipients: int) -> dict[str, float]:
    """The ledger and the outbox of ``notifications`` notifications to ``recipients``
    addresses (each notification to a random one), accepted over the last hour."""
    outbox = SqliteOutbox(directory / "log.txt.outbox", lease_seconds=60)
    await outbox.open()
    ledger = SqliteLedger(
        directory / "log.txt.ledger",
        local=StatusStore(limit=1, ttl=3600.0),
        status_ttl=7 * 86400.0,
        idempotency_ttl=3600.0,
        max_entries=notifications + 1,
        outbox=directory / "log.txt.outbox",
    )
    await ledger.open()
    rng = random.Random(1)
    started = time.perf_counter()
    now = time.time()
    ids = _ids(notifications, seed=2)
    try:
        for first in range(0, notifications, _CHUNK):
            lines = []
            for number in range(first, min(first + _CHUNK, notifications)):
                notification_id = next(ids)
                email = recipient(rng.randrange(recipients))
                at = now - 3600.0 + 3600.0 * number / notifications
                ledger.accepted(notification_id, at, email)
                lines.append(notification_line(notification_id, email, "hi", None, at))
            await outbox.add(lines, ["email"])  # meanwhile the ledger's batches take them
            print(f"\r  filled {min(first + _CHUNK, notifications):,}", end="", flush=True)
    finally:
        await ledger.close()
        await outbox.close()
    print()
    seconds = time.perf_counter() - started
    sizes = await asyncio.to_thread(
        lambda: {path.name: path.stat().st_size for path in directory.iterdir()}
    )
    return {
        "seconds": round(seconds, 1),
        "per_s": round(notifications / seconds),
        "ledger_mb": round(sizes.get("log.txt.ledger", 0) / 1e6, 1),
        "outbox_mb": round(sizes.get("log.txt.outbox", 0) / 1e6, 1),
    }


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(share: float) -> float:
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]

    return {
        "p50_ms": round(at(0.50) * 1000, 2),
        "p90_ms": round(at(0.90) * 1000, 2),
        "p99_ms": round(at(0.99) * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 2),
    }


def _server_env(directory: Path, notifications: int) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("NOTIFY_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env |= {
        "NOTIFY_LOG_PATH": str(directory / "log.txt"),
        "NOTIFY_STATUS_TTL": str(7 * 86400),
        "NOTIFY_STATUS_MAX_ENTRIES": str(notifications + 1),
        "NOTIFY_SMTP_URL": "smtp://127.0.0.1:9",
        "NOTIFY_SMTP_FROM": "bench@example.com",
        "NOTIFY_DELIVERY": "external",
        "NOTIFY_OUTBOX_MAX": str(2 * notifications),
        "NOTIFY_LOG_LEVEL": "warning",
    }
    return env


async def _wait_listening(port: int) -> None:
    """Until the port takes a connection (bound it with ``asyncio.timeout``)."""
    while True:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(HOST, port)
            writer.close()
            return
        await asyncio.sleep(0.05)


async def look_up_over_http(
    directory: Path, notifications: int, emails: list[str]
) -> dict[str, Any]:
    """``GET /notifications?email=…`` for each of ``emails``, one at a time, on one
    keep-alive connection to a real uvicorn serving the filled files."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "service.main:app", "--host", HOST]
    command += ["--port", str(port), "--no-access-log"]
    output = directory / "server.out"
    server = spawn(command, directory, _server_env(directory, notifications), output)
    try:
        async with asyncio.timeout(60):
            await _wait_listening(port)
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(
            base_url=f"http://{HOST}:{port}", limits=limits, trust_env=False, timeout=30
        ) as client:
            for email in emails[:50]:  # warm: the connection, the pages SQLite reads
                (await client.get("/notifications", params={"email": email})).raise_for_status()
            samples, found = [], 0
            for email in emails:
                started = time.perf_counter()
                response = await client.get("/notifications", params={"email": email})
                samples.append(time.perf_counter() - started)
                response.raise_for_status()
                found += len(response.json()["items"])
    except BaseException:
        print(tail_text(output), file=sys.stderr)
        raise
    finally:
        with contextlib.suppress(ProcessLookupError):
            server.terminate()
        await asyncio.to_thread(server.wait, 30)
    return {"lookups": len(emails), "items_per_lookup": round(found / len(emails), 2)} | (
        _percentiles(samples)
    )


async def look_up_in_the_store(directory: Path, emails: list[str]) -> dict[str, Any]:
    """The same lookups on ``SqliteLedger.activity`` (no HTTP), in this process."""
    ledger = SqliteLedger(
        directory / "log.txt.ledger",
        local=StatusStore(limit=1, ttl=3600.0),
        status_ttl=7 * 86400.0,
        idempotency_ttl=3600.0,
        max_entries=10**9,
        outbox=directory / "log.txt.outbox",
    )
    await ledger.open()
    try:
        for email in emails[:50]:
            await ledger.activity(ActivityQuery(email=email))
        samples = []
        for email in emails:
            started = time.perf_counter()
            await ledger.activity(ActivityQuery(email=email))
            samples.append(time.perf_counter() - started)
    finally:
        await ledger.close()
    return {"lookups": len(emails)} | _percentiles(samples)


async def run(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-activity-") as work:
        directory = Path(work)
        print(f"filling {args.notifications:,} notifications to {args.recipients:,} recipients")
        filled = await fill(directory, args.notifications, args.recipients)
        print(f"  {filled}")
        rng = random.Random(3)
        emails = [recipient(rng.randrange(args.recipients)) for _ in range(args.lookups)]
        http = await look_up_over_http(directory, args.notifications, emails)
        print(f"HTTP GET /notifications?email=: {http}")
        store = await look_up_in_the_store(directory, emails)
        print(f"SqliteLedger.activity:          {store}")
    verdict = "met" if http["p99_ms"] < GOAL_P99_MS else "NOT met"
    print(f"goal: p99 < {GOAL_P99_MS:g} ms over HTTP with {args.notifications:,} stored: {verdict}")
    return {
        "machine": machine_info(),
        "notifications": args.notifications,
        "recipients": args.recipients,
        "fill": filled,
        "http": http,
        "store": store,
        "goal": {"p99_ms_below": GOAL_P99_MS, "verdict": verdict},
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.activity",
        description="A recipient's lookup in the activity log with many notifications stored.",
    )
    parser.add_argument("--notifications", type=int, default=1_000_000)
    parser.add_argument("--recipients", type=int, default=200_000)
    parser.add_argument("--lookups", type=int, default=2_000)
    parser.add_argument("--quick", action="store_true", help="20,000 notifications, a temp dir")
    parser.add_argument("--out", type=Path, help="results directory; default bench/results")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.quick:
        args.notifications, args.recipients, args.lookups = 20_000, 4_000, 300
    out = results_dir(args.out, quick=args.quick, name="activity")
    results = asyncio.run(run(args, out))
    save_json(out / "activity.json", results)
    print(f"results: {out / 'activity.json'}")
    return 0 if results["goal"]["verdict"] == "met" else 1


if __name__ == "__main__":
    raise SystemExit(main())
