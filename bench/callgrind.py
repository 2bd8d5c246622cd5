"""``python -m bench.callgrind``: instructions per request, which do not move between runs.

Wall-clock ratios on a shared 2-vCPU VM move by ±10 % from run to run, too much to see a 3 %
change. This runs each server under valgrind's callgrind instead: warm up, zero the counters,
send ``--requests`` requests at concurrency 64, dump the counters and divide. The count covers
every thread of the server (the writer's too) and is the same on every run to within ~0.5 %;
the event loop's thread (the first) is also counted alone, since work on the other threads
(the log's writer, the ledger's and the outbox's SQLite) costs the loop only what it takes of
the machine's CPU.
It is slow (a server under valgrind runs ~50 times slower: about a minute per server) and needs
``valgrind`` (``apt-get install valgrind``; ``make bench-cg`` installs it when missing).

The service-email row is the service with email on and ``NOTIFY_DELIVERY=external`` (what
taking each notification's delivery into the outbox costs, nothing sending beside it: under
valgrind a dispatcher's time-paced sends would count many times over). The redis row counts
its API process only, with a fresh ``redis-server`` beside it and no
worker (the stream keeps the lines): what the queue backend costs the server that answers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.loadgen import run_load
from bench.paths import REPO_ROOT, RESULTS_DIR, save_json
from bench.process import HOST, running_server
from bench.redis_stack import running_redis
from bench.servers import ServerSpec, select_servers

DEFAULT_SERVERS = (
    "bare",
    "same-signature",
    "service",
    "service-ack-write",
    "service-email",
    "redis",
)
CONCURRENCY = 64
READY_TIMEOUT_S = 180.0
"""Python, uvicorn and the app start under valgrind in 20-60 s here."""


def total_instructions(dump: str) -> int:
    """The ``summary:`` (or ``totals:``) count of instructions in a callgrind output file."""
    for line in dump.splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise ValueError("no summary or totals line: not a callgrind output file")


def thread_totals(dumps: Sequence[Path]) -> dict[int, int]:
    """Instructions by thread number, from the files of one dump made with
    ``--separate-threads=yes`` (``callgrind.out.<pid>.<part>-<thread>``); thread 1 is the main
    thread."""
    return {
        int(path.name.rsplit("-", 1)[1]): total_instructions(path.read_text()) for path in dumps
    }


def _control(pid: int, flag: str) -> None:
    subprocess.run(["callgrind_control", flag, str(pid)], check=True, capture_output=True)


def measure(spec: ServerSpec, requests: int, warmup: int, work: Path) -> tuple[float, float]:
    """Instructions per request of ``spec``'s server (for the redis row, its API process): of
    all its threads, and of its main thread (the event loop's)."""
    run_dir = work / spec.name
    run_dir.mkdir()
    valgrind = [
        *("valgrind", "--tool=callgrind", "--dump-instr=no", "--collect-jumps=no"),
        "--separate-threads=yes",
        f"--callgrind-out-file={run_dir}/callgrind.out.%p",
    ]
    with contextlib.ExitStack() as stack:
        redis_url = ""
        if spec.redis:
            redis_url = stack.enter_context(running_redis(run_dir, READY_TIMEOUT_S)).url
        # uvicorn's defaults, as in make bench; a fixed hash seed so that counts repeat.
        server = stack.enter_context(
            running_server(
                spec,
                run_dir,
                REPO_ROOT,
                redis_url,
                wrapper=valgrind,
                extra_env={"PYTHONHASHSEED": "0"},
            )
        )
        server.wait_ready(READY_TIMEOUT_S)
        address = (HOST, server.port)
        asyncio.run(run_load(address, warmup, CONCURRENCY, 0, "warm"))
        _control(server.popen.pid, "-z")
        result = asyncio.run(run_load(address, requests, CONCURRENCY, 0, "measured"))
        if result.status_counts != {200: requests}:
            raise RuntimeError(f"{spec.name}: not every request got 200: {result.status_counts}")
        _control(server.popen.pid, "-d")
        pid = server.popen.pid
    threads = thread_totals(sorted(run_dir.glob(f"callgrind.out.{pid}.1-*")))
    return sum(threads.values()) / requests, threads[1] / requests


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.callgrind", description=__doc__)
    parser.add_argument("--servers", default=",".join(DEFAULT_SERVERS))
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        parser.error("valgrind is not installed (`make bench-cg` installs it)")
    specs = select_servers(args.servers.split(","), REPO_ROOT)
    counts: dict[str, float] = {}
    main_thread: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-cg-") as tmp:
        for spec in specs:
            counts[spec.name], main_thread[spec.name] = measure(
                spec, args.requests, args.warmup, Path(tmp)
            )
            print(
                f"{spec.name:<18} {counts[spec.name]:>10,.0f} instructions/request"
                f" ({main_thread[spec.name]:,.0f} on the event loop's thread)",
                flush=True,
            )
    pairs = [(name, base) for base in ("bare", "same-signature") for name in counts]
    pairs += [("service-ack-write", "service"), ("service-email", "service"), ("redis", "service")]
    for name, base in pairs:
        if name not in (base, "bare") and name in counts and base in counts:
            # Fewer instructions a request is more requests a second: base / name.
            print(
                f"{name} / {base}: {counts[base] / counts[name]:.3f} (by instructions;"
                f" {main_thread[base] / main_thread[name]:.3f} on the event loop's thread)"
            )
    report = {
        "requests": args.requests,
        "warmup": args.warmup,
        "per_request": counts,
        "per_request_main_thread": main_thread,
    }
    save_json(args.out / "callgrind.json", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
