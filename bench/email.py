"""``python -m bench.email``: what sending email costs the API, and how fast it delivers.

Three measurements, each with fresh servers on loopback and an SMTP server (aiosmtpd, a thread
of this process: ``bench.smtp_sink``) that records every message's arrival:

1. **API**: req/s of the ``service`` server (``uvicorn service.main:app``, as ``python -m
   bench`` runs it) with email off (``log-only``), with ``NOTIFY_SMTP_URL`` pointing to a
   server that answers at once (``email-fast``) and to one taking 200 ms a message
   (``email-slow``), in interleaved rounds through ``bench.measure.run_once`` (closed-loop
   load generator process, log checked exactly once). Ratios are taken round by round.
2. **Delivery**: N notifications posted through the closed-loop load generator, emails per
   second from its first request until the SMTP server has all N, for the service and for the
   guide's way (``bench.apps.guide_email``: a ``BackgroundTasks`` task sending with
   ``smtplib``, one connection per email), interleaved.
3. **Latency**: open-loop load at 500 requests/s (``bench.openloop``, its own process) with
   the fast server; per notification, from the client's receipt of the 200 to the SMTP
   server's receipt of the message with that ``X-Notification-Id``.

Results go to ``bench/results/email.json``; the table marks each goal met or NOT met.
"""

from __future__ import annotations

import argparse
import json
import math
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from statistics import median
from typing import Any

from bench.arrivals import Sink, wait_for_arrivals
from bench.cpu import MachineCpu
from bench.email_report import (
    CEILING,
    EMAIL_FAST,
    EMAIL_SLOW,
    GUIDE,
    LOG_ONLY,
    SERVICE,
    Goal,
    Matched,
    delivery_rate,
    format_goals,
    format_rows,
    goals,
    match_latencies,
    median_or_none,
    paired_ratios,
    percentile,
)
from bench.errors import HarnessError
from bench.loadgen import LoadResult
from bench.machine import machine_info
from bench.measure import RunResult, run_once
from bench.openloop import OpenLoopResult
from bench.options import Options, results_dir
from bench.paths import REPO_ROOT, RESULTS_DIR, save_json
from bench.process import HOST, running_server, tail_text
from bench.report import NOISY_OTHER_CPU
from bench.servers import SERVERS, ServerSpec
from bench.smtp_sink import SmtpSink, smtp_sink
from config.settings import Settings

SENDER = "bench@example.com"
SLOW_DELAY_S = 0.2
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
DELIVERY_LIMIT_S = 60.0
PARTS = ("api", "delivery", "latency")
POOL_SIZE: int = Settings.model_fields["smtp_connections"].default
"""The service's default number of SMTP connections; the ceiling uses as many."""
Say = Callable[[str], None]


@dataclass(frozen=True)
class RoundOptions:
    """What the delivery benchmarks (email, webhooks) share: the API rows' load and rounds,
    the delivery rounds, the parts to run and where the results go."""

    api_rounds: int = 5
    api_requests: int = 20_000
    """As ``python -m bench``'s rounds: at 10,000 (runs of 1.5 s) single rounds ranged from
    0.70 to 1.00 of log-only."""
    concurrency: int = 64
    warmup: int = 256
    delivery_rounds: int = 3
    parts: tuple[str, ...] = ()
    out: Path = RESULTS_DIR

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["out"] = str(self.out)
        data["parts"] = list(self.parts)
        return data

    def api_load(self) -> Options:
        """The closed-loop load of the API rows, as ``run_once`` takes it."""
        return Options(
            rounds=self.api_rounds,
            requests=self.api_requests,
            concurrency=self.concurrency,
            warmup=self.warmup,
            servers=None,
            out=self.out,
            quick=False,
        )


@dataclass(frozen=True)
class EmailOptions(RoundOptions):
    delivery_rounds: int = 5
    """The guide's way swings between runs (454-670 emails/s on one machine in one day):
    five rounds' median ratio, not three."""
    delivery_emails: int = 2_000
    latency_rounds: int = 3
    latency_rate: float = 500.0
    latency_seconds: float = 4.0
    parts: tuple[str, ...] = PARTS


