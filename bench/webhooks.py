"""``python -m bench.webhooks``: how fast the service delivers webhooks, and what a slow
receiver costs the API.

Two measurements, each with fresh servers on loopback and a receiver (``bench.webhook_sink``: a
bare asyncio HTTP server, a thread of this process) that counts every request, records its
arrival and answers 200 without verifying anything:

1. **Delivery**: N notifications posted through the closed-loop load generator, webhooks per
   second from its first request until the receiver has all N, for the service (its outbox and
   kept-alive ``httpx.AsyncClient``, ``NOTIFY_WEBHOOK_URL`` and a ``whsec_`` secret set) and for
   the guide's way (``bench.apps.guide_webhook``: a ``BackgroundTasks`` task calling
   ``httpx.post``, a new connection each), interleaved; ratios round by round.
2. **API**: req/s of the ``service`` server with webhooks off (``log-only``) and with
   ``NOTIFY_WEBHOOK_URL`` pointing to a receiver taking 200 ms a request (``webhook-slow``), in
   interleaved rounds through ``bench.measure.run_once`` (as ``python -m bench.email`` does);
   ratios round by round.

Results go to ``bench/results/webhooks.json``; the table marks each goal met or NOT met.
"""

from __future__ import annotations

import argparse
import base64
import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench.arrivals import Sink
from bench.email import (
    ApiRun,
    DeliveryRun,
    RoundOptions,
    Say,
    api_summary,
    deliver_once,
    delivery_summary,
    format_api,
    format_delivery,
    log_only_spec,
    results_head,
    run_and_save,
    run_api_rows,
)
from bench.email_report import (
    API_GOAL,
    DELIVERY_GOAL,
    GUIDE,
    LOG_ONLY,
    SERVICE,
    Goal,
    at_least,
    format_goals,
)
from bench.options import chosen_parts, results_dir
from bench.paths import RESULTS_DIR
from bench.servers import ServerSpec
from bench.webhook_sink import webhook_sink

WEBHOOK_SLOW = "webhook-slow"
SLOW_DELAY_S = 0.2
PARTS = ("delivery", "api")
UNIT = "webhooks"


@dataclass(frozen=True)
class WebhookOptions(RoundOptions):
    delivery_webhooks: int = 1_000
    parts: tuple[str, ...] = PARTS


QUICK = WebhookOptions(
    delivery_rounds=1,
    delivery_webhooks=300,
    api_rounds=1,
    api_requests=2_000,
    concurrency=16,
    warmup=64,
)


def new_secret() -> str:
    """A fresh ``NOTIFY_WEBHOOK_SECRET``: ``whsec_`` and the base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def webhook_spec(name: str, sink: Sink, secret: str) -> ServerSpec:
    """The ``service`` row with webhooks on, to ``sink``."""
    service = log_only_spec()
    env = {**service.env, "NOTIFY_WEBHOOK_URL": sink.url, "NOTIFY_WEBHOOK_SECRET": secret}
    return replace(service, name=name, env=env, default=False)


def guide_spec(sink: Sink, secret: str) -> ServerSpec:
    env = {"BENCH_WEBHOOK_URL": sink.url, "BENCH_WEBHOOK_SECRET": secret}
    return ServerSpec(GUIDE, "bench.apps.guide_webhook", env=env, writes_log=False, default=False)


def run_delivery(
    options: WebhookOptions, secret: str, work_dir: Path, say: Say
) -> list[DeliveryRun]:
    """Interleaved rounds of the service and the guide's way, one receiver for both."""
    runs: list[DeliveryRun] = []
    with webhook_sink() as sink:
        ways = [(SERVICE, webhook_spec(SERVICE, sink, secret)), (GUIDE, guide_spec(sink, secret))]
        for round_index in range(1, options.delivery_rounds + 1):
            for way, spec in ways:
                run_dir = work_dir / f"delivery-round{round_index}-{way}"
                count, concurrency = options.delivery_webhooks, options.concurrency
                result = deliver_once(way, spec, sink, round_index, count, concurrency, run_dir)
                runs.append(result)
                say(
                    f"  delivery round {round_index}/{options.delivery_rounds} {way:<8}"
                    f" {result.delivered:,}/{result.acked:,} {UNIT} in {result.deliver_s:.2f} s:"
                    f" {result.rate:,.0f}/s (API {result.api_rps or 0:,.0f} req/s)"
                )
    return runs


