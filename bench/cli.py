"""``python -m bench``: parse options, run the rounds, print and save the results."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.chart import draw_chart
from bench.errors import HarnessError
from bench.kill import KillSettings
from bench.kill import main as kill_main
from bench.machine import machine_info
from bench.measure import RunResult
from bench.options import Options
from bench.paths import REPO_ROOT, RESULTS_DIR
from bench.report import (
    NOISY_OTHER_CPU,
    format_table,
    noisy_runs,
    progress_line,
    summarize,
    write_json,
)
from bench.runner import run_rounds
from bench.servers import SERVERS, select_servers

_FULL = {"rounds": 5, "requests": 20_000, "concurrency": 64}
_QUICK = {"rounds": 1, "requests": 2_000, "concurrency": 16}


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark real uvicorn servers in interleaved rounds.",
    )
    parser.add_argument("--rounds", type=_positive, help="default 5 (quick: 1)")
    parser.add_argument("--requests", type=_positive, help="measured per run; default 20000")
    parser.add_argument("--concurrency", type=_positive, help="connections; default 64")
    parser.add_argument("--warmup", type=int, help="counted warmup requests; default 4 x conns")
    parser.add_argument(
        "--servers",
        help="comma-separated, from: " + ", ".join(spec.name for spec in SERVERS),
    )
    parser.add_argument("--out", type=Path, help=f"results directory; default {RESULTS_DIR}")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 round of 2000 requests at concurrency 16, into a temporary directory",
    )
    parser.add_argument(
        "--kill",
        action="store_true",
        help="instead: SIGKILL guide, service and service-ack-write under load, and a redis"
        " worker right after a write, and count the acknowledged notifications missing from"
        " (or repeated in) the log (3 rounds; writes kill.json)",
    )
    return parser


def _kill_settings(args: argparse.Namespace) -> KillSettings:
    """``--kill`` takes --rounds, --requests, --concurrency, --servers and --out."""
    defaults = KillSettings()
    return KillSettings(
        rounds=args.rounds or defaults.rounds,
        requests=args.requests or defaults.requests,
        concurrency=args.concurrency or defaults.concurrency,
        servers=tuple(args.servers.split(",")) if args.servers else defaults.servers,
        out=args.out or defaults.out,
    )


def parse_options(argv: list[str] | None = None) -> Options:
    return _options(_parser().parse_args(argv))


def _options(args: argparse.Namespace) -> Options:
    preset = _QUICK if args.quick else _FULL
    concurrency = args.concurrency or preset["concurrency"]
    out = args.out
    if out is None:
        out = Path(tempfile.mkdtemp(prefix="bench-quick-")) if args.quick else RESULTS_DIR
    return Options(
        rounds=args.rounds or preset["rounds"],
        requests=args.requests or preset["requests"],
        concurrency=concurrency,
        warmup=args.warmup if args.warmup is not None else 4 * concurrency,
        servers=tuple(args.servers.split(",")) if args.servers else None,
        out=out,
        quick=args.quick,
    )


def _report(options: Options, runs: list[RunResult], elapsed_s: float) -> bool:
    """Print the table, write the JSON and the chart; return whether exactly-once held."""
    specs = [spec for spec in SERVERS if any(run.server == spec.name for run in runs)]
    summaries = summarize(specs, runs)
    print()
    print(format_table(summaries))
    noisy = noisy_runs(runs)
    if noisy:
        print(
            f"\nwarning: in {len(noisy)} of {len(runs)} runs other processes used over"
            f" {NOISY_OTHER_CPU:.0%} of a core (column 'other'): rerun on a quiet machine"
        )
    options.out.mkdir(parents=True, exist_ok=True)
    json_path = options.out / "latest.json"
    write_json(json_path, machine_info(), options.to_json(), summaries, runs, elapsed_s)
    print(f"\nresults: {json_path}")
    print(draw_chart(summaries, runs, options.out / "latest.png"))
    print(f"took {elapsed_s:.0f} s")
    return all(summary.exactly_once for summary in summaries)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.kill:
        return kill_main(_kill_settings(args))
    options = _options(args)
    try:
        specs = select_servers(options.servers, REPO_ROOT)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    names = ", ".join(spec.name for spec in specs)
    print(
        f"servers: {names}\n{options.rounds} round(s) x {options.requests:,} requests"
        f" over {options.concurrency} connections (+{options.warmup} warmup)"
    )
    work_dir = Path(tempfile.mkdtemp(prefix="bench-runs-"))
    keep_work_dir = False
    started = time.monotonic()
    try:
        runs = run_rounds(
            specs, options, work_dir, lambda run: print(progress_line(run, options.rounds))
        )
        if not _report(options, runs, time.monotonic() - started):
            keep_work_dir = True
            print(f"exactly-once check FAILED; runs kept in {work_dir}", file=sys.stderr)
            return 1
        return 0
    except HarnessError as exc:
        keep_work_dir = True
        print(f"harness failed: {exc}\nruns kept in {work_dir}", file=sys.stderr)
        return 1
    finally:
        if not keep_work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)