QUICK = EmailOptions(
    api_rounds=1,
    api_requests=2_000,
    concurrency=16,
    warmup=64,
    delivery_rounds=1,
    delivery_emails=300,
    latency_rounds=1,
    latency_rate=200.0,
    latency_seconds=1.0,
)


def email_spec(name: str, sink: SmtpSink) -> ServerSpec:
    """The ``service`` row with email on, sending to ``sink``."""
    service = _service_spec()
    env = {**service.env, "NOTIFY_SMTP_URL": sink.url, "NOTIFY_SMTP_FROM": SENDER}
    return replace(service, name=name, env=env, default=False)


def _service_spec() -> ServerSpec:
    return next(spec for spec in SERVERS if spec.name == "service")


def guide_spec(sink: SmtpSink) -> ServerSpec:
    return ServerSpec(
        GUIDE,
        "bench.apps.guide_email",
        env={"BENCH_SMTP_PORT": str(sink.port)},
        writes_log=False,
        default=False,
    )


# -- 1. the API with email on ---------------------------------------------------------------


@dataclass(frozen=True)
class ApiRun:
    row: str
    run: RunResult
    arrived_in_phase: int
    """Deliveries (emails, webhooks) the receiver got while the load generator's measured
    phase lasted."""
    arrived_by_stop: int
    """Deliveries it got from the server's start until the server had stopped."""
    sink_cpu_s: float
    """CPU time of the receiver's thread over the whole run."""

    @property
    def sink_cpu_in_phase_s(self) -> float:
        """Its share of the measured phase, estimated by the deliveries that arrived then."""
        if self.arrived_by_stop == 0:
            return 0.0
        return self.sink_cpu_s * self.arrived_in_phase / self.arrived_by_stop

    @property
    def noise_cpu_s(self) -> float:
        """CPU time of processes other than the server, the load generator and the receiver
        during the measured phase."""
        return max(0.0, self.run.other_cpu_s - self.sink_cpu_in_phase_s)

    def to_json(self) -> dict[str, Any]:
        return {
            "row": self.row,
            "arrived_in_phase": self.arrived_in_phase,
            "arrived_by_stop": self.arrived_by_stop,
            "sink_cpu_s": self.sink_cpu_s,
            "sink_cpu_in_phase_s": self.sink_cpu_in_phase_s,
            "noise_cpu_s": self.noise_cpu_s,
            **self.run.to_json(),
        }


def api_once(
    row: str,
    spec: ServerSpec,
    sink: Sink | None,
    round_index: int,
    options: Options,
    run_dir: Path,
) -> ApiRun:
    """One ``run_once`` of ``spec``, with what ``sink`` received meanwhile."""
    if sink is not None:
        sink.recorder.clear()
    sink_cpu = sink.cpu_seconds() if sink is not None else 0.0
    run = run_once(spec, round_index, options, run_dir)
    if sink is not None:
        sink_cpu = sink.cpu_seconds() - sink_cpu
    load = LoadResult.from_json(json.loads((run_dir / "loadgen.json").read_text()))
    end = load.last_response_wall
    arrivals = sink.recorder.arrivals() if sink is not None else []
    in_phase = sum(end - load.duration_s <= arrival.at <= end for arrival in arrivals)
    return ApiRun(row, run, in_phase, len(arrivals), sink_cpu)


def log_only_spec() -> ServerSpec:
    """The ``service`` row as it is (nothing delivered): the API rows' baseline."""
    return replace(_service_spec(), name=LOG_ONLY)


def run_api_rows(
    rows: Sequence[tuple[str, ServerSpec, Sink | None]],
    load: Options,
    work_dir: Path,
    say: Say,
    unit: str = "emails",
) -> list[ApiRun]:
    """``load.rounds`` interleaved rounds of ``rows`` (name, server, its receiver)."""
    runs: list[ApiRun] = []
    for round_index in range(1, load.rounds + 1):
        for row, spec, sink in rows:
            run_dir = work_dir / f"api-round{round_index}-{row}"
            result = api_once(row, spec, sink, round_index, load, run_dir)
            runs.append(result)
            say(
                f"  api round {round_index}/{load.rounds} {row:<12}"
                f" {result.run.rps:8,.0f} req/s  p99 {result.run.p99_ms:6.1f} ms"
                f"  {unit} in phase {result.arrived_in_phase:,}"
            )
    return runs