def run_api(options: WebhookOptions, secret: str, work_dir: Path, say: Say) -> list[ApiRun]:
    """Interleaved rounds of log-only and webhook-slow."""
    load = options.api_load()
    with webhook_sink(SLOW_DELAY_S) as slow:
        rows: list[tuple[str, ServerSpec, Sink | None]] = [
            (LOG_ONLY, log_only_spec(), None),
            (WEBHOOK_SLOW, webhook_spec(WEBHOOK_SLOW, slow, secret), slow),
        ]
        return run_api_rows(rows, load, work_dir, say, unit=UNIT)


def goals(delivery: float | None, api_slow: float | None) -> list[Goal]:
    return [
        at_least("delivery, webhooks/s vs the guide's way", delivery, DELIVERY_GOAL),
        at_least("API, receiver taking 200 ms, vs log-only", api_slow, API_GOAL),
    ]


def parse_options(argv: Sequence[str] | None = None) -> WebhookOptions:
    defaults = WebhookOptions()
    parser = argparse.ArgumentParser(
        prog="python -m bench.webhooks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--parts", default=",".join(PARTS), help=f"from: {', '.join(PARTS)}")
    parser.add_argument(
        "--webhooks", type=int, help=f"per delivery run ({defaults.delivery_webhooks})"
    )
    parser.add_argument("--delivery-rounds", type=int, help=f"({defaults.delivery_rounds})")
    parser.add_argument("--rounds", type=int, help=f"API rounds ({defaults.api_rounds})")
    parser.add_argument("--requests", type=int, help=f"per API run ({defaults.api_requests})")
    parser.add_argument("--concurrency", type=int, help=f"connections ({defaults.concurrency})")
    parser.add_argument("--out", type=Path, help=f"results directory ({RESULTS_DIR})")
    parser.add_argument(
        "--quick", action="store_true", help="one short round of each, to a temp dir"
    )
    args = parser.parse_args(argv)
    parts = chosen_parts(parser, args.parts, PARTS)
    out = results_dir(args.out, quick=args.quick, name="webhooks")
    chosen = {
        "delivery_webhooks": args.webhooks,
        "delivery_rounds": args.delivery_rounds,
        "api_rounds": args.rounds,
        "api_requests": args.requests,
        "concurrency": args.concurrency,
        "warmup": 4 * args.concurrency if args.concurrency else None,
    }
    base = QUICK if args.quick else defaults
    overrides = {key: value for key, value in chosen.items() if value is not None}
    return replace(base, **overrides, parts=parts, out=out)


def run(options: WebhookOptions, work_dir: Path, say: Say = print) -> tuple[dict[str, Any], bool]:
    """Run the chosen parts; the JSON to save, and whether every log held each ack once."""
    data = results_head(options.to_json(), say)
    secret = new_secret()
    tables: list[str] = []
    delivery = api_slow = None
    once = True
    if "delivery" in options.parts:
        say(
            f"delivery: {options.delivery_rounds} round(s) x {options.delivery_webhooks:,}"
            f" {UNIT} over {options.concurrency} connections: {SERVICE}, {GUIDE}"
        )
        delivery_runs = run_delivery(options, secret, work_dir, say)
        summary = delivery_summary(delivery_runs, (SERVICE, GUIDE))
        data["delivery"] = {**summary, "runs": [asdict(run) for run in delivery_runs]}
        delivery = summary["service_vs_guide"]
        tables.append(format_delivery(summary, options.delivery_webhooks, UNIT))
    if "api" in options.parts:
        say(
            f"API: {options.api_rounds} round(s) x {options.api_requests:,} requests over"
            f" {options.concurrency} connections: {LOG_ONLY}, {WEBHOOK_SLOW}"
        )
        api_runs = run_api(options, secret, work_dir, say)
        rows = api_summary(api_runs, (LOG_ONLY, WEBHOOK_SLOW))
        data["api"] = {"rows": rows, "runs": [api.to_json() for api in api_runs]}
        api_slow = rows[WEBHOOK_SLOW]["rps_vs_log_only"]
        once = all(row["exactly_once"] for row in rows.values())
        tables.append(format_api(rows, UNIT, "receiver"))
    listed = goals(delivery, api_slow)
    data["goals"] = [goal.to_json() for goal in listed]
    tables.append(format_goals(listed))
    data["tables"] = tables
    return data, once


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    return run_and_save(
        lambda work_dir: run(options, work_dir),
        options.out / "webhooks.json",
        "bench-webhooks-runs-",
    )


if __name__ == "__main__":
    raise SystemExit(main())
