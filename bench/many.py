"""``python -m bench.many``: notifications accepted per second through ``POST /notifications``
(many recipients a request) against the guide's endpoint (one a request), side by side
(issue 25: at least 10x).

For each configuration (``log``: the log only; ``email``: email on too, so every notification
also enters the SQLite outbox; ``NOTIFY_DELIVERY=external`` and nothing delivering, so the
figure is the API's), each round starts a fresh ``uvicorn service.main:app`` (access log on,
as ``make bench``) and, against it, in turn:

1. **one a request**: ``bench.loadgen`` in its own process, ``--requests`` POSTs to
   ``/send-notification/{email}`` at 64 keep-alive connections (the figure ``make bench``
   reports for the service);
2. **many a request**: ``--batches`` POSTs of ``--recipients`` addresses each to
   ``/notifications``, at 4 connections, from this process (httpx; the bodies are encoded
   before the clock starts).

The rate is notifications acknowledged (200) per second of the phase; each phase then waits
until the log holds every line it was acknowledged (so the next one starts on a quiet server),
and that time is reported too. The order of the two phases alternates between rounds; the
figures are medians over rounds.

Results: ``bench/results/many.json``. ``--quick``: 1 round, smaller counts, a temporary
directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.machine import machine_info
from bench.options import results_dir
from bench.paths import REPO_ROOT, save_json
from bench.process import HOST, free_port, spawn, tail_text

GOAL_RATIO = 10.0
CONFIGS: dict[str, dict[str, str]] = {
    "log": {},
    "email": {
        # Nothing listens there and nothing delivers here: the outbox only fills.
        "NOTIFY_SMTP_URL": "smtp://127.0.0.1:9",
        "NOTIFY_SMTP_FROM": "bench@example.com",
        "NOTIFY_DELIVERY": "external",
        "NOTIFY_OUTBOX_MAX": "10000000",
    },
}


def _env(directory: Path, config: dict[str, str]) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("NOTIFY_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env |= {
        "NOTIFY_LOG_PATH": str(directory / "log.txt"),
        "NOTIFY_MAX_RECIPIENTS": "100000",
        "NOTIFY_QUEUE_SIZE": "1000000",
        **config,
    }
    return env


def _lines(path: Path) -> int:
    try:
        with path.open("rb") as log:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: log.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


async def _until_written(path: Path, count: int, within: float = 120.0) -> float:
    """Seconds until the log holds ``count`` lines."""
    started = time.perf_counter()
    while await asyncio.to_thread(_lines, path) < count:
        if time.perf_counter() - started > within:
            raise RuntimeError(f"the log did not reach {count} lines within {within:g} s")
        await asyncio.sleep(0.02)
    return time.perf_counter() - started


async def _one_a_request(port: int, requests: int, directory: Path) -> dict[str, Any]:
    out = directory / "loadgen.json"
    command = [sys.executable, "-m", "bench.loadgen", "--port", str(port)]
    command += ["--requests", str(requests), "--concurrency", "64", "--out", str(out)]
    done = await asyncio.to_thread(
        subprocess.run, command, cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench.loadgen failed: {done.stderr[-2000:]}")
    result = json.loads(out.read_text())
    accepted = result["status_counts"].get("200", 0)
    return {
        "requests": result["requests"],
        "accepted": accepted,
        "per_second": result["rps"] * accepted / max(1, result["requests"] + result["warmup"]),
        "p99_ms": result["p99_ms"],
        "acknowledged_total": result["requests"] + result["warmup"] - result["failed"],
    }


async def _many_a_request(
    port: int, batches: int, recipients: int, round_index: int
) -> dict[str, Any]:
    bodies = [
        json.dumps(
            {
                "to": [f"r{round_index}-{b}-{n}@example.com" for n in range(recipients)],
                "message": "bench",
            }
        ).encode()
        for b in range(batches)
    ]
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(
        base_url=f"http://{HOST}:{port}", limits=limits, timeout=120, trust_env=False
    ) as client:
        warm = await client.post("/notifications", content=bodies[0], headers=headers)
        warm.raise_for_status()
        queue = list(bodies[1:])
        latencies: list[float] = []
        statuses: dict[int, int] = {}

        async def worker() -> None:
            while queue:
                body = queue.pop()
                sent = time.perf_counter()
                response = await client.post("/notifications", content=body, headers=headers)
                latencies.append(time.perf_counter() - sent)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(4)))
        elapsed = time.perf_counter() - started
    accepted = statuses.get(200, 0) * recipients
    return {
        "requests": batches - 1,
        "recipients_each": recipients,
        "accepted": accepted,
        "statuses": {str(status): count for status, count in statuses.items()},
        "per_second": accepted / elapsed,
        "request_p50_ms": 1000 * statistics.median(latencies),
        "acknowledged_total": accepted + recipients,
    }


async def _round(
    config: str, round_index: int, args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    directory = work / f"{config}-{round_index}"
    directory.mkdir()
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "service.main:app", "--host", HOST]
    command += ["--port", str(port)]
    server = spawn(command, directory, _env(directory, CONFIGS[config]), directory / "server.txt")
    log = directory / "log.txt"
    try:
        async with httpx.AsyncClient(trust_env=False) as probe:
            for _ in range(200):
                try:
                    await probe.get(f"http://{HOST}:{port}/healthz")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            else:
                raise RuntimeError(f"server did not start: {tail_text(directory / 'server.txt')}")
        phases = ["single", "many"] if round_index % 2 == 0 else ["many", "single"]
        results: dict[str, Any] = {}
        written = 0
        for phase in phases:
            if phase == "single":
                result = await _one_a_request(port, args.requests, directory)
            else:
                result = await _many_a_request(port, args.batches, args.recipients, round_index)
            written += result["acknowledged_total"]
            result["all_written_after_s"] = await _until_written(log, written)
            results[phase] = result
        results["log_lines"] = await asyncio.to_thread(_lines, log)
        results["acknowledged"] = written
        return results
    finally:
        server.terminate()
        await asyncio.to_thread(server.wait, 30)


def _summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    single = statistics.median(r["single"]["per_second"] for r in rounds)
    many = statistics.median(r["many"]["per_second"] for r in rounds)
    ratios = [r["many"]["per_second"] / r["single"]["per_second"] for r in rounds]
    return {
        "single_per_second": single,
        "many_per_second": many,
        "ratio_median": statistics.median(ratios),
        "ratios": ratios,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine_info(), "options": vars(args) | {"out": None}}
    with tempfile.TemporaryDirectory(prefix="bench-many-") as work:
        for config in args.configs:
            rounds = []
            for round_index in range(args.rounds):
                outcome = await _round(config, round_index, args, Path(work))
                rounds.append(outcome)
                print(
                    f"{config} round {round_index + 1}: one a request "
                    f"{outcome['single']['per_second']:,.0f}/s, {args.recipients} a request "
                    f"{outcome['many']['per_second']:,.0f}/s "
                    f"(written {outcome['many']['all_written_after_s']:.2f} s after)"
                )
            summary = _summary(rounds)
            verdict = "met" if summary["ratio_median"] >= GOAL_RATIO else "NOT met"
            summary["verdict"] = verdict
            print(
                f"{config}: {summary['many_per_second']:,.0f} against "
                f"{summary['single_per_second']:,.0f} notifications/s = "
                f"{summary['ratio_median']:.1f}x (goal {GOAL_RATIO:g}x: {verdict})"
            )
            results[config] = {"rounds": rounds, "summary": summary}
    return results


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.many", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=20_000, help="one-a-request POSTs")
    parser.add_argument("--batches", type=int, default=101, help="many-a-request POSTs")
    parser.add_argument("--recipients", type=int, default=1000, help="recipients a POST")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--quick", action="store_true", help="1 round, small counts, a temp dir")
    parser.add_argument("--out", type=Path, help="results directory; default bench/results")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.quick:
        args.rounds, args.requests, args.batches, args.recipients = 1, 2000, 11, 500
    out = results_dir(args.out, quick=args.quick, name="many")
    results = asyncio.run(run(args))
    save_json(out / "many.json", results)
    print(f"results: {out / 'many.json'}")
    met = all(results[config]["summary"]["verdict"] == "met" for config in args.configs)
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