def run_api(options: EmailOptions, work_dir: Path, say: Say) -> list[ApiRun]:
    """Interleaved rounds of log-only, email-fast, email-slow."""
    load = options.api_load()
    with smtp_sink() as fast, smtp_sink(SLOW_DELAY_S) as slow:
        rows: list[tuple[str, ServerSpec, Sink | None]] = [
            (LOG_ONLY, log_only_spec(), None),
            (EMAIL_FAST, email_spec(EMAIL_FAST, fast), fast),
            (EMAIL_SLOW, email_spec(EMAIL_SLOW, slow), slow),
        ]
        return run_api_rows(rows, load, work_dir, say)


def api_ratios(runs: Sequence[ApiRun], row: str) -> list[float]:
    by_round: dict[int, dict[str, float]] = {}
    for api in runs:
        by_round.setdefault(api.run.round, {})[api.row] = api.run.rps
    return paired_ratios(by_round, row, LOG_ONLY)


def api_summary(
    runs: Sequence[ApiRun], names: Sequence[str] = (LOG_ONLY, EMAIL_FAST, EMAIL_SLOW)
) -> dict[str, Any]:
    """Per row (in the order of ``names``): medians over its runs, and its ratios to
    log-only round by round."""
    rows: dict[str, Any] = {}
    for row in names:
        mine = [api for api in runs if api.row == row]
        if not mine:
            continue
        ratios = api_ratios(runs, row)
        rows[row] = {
            "runs": len(mine),
            "rps": median(api.run.rps for api in mine),
            "p99_ms": median(api.run.p99_ms for api in mine),
            "rps_vs_log_only": median_or_none(ratios),
            "ratios": ratios,
            "arrived_in_phase": median(api.arrived_in_phase for api in mine),
            "arrived_by_stop": median(api.arrived_by_stop for api in mine),
            "acked": median(api.run.acked for api in mine),
            "arrived_per_s_in_phase": median(
                api.arrived_in_phase / api.run.duration_s if api.run.duration_s > 0 else 0.0
                for api in mine
            ),
            "server_cpu": median(_share(api.run.server_cpu_s, api.run) for api in mine),
            "sink_cpu": median(_share(api.sink_cpu_in_phase_s, api.run) for api in mine),
            "noise_cpu": median(_share(api.noise_cpu_s, api.run) for api in mine),
            "exactly_once": all(api.run.exactly_once for api in mine),
            "non_200": sum(sum(api.run.non_200.values()) for api in mine),
        }
    return rows


def _share(cpu_s: float, run: RunResult) -> float:
    return cpu_s / run.duration_s if run.duration_s > 0 else 0.0


def format_api(summary: dict[str, Any], unit: str = "emails", sink: str = "smtp") -> str:
    """The API rows' table; ``unit`` and ``sink`` name the deliveries and their receiver."""
    rows = []
    for row, data in summary.items():
        ratio = data["rps_vs_log_only"]
        spread = f"{min(data['ratios']):.2f}-{max(data['ratios']):.2f}" if data["ratios"] else "-"
        arrived = "-" if row == LOG_ONLY else f"{data['arrived_per_s_in_phase']:,.0f}"
        by_stop = "-" if row == LOG_ONLY else f"{data['arrived_by_stop']:,.0f}/{data['acked']:,.0f}"
        rows.append(
            (
                row,
                f"{data['rps']:,.0f}",
                "-" if ratio is None else f"{ratio:.3f}x",
                spread,
                f"{data['p99_ms']:.1f}",
                arrived,
                by_stop,
                f"{data['server_cpu']:.2f}",
                f"{data['sink_cpu']:.2f}",
                f"{data['noise_cpu']:.2f}",
                "ok" if data["exactly_once"] else "FAILED",
            )
        )
    header = (
        "API",
        "req/s",
        "vs log-only",
        "per round",
        "p99 ms",
        f"{unit}/s meanwhile",
        "sent by stop",
        "server cpu",
        f"{sink} cpu",
        "other cpu",
        "log once",
    )
    return format_rows(header, rows)


