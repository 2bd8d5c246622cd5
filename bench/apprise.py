"""``python -m bench.apprise``: how fast the service delivers through Apprise, against the
guide's way, with a receiver as slow as a distant one.

Fresh servers on loopback and one receiver (``bench.webhook_sink``: a bare asyncio HTTP server,
a thread of this process, answering 200 after ``--delay`` seconds, 0.2 by default) that Apprise
reaches through its generic ``json://`` scheme. N notifications posted through the closed-loop
load generator, notifications delivered per second from its first request until the receiver
has all N, for the service (``NOTIFY_APPRISE_URLS=bench=json://…``: its outbox, the channel's
own threads and concurrency window) and for the guide's way (``bench.apps.guide_apprise``: a
``BackgroundTasks`` task calling ``Apprise.notify``), in interleaved rounds; ratios round by
round, medians.

Results go to ``bench/results/apprise.json``. ``--quick``: one round of 200, to a temporary
directory.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bench.arrivals import Sink
from bench.email import (
    DeliveryRun,
    Say,
    deliver_once,
    delivery_summary,
    format_delivery,
    log_only_spec,
    results_head,
    run_and_save,
)
from bench.email_report import GUIDE, SERVICE, Goal, at_least, format_goals
from bench.options import results_dir
from bench.paths import RESULTS_DIR
from bench.servers import ServerSpec
from bench.webhook_sink import webhook_sink

UNIT = "notifications"
GOAL = 2.0
"""Delivered a second, at least this many times the guide's way's (as for webhooks)."""


def apprise_url(sink: Sink) -> str:
    """The receiver as Apprise reaches it: its generic JSON scheme."""
    return "json://" + sink.url.removeprefix("http://")


def service_spec(sink: Sink) -> ServerSpec:
    """The ``service`` row with one Apprise URL, to ``sink``."""
    service = log_only_spec()
    env = {**service.env, "NOTIFY_APPRISE_URLS": f"bench={apprise_url(sink)}"}
    return replace(service, name=SERVICE, env=env, default=False)


def guide_spec(sink: Sink) -> ServerSpec:
    env = {"BENCH_APPRISE_URL": apprise_url(sink)}
    return ServerSpec(GUIDE, "bench.apps.guide_apprise", env=env, writes_log=False, default=False)


def run_delivery(args: argparse.Namespace, work_dir: Path, say: Say) -> list[DeliveryRun]:
    """Interleaved rounds of the service and the guide's way, one receiver for both."""
    runs: list[DeliveryRun] = []
    with webhook_sink(args.delay) as sink:
        ways = [(SERVICE, service_spec(sink)), (GUIDE, guide_spec(sink))]
        for round_index in range(1, args.rounds + 1):
            for way, spec in ways:
                run_dir = work_dir / f"round{round_index}-{way}"
                result = deliver_once(
                    way, spec, sink, round_index, args.notifications, args.concurrency, run_dir
                )
                runs.append(result)
                say(
                    f"  round {round_index}/{args.rounds} {way:<8}"
                    f" {result.delivered:,}/{result.acked:,} {UNIT} in {result.deliver_s:.2f} s:"
                    f" {result.rate:,.0f}/s (API {result.api_rps or 0:,.0f} req/s)"
                )
    return runs


def run(args: argparse.Namespace, work_dir: Path, say: Say = print) -> tuple[dict[str, Any], bool]:
    """The JSON to save, and whether every run delivered all it acknowledged."""
    options = {
        key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()
    }
    data = results_head(options, say)
    say(
        f"Apprise delivery: {args.rounds} round(s) x {args.notifications:,} {UNIT} over"
        f" {args.concurrency} connections, receiver taking {args.delay:g} s: {SERVICE}, {GUIDE}"
    )
    runs = run_delivery(args, work_dir, say)
    summary = delivery_summary(runs, (SERVICE, GUIDE))
    data["delivery"] = {**summary, "runs": [asdict(run) for run in runs]}
    goals: list[Goal] = [
        at_least(f"delivery, {UNIT}/s vs the guide's way", summary["service_vs_guide"], GOAL)
    ]
    data["goals"] = [goal.to_json() for goal in goals]
    data["tables"] = [format_delivery(summary, args.notifications, UNIT), format_goals(goals)]
    return data, all(run.complete for run in runs)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.apprise",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--notifications", type=int, default=400, help="per run (400)")
    parser.add_argument("--rounds", type=int, default=3, help="(3)")
    parser.add_argument("--concurrency", type=int, default=16, help="connections (16)")
    parser.add_argument("--delay", type=float, default=0.2, help="the receiver's seconds (0.2)")
    parser.add_argument("--out", type=Path, help=f"results directory ({RESULTS_DIR})")
    parser.add_argument("--quick", action="store_true", help="one round of 200, a temp dir")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.notifications = 1, 200
    args.out = results_dir(args.out, quick=args.quick, name="apprise")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_and_save(
        lambda work_dir: run(args, work_dir), args.out / "apprise.json", "bench-apprise-runs-"
    )


if __name__ == "__main__":
    raise SystemExit(main())