# -- 2. delivery rate ---------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryRun:
    way: str
    round: int
    posted: int
    acked: int
    delivered: int
    complete: bool
    post_s: float | None
    """First request to last response (None for the ceiling: no HTTP)."""
    deliver_s: float
    """First request (first message for the ceiling) to the last email's arrival."""
    rate: float
    api_rps: float | None
    server_cpu_s: float | None
    """CPU time of the API's process from before the first request until the last arrival
    (None for the ceiling)."""


def closed_loop_command(port: int, requests: int, concurrency: int, out: Path) -> list[str]:
    """``bench.loadgen`` posting ``requests`` notifications over ``concurrency`` connections,
    no warmup."""
    return [
        *(sys.executable, "-m", "bench.loadgen", "--host", HOST, "--port", str(port)),
        *("--requests", str(requests), "--concurrency", str(concurrency), "--warmup", "0"),
        *("--token", secrets.token_hex(4), "--timeout", str(30 + requests / 100)),
        *("--out", str(out)),
    ]


def run_child(command: list[str], run_dir: Path, name: str, timeout: float) -> None:
    """Run ``command`` to its end (stderr to ``{name}.err``); HarnessError unless it exits 0."""
    stderr_path = run_dir / f"{name}.err"
    with stderr_path.open("w") as stderr:
        completed = subprocess.run(
            command,
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            timeout=timeout,
            check=False,
        )
    if completed.returncode != 0:
        raise HarnessError(f"{name} exited with {completed.returncode}:\n{tail_text(stderr_path)}")


def deliver_once(
    way: str,
    spec: ServerSpec,
    sink: Sink,
    round_index: int,
    requests: int,
    concurrency: int,
    run_dir: Path,
) -> DeliveryRun:
    """Post ``requests`` notifications through ``spec``'s server over ``concurrency``
    connections; time them until the last delivery reached ``sink``."""
    run_dir.mkdir(parents=True)
    sink.recorder.clear()
    with running_server(spec, run_dir, REPO_ROOT) as server:
        server.wait_ready(READY_TIMEOUT_S)
        out = run_dir / "loadgen.json"
        command = closed_loop_command(server.port, requests, concurrency, out)
        cpu_start = server.cpu_seconds()
        run_child(command, run_dir, "loadgen", 60 + requests / 100)
        load = LoadResult.from_json(json.loads(out.read_text()))
        acked = len(load.acked_emails)
        complete = wait_for_arrivals(sink.recorder, acked, DELIVERY_LIMIT_S)
        server_cpu_s = server.cpu_seconds() - cpu_start
        arrivals = [arrival.at for arrival in sink.recorder.arrivals()]
        server.stop(STOP_TIMEOUT_S)
    started = load.last_response_wall - load.duration_s
    return DeliveryRun(
        way=way,
        round=round_index,
        posted=requests,
        acked=acked,
        delivered=len(arrivals),
        complete=complete,
        post_s=load.duration_s,
        deliver_s=max(arrivals) - started if arrivals else math.nan,
        rate=delivery_rate(len(arrivals), started, arrivals),
        api_rps=load.rps,
        server_cpu_s=server_cpu_s,
    )


def ceiling_once(
    sink: SmtpSink, round_index: int, options: EmailOptions, run_dir: Path
) -> DeliveryRun:
    """The same number of emails straight from ``bench.smtp_ceiling``'s kept-open
    connections (as many as the service's default pool): what the SMTP server can take."""
    run_dir.mkdir(parents=True)
    sink.recorder.clear()
    emails = options.delivery_emails
    out = run_dir / "ceiling.json"
    command = [
        *(sys.executable, "-m", "bench.smtp_ceiling", "--host", HOST, "--port", str(sink.port)),
        *("--emails", str(emails), "--connections", str(POOL_SIZE), "--out", str(out)),
    ]
    run_child(command, run_dir, "smtp_ceiling", 60 + emails / 100)
    started = float(json.loads(out.read_text())["started"])
    complete = wait_for_arrivals(sink.recorder, emails, DELIVERY_LIMIT_S)
    arrivals = [arrival.at for arrival in sink.recorder.arrivals()]
    return DeliveryRun(
        way=CEILING,
        round=round_index,
        posted=emails,
        acked=emails,
        delivered=len(arrivals),
        complete=complete,
        post_s=None,
        deliver_s=max(arrivals) - started if arrivals else math.nan,
        rate=delivery_rate(len(arrivals), started, arrivals),
        api_rps=None,
        server_cpu_s=None,
    )


def run_delivery(options: EmailOptions, work_dir: Path, say: Say) -> list[DeliveryRun]:
    """Interleaved rounds of service, guide, ceiling, one SMTP server for all."""
    runs: list[DeliveryRun] = []
    with smtp_sink() as sink:
        ways = [(SERVICE, email_spec(SERVICE, sink)), (GUIDE, guide_spec(sink))]
        for round_index in range(1, options.delivery_rounds + 1):
            for way, spec in [*ways, (CEILING, None)]:
                run_dir = work_dir / f"delivery-round{round_index}-{way}"
                if spec is None:
                    result = ceiling_once(sink, round_index, options, run_dir)
                else:
                    result = deliver_once(
                        way,
                        spec,
                        sink,
                        round_index,
                        options.delivery_emails,
                        options.concurrency,
                        run_dir,
                    )
                runs.append(result)
                api = "" if result.api_rps is None else f" (API {result.api_rps:,.0f} req/s)"
                say(
                    f"  delivery round {round_index}/{options.delivery_rounds} {way:<8}"
                    f" {result.delivered:,}/{result.acked:,} emails in {result.deliver_s:.2f} s:"
                    f" {result.rate:,.0f}/s{api}"
                )
    return runs


def delivery_ratios(runs: Sequence[DeliveryRun], way: str, baseline: str) -> list[float]:
    """``way``'s deliveries/s over ``baseline``'s, round by round (0 when not all arrived)."""
    by_round: dict[int, dict[str, float]] = {}
    for run in runs:
        by_round.setdefault(run.round, {})[run.way] = run.rate if run.complete else 0.0
    return paired_ratios(by_round, way, baseline)


def delivery_summary(
    runs: Sequence[DeliveryRun], names: Sequence[str] = (SERVICE, GUIDE, CEILING)
) -> dict[str, Any]:
    """Per way (in the order of ``names``): medians, and its ratios to the guide's way and
    to the ceiling, round by round."""
    ways: dict[str, Any] = {}
    for way in names:
        mine = [run for run in runs if run.way == way]
        if mine:
            posts = [run.post_s for run in mine if run.post_s is not None]
            apis = [run.api_rps for run in mine if run.api_rps is not None]
            ratios = delivery_ratios(runs, way, GUIDE)
            ways[way] = {
                "runs": len(mine),
                "per_s": median(run.rate for run in mine),
                "vs_guide": median_or_none(ratios),
                "vs_guide_per_round": ratios,
                "of_ceiling": median_or_none(delivery_ratios(runs, way, CEILING)),
                "deliver_s": median(run.deliver_s for run in mine),
                "post_s": median_or_none(posts),
                "api_rps": median_or_none(apis),
                "server_cpu": median_or_none(
                    run.server_cpu_s / run.deliver_s
                    for run in mine
                    if run.server_cpu_s is not None and run.deliver_s > 0
                ),
                "all_delivered": all(run.complete for run in mine),
            }
    service_vs_guide = ways[SERVICE]["vs_guide"] if SERVICE in ways else None
    return {"ways": ways, "service_vs_guide": service_vs_guide}


def format_delivery(summary: dict[str, Any], count: int, unit: str = "emails") -> str:
    rows = []
    for way, data in summary["ways"].items():
        ratio, of_ceiling, post_s = data["vs_guide"], data["of_ceiling"], data["post_s"]
        cpu = data["server_cpu"]
        rows.append(
            (
                way,
                f"{data['per_s']:,.0f}",
                "-" if ratio is None else f"{ratio:.2f}x",
                "-" if of_ceiling is None else f"{of_ceiling:.2f}",
                f"{data['deliver_s']:.2f}",
                "-" if post_s is None else f"{post_s:.2f}",
                "-" if cpu is None else f"{cpu:.2f}",
                "yes" if data["all_delivered"] else "NO",
            )
        )
    header = (
        f"delivery ({count:,} {unit})",
        f"{unit}/s",
        "vs guide",
        "of ceiling",
        "all in, s",
        "all acked, s",
        "server cpu",
        "all arrived",
    )
    return format_rows(header, rows)


# -- 3. acknowledged to delivered ----------------------------------------------------------


@dataclass(frozen=True)
class LatencyRun:
    round: int
    sent: int
    achieved_rate: float
    most_behind_ms: float
    acked: int
    non_200: int
    delivered: int
    missing: int
    repeats: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    def to_json(self) -> dict[str, Any]:
        return {
            k: (v if not isinstance(v, float) or math.isfinite(v) else None)
            for k, v in asdict(self).items()
        }


def latency_once(
    spec: ServerSpec, sink: SmtpSink, round_index: int, options: EmailOptions, run_dir: Path
) -> tuple[LatencyRun, Matched]:
    run_dir.mkdir(parents=True)
    sink.recorder.clear()
    with running_server(spec, run_dir, REPO_ROOT) as server:
        server.wait_ready(READY_TIMEOUT_S)
        out = run_dir / "openloop.json"
        command = [
            *(sys.executable, "-m", "bench.openloop", "--host", HOST, "--port", str(server.port)),
            *("--rate", str(options.latency_rate), "--seconds", str(options.latency_seconds)),
            *("--warmup", "1", "--out", str(out)),
        ]
        run_child(command, run_dir, "openloop", 60 + options.latency_seconds)
        load = OpenLoopResult.from_json(json.loads(out.read_text()))
        wait_for_arrivals(sink.recorder, load.warmup_acked + len(load.acks), DELIVERY_LIMIT_S)
        arrivals = sink.recorder.arrivals()
        server.stop(STOP_TIMEOUT_S)
    matched = match_latencies(load.acks, arrivals)
    values = matched.with_missing
    return (
        LatencyRun(
            round=round_index,
            sent=load.sent,
            achieved_rate=load.achieved_rate,
            most_behind_ms=load.most_behind_ms,
            acked=len(load.acks),
            non_200=load.sent - len(load.acks),
            delivered=len(matched.seconds),
            missing=matched.missing,
            repeats=matched.repeats,
            p50_ms=percentile(values, 0.50) * 1000,
            p99_ms=percentile(values, 0.99) * 1000,
            max_ms=percentile(values, 1.0) * 1000,
        ),
        matched,
    )


def run_latency(
    options: EmailOptions, work_dir: Path, say: Say
) -> tuple[list[LatencyRun], list[float]]:
    """The rounds, and every notification's latency in seconds (missing ones as inf)."""
    runs: list[LatencyRun] = []
    pooled: list[float] = []
    with smtp_sink() as sink:
        spec = email_spec(EMAIL_FAST, sink)
        for round_index in range(1, options.latency_rounds + 1):
            run_dir = work_dir / f"latency-round{round_index}"
            run, matched = latency_once(spec, sink, round_index, options, run_dir)
            runs.append(run)
            pooled.extend(matched.with_missing)
            say(
                f"  latency round {round_index}/{options.latency_rounds}"
                f" {run.achieved_rate:,.0f} req/s, {run.delivered:,}/{run.acked:,} delivered:"
                f" p50 {run.p50_ms:,.1f} ms, p99 {run.p99_ms:,.1f} ms, max {run.max_ms:,.1f} ms"
            )
    return runs, pooled


def _ms(value: float) -> str:
    return "never" if math.isinf(value) else f"{value:,.1f}"


def format_latency(runs: Sequence[LatencyRun], pooled: Sequence[float], rate: float) -> str:
    rows = [
        (
            f"round {run.round}",
            f"{run.achieved_rate:,.0f}",
            f"{run.acked:,}",
            f"{run.delivered:,}",
            f"{run.missing:,}",
            _ms(run.p50_ms),
            _ms(run.p99_ms),
            _ms(run.max_ms),
        )
        for run in runs
    ]
    if pooled:
        rows.append(
            (
                "all",
                "",
                f"{sum(run.acked for run in runs):,}",
                f"{sum(run.delivered for run in runs):,}",
                f"{sum(run.missing for run in runs):,}",
                _ms(percentile(pooled, 0.50) * 1000),
                _ms(percentile(pooled, 0.99) * 1000),
                _ms(percentile(pooled, 1.0) * 1000),
            )
        )
    header = (
        f"ack to delivered at {rate:,.0f}/s",
        "req/s",
        "acked",
        "delivered",
        "missing",
        "p50 ms",
        "p99 ms",
        "max ms",
    )
    return format_rows(header, rows)


# -- the whole -------------------------------------------------------------------------------


def code_state() -> dict[str, Any]:
    """The commit measured, and which files of the service differed from it."""

    def git(*args: str) -> str:
        completed = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False
        )
        return completed.stdout

    # Porcelain lines are "XY path": X may be a space, so the output is not stripped.
    changed = git("status", "--porcelain", "--", "service", "config").splitlines()
    return {
        "commit": git("rev-parse", "HEAD").strip(),
        "uncommitted": [line[3:] for line in changed if line.strip()],
    }


def _parser() -> argparse.ArgumentParser:
    defaults = EmailOptions()
    parser = argparse.ArgumentParser(
        prog="python -m bench.email",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--parts", default=",".join(PARTS), help="comma-separated, from: " + ", ".join(PARTS)
    )
    parser.add_argument("--rounds", type=int, help=f"API rounds; default {defaults.api_rounds}")
    parser.add_argument(
        "--requests", type=int, help=f"API requests per run; default {defaults.api_requests}"
    )
    parser.add_argument(
        "--concurrency", type=int, help=f"closed-loop connections; default {defaults.concurrency}"
    )
    parser.add_argument(
        "--emails", type=int, help=f"delivery: emails per run; default {defaults.delivery_emails}"
    )
    parser.add_argument("--delivery-rounds", type=int, help=f"default {defaults.delivery_rounds}")
    parser.add_argument("--latency-rounds", type=int, help=f"default {defaults.latency_rounds}")
    parser.add_argument(
        "--latency-seconds",
        type=float,
        help=f"measured seconds per round; default {defaults.latency_seconds}",
    )
    parser.add_argument(
        "--rate", type=float, help=f"latency: requests/s; default {defaults.latency_rate:.0f}"
    )
    parser.add_argument("--out", type=Path, help=f"results directory; default {RESULTS_DIR}")
    parser.add_argument(
        "--quick", action="store_true", help="one short round of each, into a temporary directory"
    )
    return parser


def parse_options(argv: list[str] | None = None) -> EmailOptions:
    args = _parser().parse_args(argv)
    base = QUICK if args.quick else EmailOptions()
    parts = tuple(part.strip() for part in args.parts.split(",") if part.strip())
    unknown = [part for part in parts if part not in PARTS]
    if unknown:
        raise SystemExit(f"error: unknown part(s) {', '.join(unknown)}; known: {', '.join(PARTS)}")
    out = results_dir(args.out, quick=args.quick, name="email")
    overrides = {
        "api_rounds": args.rounds,
        "api_requests": args.requests,
        "concurrency": args.concurrency,
        "delivery_emails": args.emails,
        "delivery_rounds": args.delivery_rounds,
        "latency_rounds": args.latency_rounds,
        "latency_seconds": args.latency_seconds,
        "latency_rate": args.rate,
    }
    chosen = {key: value for key, value in overrides.items() if value is not None}
    warmup = {"warmup": 4 * args.concurrency} if args.concurrency else {}
    return replace(base, **chosen, **warmup, parts=parts, out=out)


def idle_busy(seconds: float = 1.0) -> float:
    """Cores' worth of CPU the machine used over ``seconds`` while this benchmark ran nothing:
    other processes' load, which the figures then share the machine with."""
    before = MachineCpu.read()
    time.sleep(seconds)
    return (MachineCpu.read() - before).busy / seconds


def results_head(options: dict[str, Any], say: Say) -> dict[str, Any]:
    """The start of a results file: machine, code, options and the load before the start
    (warned about when other processes used more than ``NOISY_OTHER_CPU``)."""
    data: dict[str, Any] = {"machine": machine_info(), "code": code_state(), "options": options}
    busy = idle_busy()
    data["busy_before_start"] = busy
    if busy > NOISY_OTHER_CPU:
        say(
            f"warning: other processes used {busy:.2f} of a core just before the start:"
            " the figures share the machine with them"
        )
    return data


def run(options: EmailOptions, work_dir: Path, say: Say = print) -> tuple[dict[str, Any], bool]:
    """Run the chosen parts; the JSON to save, and whether every log held each ack once."""
    data = results_head(options.to_json(), say)
    tables: list[str] = []
    api_fast = api_slow = delivery = latency = None
    once = True
    if "api" in options.parts:
        say(
            f"API: {options.api_rounds} round(s) x {options.api_requests:,} requests over"
            f" {options.concurrency} connections: {LOG_ONLY}, {EMAIL_FAST}, {EMAIL_SLOW}"
        )
        api_runs = run_api(options, work_dir, say)
        summary = api_summary(api_runs)
        data["api"] = {"rows": summary, "runs": [api.to_json() for api in api_runs]}
        api_fast = summary[EMAIL_FAST]["rps_vs_log_only"]
        api_slow = summary[EMAIL_SLOW]["rps_vs_log_only"]
        once = all(row["exactly_once"] for row in summary.values())
        tables.append(format_api(summary))
    if "delivery" in options.parts:
        say(
            f"delivery: {options.delivery_rounds} round(s) x {options.delivery_emails:,} emails"
            f" over {options.concurrency} connections: {SERVICE}, {GUIDE}, {CEILING}"
        )
        delivery_runs = run_delivery(options, work_dir, say)
        summary = delivery_summary(delivery_runs)
        data["delivery"] = {**summary, "runs": [asdict(run) for run in delivery_runs]}
        delivery = summary["service_vs_guide"]
        tables.append(format_delivery(summary, options.delivery_emails))
    if "latency" in options.parts:
        say(
            f"latency: {options.latency_rounds} round(s) x {options.latency_seconds:g} s at"
            f" {options.latency_rate:,.0f} requests/s (after 1 s of warmup), fast SMTP server"
        )
        latency_runs, pooled = run_latency(options, work_dir, say)
        latency = percentile(pooled, 0.99) if pooled else None
        data["latency"] = {
            "p50_ms": _finite_ms(percentile(pooled, 0.50)) if pooled else None,
            "p99_ms": _finite_ms(latency) if latency is not None else None,
            "max_ms": _finite_ms(percentile(pooled, 1.0)) if pooled else None,
            "notifications": len(pooled),
            "runs": [run.to_json() for run in latency_runs],
        }
        tables.append(format_latency(latency_runs, pooled, options.latency_rate))
    listed: list[Goal] = goals(api_fast, api_slow, delivery, latency)
    data["goals"] = [goal.to_json() for goal in listed]
    tables.append(format_goals(listed))
    data["tables"] = tables
    return data, once


def _finite_ms(seconds: float | None) -> float | None:
    if seconds is None or not math.isfinite(seconds):
        return None
    return seconds * 1000


Runner = Callable[[Path], tuple[dict[str, Any], bool]]
"""Runs a benchmark in a work directory: its results (with ``tables``), and whether every log
held each acknowledgement once."""


def run_and_save(run: Runner, path: Path, prefix: str) -> int:
    """``run`` in a fresh work directory, its tables printed and its results saved to
    ``path``; the exit code (1: the harness failed or a log check did; the runs are kept)."""
    work_dir = Path(tempfile.mkdtemp(prefix=prefix))
    started = time.monotonic()
    try:
        data, once = run(work_dir)
    except HarnessError as exc:
        print(f"harness failed: {exc}\nruns kept in {work_dir}", file=sys.stderr)
        return 1
    data["elapsed_s"] = time.monotonic() - started
    print()
    print("\n\n".join(data["tables"]))
    save_json(path, data)
    print(f"\nresults: {path}\ntook {data['elapsed_s']:.0f} s")
    if not once:
        print(f"exactly-once check of the log FAILED; runs kept in {work_dir}", file=sys.stderr)
        return 1
    shutil.rmtree(work_dir, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    return run_and_save(
        lambda work_dir: run(options, work_dir), options.out / "email.json", "bench-email-runs-"
    )


if __name__ == "__main__":
    raise SystemExit(main())
