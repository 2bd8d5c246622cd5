"""``python -m bench.distance``: delivery at a distance, from the first request until everything
has arrived, against what a FastAPI user would pick instead (issue 23).

Every variant gets the same load, one fresh server per run, on loopback:

1. **email-50ms** and **email-instant**: ``--warmup`` notifications (500) posted by the
   closed-loop load generator (``bench.loadgen``, 64 connections), waited for until the SMTP
   server (``bench.smtp_sink``, a thread of this process) has them all; then ``--emails``
   notifications (10,000) posted the same way, one email each, and the clock runs from the
   first of those requests until the SMTP server has received every acknowledged one (matched
   by the envelope's recipient: the load generator's unique address). The SMTP server
   answers each message after 50 ms (a distant relay) or at once. Variants: ``service``
   (``uvicorn service.main:app``, defaults, ``NOTIFY_SMTP_URL`` to the server), ``guide``
   (``bench.apps.guide_email``: a ``def`` task calling ``smtplib`` on Starlette's thread
   pool) and ``fastapi-mail`` (``bench.apps.fastapi_mail_app``: ``BackgroundTasks`` and
   ``FastMail.send_message``, as its documentation shows; a reference row).
2. **webhook-200ms**: the same with a receiver (``bench.webhook_sink``) answering each request
   after 200 ms, ``--webhook-warmup`` (100) then ``--webhooks`` (1,000) notifications:
   ``service`` (``NOTIFY_WEBHOOK_URL``, a fresh ``whsec_`` secret) against the guide's
   ``httpx.post`` (``bench.apps.guide_webhook``). Arrivals are matched by ``webhook-id``.
3. **pace**: a ``--pace-seconds`` (30 s) open-loop load (``bench.openloop``) at
   ``--pace-share`` (0.7) of the service's API req/s measured in ``email-instant`` (measured
   here first when that part is not run), email on, the instant SMTP server: the backlog at
   the load's end (acknowledged, not yet received) in notifications and in seconds of traffic.

Rounds are interleaved (every part and variant once per round); ratios are taken round by
round and the tables show medians. **lost** counts acknowledged notifications that had not
arrived when the bounded wait ended; **repeats** arrivals beyond the first of one.

Results go to ``bench/results/distance.json`` (``--quick``: a temporary directory), with the
goals table and, for each goal, the command that measures it.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from statistics import median
from typing import Any

from bench.arrivals import Arrival, ArrivalLog, Sink, wait_for_arrivals
from bench.email import (
    READY_TIMEOUT_S,
    STOP_TIMEOUT_S,
    Say,
    closed_loop_command,
    email_spec,
    results_head,
    run_and_save,
    run_child,
)
from bench.email import guide_spec as guide_email_spec
from bench.email_report import GUIDE, SERVICE, Goal, at_least, format_goals, format_rows
from bench.errors import HarnessError
from bench.loadgen import LoadResult
from bench.openloop import OpenLoopResult
from bench.options import chosen_parts, results_dir
from bench.paths import REPO_ROOT, RESULTS_DIR
from bench.process import HOST, running_server
from bench.servers import ServerSpec
from bench.smtp_lean import lean_smtp_sink
from bench.smtp_sink import SmtpSink, smtp_sink
from bench.webhook_sink import webhook_sink
from bench.webhooks import guide_spec as guide_webhook_spec
from bench.webhooks import new_secret, webhook_spec

FASTAPI_MAIL = "fastapi-mail"
EMAIL_SLOW = "email-50ms"
EMAIL_INSTANT = "email-instant"
WEBHOOK_SLOW = "webhook-200ms"
PACE = "pace"
LEAN = "lean"
AIOSMTPD = "aiosmtpd"
PARTS = (EMAIL_SLOW, EMAIL_INSTANT, WEBHOOK_SLOW, PACE)
DELIVERY_PARTS = (EMAIL_SLOW, EMAIL_INSTANT, WEBHOOK_SLOW)

SLOW_FASTER_GOAL = 1.5
"""50 ms SMTP server: the service's first-request-to-all-delivered at least this many times
faster than the guide's way (the aim is 2x)."""
SLOW_FASTER_AIM = 2.0
SLOW_API_GOAL = 2.0
"""50 ms SMTP server: the service's API req/s at least this many times the guide's."""
INSTANT_FASTER_GOAL = 2.0
WEBHOOK_FASTER_GOAL = 2.0
BACKLOG_GOAL_S = 2.0
"""Keeping pace: the backlog at the load's end at most this many seconds of traffic."""

COMMAND = "python -m bench.distance"
PACE_DRAIN_S = 30.0
"""The open-loop client's wait for its last responses after its last send: requests still
unanswered then (a connection whose SYN the full listen queue dropped) count as not accepted."""
STALL_S = 40.0
"""The wait for deliveries also ends when none has arrived for this long: longer than the
5 s of the other benchmarks, because a client that opens thousands of SMTP connections at once
overflows the server's listen queue (100), and a connection whose SYN was dropped is retried
1, 3, 7, 15 and 31 s later: those messages are late, not lost."""


@dataclass(frozen=True)
class DistanceOptions:
    emails: int = 10_000
    warmup: int = 500
    webhooks: int = 1_000
    """Fewer than the emails: the service's 4 webhook connections at 200 ms a request carry
    20 a second, so 10,000 would take over eight minutes a run."""
    webhook_warmup: int = 100
    concurrency: int = 64
    rounds: int = 3
    smtp_delay_s: float = 0.05
    webhook_delay_s: float = 0.2
    pace_seconds: float = 30.0
    pace_share: float = 0.7
    parts: tuple[str, ...] = PARTS
    out: Path = RESULTS_DIR
    quick: bool = False
    delivery: str = "inline"
    """How the service row runs: ``inline``, ``uvicorn service.main:app`` delivering on its
    own event loop; ``process``, ``notify-service``: the API and a delivery process."""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["out"] = str(self.out)
        data["parts"] = list(self.parts)
        return data

    def count(self, part: str) -> tuple[int, int]:
        """``(warm-up, measured)`` notifications of a delivery part."""
        if part == WEBHOOK_SLOW:
            return self.webhook_warmup, self.webhooks
        return self.warmup, self.emails

    def command(self, part: str) -> str:
        """The command that measures ``part`` as this run did."""
        args = [*COMMAND.split(), "--parts", part]
        if self.quick:
            args.append("--quick")
        if part in (EMAIL_SLOW, EMAIL_INSTANT):
            args += ["--emails", str(self.emails), "--warmup", str(self.warmup)]
        elif part == WEBHOOK_SLOW:
            args += ["--webhooks", str(self.webhooks), "--webhook-warmup", str(self.webhook_warmup)]
        else:
            args += ["--pace-seconds", f"{self.pace_seconds:g}", "--pace-share"]
            args += [f"{self.pace_share:g}", "--emails", str(self.emails)]
        if part != PACE:
            args += ["--rounds", str(self.rounds)]
        args += ["--concurrency", str(self.concurrency)]
        if self.delivery != "inline":
            args += ["--delivery", self.delivery]
        return shlex.join(args)


QUICK = DistanceOptions(
    emails=300, warmup=50, webhooks=60, webhook_warmup=10, rounds=1, pace_seconds=3.0, quick=True
)


# -- one delivery run ----------------------------------------------------------------------


@dataclass(frozen=True)
class Delivered:
    """Arrivals matched with what was acknowledged."""

    first: dict[str, float]
    """Per acknowledged notification that arrived: its first arrival's time."""
    lost: int
    repeats: int


def match_arrivals(
    arrivals: Iterable[Arrival], key: Callable[[Arrival], str | None], acked: Sequence[str] | int
) -> Delivered:
    """First arrival per notification, by ``key`` (recipient, id). With the acknowledged keys
    (a sequence), arrivals of other notifications are ignored and lost is exact; with only
    their number, every keyed arrival counts and lost is that number minus those that came."""
    wanted = None if isinstance(acked, int) else set(acked)
    expected = acked if isinstance(acked, int) else len(wanted or ())
    first: dict[str, float] = {}
    repeats = 0
    for arrival in arrivals:
        name = key(arrival)
        if name is None or (wanted is not None and name not in wanted):
            continue
        if name in first:
            repeats += 1
            first[name] = min(first[name], arrival.at)
        else:
            first[name] = arrival.at
    return Delivered(first, max(0, expected - len(first)), repeats)


@dataclass(frozen=True)
class DistanceRun:
    part: str
    way: str
    round: int
    warmup_acked: int
    warmup_all_arrived: bool
    posted: int
    acked: int
    non_200: int
    api_rps: float
    post_s: float
    """First request to last response."""
    delivered: int
    delivered_during_load: int
    """Of them, how many had arrived by the last response."""
    lost: int
    repeats: int
    all_in_s: float | None
    """First request until every acknowledged notification had arrived; None if some never
    did (lost)."""
    server_cpu_s: float
    listen_overflows: int = 0
    """Connections the machine dropped for a full listen queue during the measured load and
    the wait (machine-wide)."""

    @property
    def per_s(self) -> float:
        return self.delivered / self.all_in_s if self.all_in_s else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "per_s": self.per_s}


def listen_overflows() -> int:
    """The machine's count of connections dropped because a listen queue was full
    (``TcpExt: ListenOverflows``; other processes' too); 0 where it cannot be read."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return 0
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:") and "ListenOverflows" in names.split():
            return int(values.split()[names.split().index("ListenOverflows")])
    return 0


def _limit_s(part: str, notifications: int) -> float:
    """How long to wait for the deliveries after the load (the wait also ends after
    ``STALL_S`` without an arrival): the service's 8 SMTP connections carry
    160 emails/s at 50 ms a message, its 4 webhook connections 20 webhooks/s at 200 ms."""
    per_s = 10.0 if part == WEBHOOK_SLOW else 50.0
    return 60.0 + notifications / per_s


def _post(port: int, count: int, concurrency: int, run_dir: Path, name: str) -> LoadResult:
    out = run_dir / f"{name}.json"
    command = closed_loop_command(port, count, concurrency, out)
    run_child(command, run_dir, name, 60 + count / 20)
    return LoadResult.from_json(json.loads(out.read_text()))


def distance_once(
    part: str,
    way: str,
    spec: ServerSpec,
    sink: Sink,
    round_index: int,
    options: DistanceOptions,
    run_dir: Path,
) -> DistanceRun:
    """Warm-up (waited for), then the measured notifications, timed until all arrived."""
    run_dir.mkdir(parents=True)
    warmup, count = options.count(part)
    recorder: ArrivalLog = sink.recorder
    recorder.clear()
    through_notify_service = way == SERVICE and options.delivery == "process"
    with running_server(spec, run_dir, REPO_ROOT, notify_service=through_notify_service) as server:
        server.wait_ready(READY_TIMEOUT_S)
        server.track_group()  # with notify-service, its delivery process too
        warm_acked, warm_all = 0, True
        if warmup > 0:
            warm = _post(server.port, warmup, options.concurrency, run_dir, "warmup")
            warm_acked = len(warm.acked_emails)
            warm_all = wait_for_arrivals(recorder, warm_acked, _limit_s(part, warmup), STALL_S)
        recorder.clear()
        cpu_start, overflows = server.cpu_seconds(), listen_overflows()
        load = _post(server.port, count, options.concurrency, run_dir, "loadgen")
        acked = len(load.acked_emails)
        wait_for_arrivals(recorder, acked, _limit_s(part, count), STALL_S)
        server_cpu_s = server.cpu_seconds() - cpu_start
        overflows = listen_overflows() - overflows
        server.stop(STOP_TIMEOUT_S)
    arrivals = recorder.arrivals()
    if part == WEBHOOK_SLOW:
        matched = match_arrivals(arrivals, lambda a: a.notification_id, acked)
    else:
        matched = match_arrivals(arrivals, lambda a: a.recipient, load.acked_emails)
    started = load.last_response_wall - load.duration_s
    times = matched.first.values()
    return DistanceRun(
        part=part,
        way=way,
        round=round_index,
        warmup_acked=warm_acked,
        warmup_all_arrived=warm_all,
        posted=count,
        acked=acked,
        non_200=sum(load.non_200.values()),
        api_rps=load.rps,
        post_s=load.duration_s,
        delivered=len(matched.first),
        delivered_during_load=sum(at <= load.last_response_wall for at in times),
        lost=matched.lost,
        repeats=matched.repeats,
        all_in_s=max(times) - started if times and matched.lost == 0 else None,
        server_cpu_s=server_cpu_s,
        listen_overflows=overflows,
    )


# -- keeping pace --------------------------------------------------------------------------


@dataclass(frozen=True)
class PaceRun:
    receiver: str
    """The SMTP server: ``lean`` (``bench.smtp_lean``, the goal's) or ``aiosmtpd``."""
    capacity_rps: float
    """The service's API req/s (closed loop, email on) the rate was taken from."""
    rate: float
    achieved_rate: float
    most_behind_ms: float
    seconds: float
    sent: int
    acked: int
    non_200: int
    """Sent and not answered 200 (unanswered within the drain included)."""
    unanswered: int
    connections: int
    """Connections the open-loop client opened (one more each time none was free)."""
    received_by_end: int
    """Acknowledged notifications the SMTP server had when the last response arrived."""
    backlog: int
    backlog_s: float
    """The backlog in seconds of traffic: backlog / achieved rate."""
    drained_s: float | None
    """From the load's end until the last acknowledged notification had arrived (None if
    some never did)."""
    lost: int
    repeats: int
    service_cores: float
    """CPU the service's processes (the API and, with ``--delivery process``, its delivery
    process) used during the load, in cores."""
    receiver_cores: float
    """CPU the SMTP server's thread used during the load, in cores."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def pace_once(
    receiver: str, sink: SmtpSink, capacity: float, options: DistanceOptions, run_dir: Path
) -> PaceRun:
    run_dir.mkdir(parents=True)
    rate = options.pace_share * capacity
    sink.recorder.clear()
    through_notify_service = options.delivery == "process"
    with running_server(
        email_spec(SERVICE, sink), run_dir, REPO_ROOT, notify_service=through_notify_service
    ) as server:
        server.wait_ready(READY_TIMEOUT_S)
        server.track_group()  # notify-service's delivery process started before the API
        out = run_dir / "openloop.json"
        seconds = options.pace_seconds
        command = [
            *(sys.executable, "-m", "bench.openloop", "--host", HOST, "--port", str(server.port)),
            *("--rate", f"{rate:.1f}", "--seconds", f"{seconds:g}", "--warmup", "0"),
            *("--drain", str(PACE_DRAIN_S), "--timeout", str(seconds + PACE_DRAIN_S + 60)),
            *("--out", str(out)),
        ]
        service_cpu, receiver_cpu, started = server.cpu_seconds(), sink.cpu_seconds(), time.time()
        run_child(command, run_dir, "openloop", seconds + PACE_DRAIN_S + 90)
        load = OpenLoopResult.from_json(json.loads(out.read_text()))
        end = max((at for _, at in load.acks), default=started)
        # CPU to the moment the run ended (the open loop's drain has nothing left to send).
        took = max(time.time() - started, 1e-9)
        service_cores = (server.cpu_seconds() - service_cpu) / took
        receiver_cores = (sink.cpu_seconds() - receiver_cpu) / took
        acked = len(load.acks)
        wait_for_arrivals(sink.recorder, acked, _limit_s(PACE, acked), STALL_S)
        server.stop(STOP_TIMEOUT_S)
    ids = [nid for nid, _ in load.acks]
    matched = match_arrivals(sink.recorder.arrivals(), lambda a: a.notification_id, ids)
    received = sum(at <= end for at in matched.first.values())
    backlog = acked - received
    achieved = load.achieved_rate or rate
    return PaceRun(
        receiver=receiver,
        capacity_rps=capacity,
        rate=rate,
        achieved_rate=load.achieved_rate,
        most_behind_ms=load.most_behind_ms,
        seconds=seconds,
        sent=load.sent,
        acked=acked,
        non_200=load.sent - acked,
        unanswered=load.unanswered,
        connections=load.connections,
        received_by_end=received,
        backlog=backlog,
        backlog_s=backlog / achieved,
        drained_s=(
            max(matched.first.values()) - end if matched.first and matched.lost == 0 else None
        ),
        lost=matched.lost,
        repeats=matched.repeats,
        service_cores=service_cores,
        receiver_cores=receiver_cores,
    )


# -- the whole -----------------------------------------------------------------------------


@dataclass
class Collected:
    runs: list[DistanceRun] = field(default_factory=list)
    pace: PaceRun | None = None
    """The goal's run: the lean SMTP server."""
    pace_aiosmtpd: PaceRun | None = None
    """The same with aiosmtpd as the SMTP server, for reference."""
    pace_error: str | None = None


def _ways(
    part: str, smtp: dict[str, SmtpSink], hook: Sink, secret: str
) -> list[tuple[str, ServerSpec, Sink]]:
    if part == WEBHOOK_SLOW:
        return [
            (SERVICE, webhook_spec(SERVICE, hook, secret), hook),
            (GUIDE, guide_webhook_spec(hook, secret), hook),
        ]
    sink = smtp[part]
    mail = ServerSpec(
        FASTAPI_MAIL,
        "bench.apps.fastapi_mail_app",
        env={"BENCH_SMTP_PORT": str(sink.port)},
        writes_log=False,
        default=False,
    )
    return [
        (SERVICE, email_spec(SERVICE, sink), sink),
        (GUIDE, guide_email_spec(sink), sink),
        (FASTAPI_MAIL, mail, sink),
    ]


def _say_run(run: DistanceRun, rounds: int, say: Say) -> None:
    all_in = "never (lost)" if run.all_in_s is None else f"{run.all_in_s:6.2f} s"
    say(
        f"  round {run.round}/{rounds} {run.part:<13} {run.way:<12}"
        f" API {run.api_rps:7,.0f} req/s; {run.delivered:,}/{run.acked:,} in {all_in}"
        f" ({run.per_s:,.0f}/s), {run.delivered_during_load:,} during the load,"
        f" lost {run.lost}, repeats {run.repeats}, listen overflows {run.listen_overflows:,}"
    )


def collect(options: DistanceOptions, work_dir: Path, say: Say) -> Collected:
    collected = Collected()
    secret = new_secret()
    delivery_parts = [part for part in DELIVERY_PARTS if part in options.parts]
    with (
        smtp_sink(options.smtp_delay_s) as slow,
        smtp_sink() as instant,
        lean_smtp_sink() as lean,
        webhook_sink(options.webhook_delay_s) as hook,
    ):
        smtp = {EMAIL_SLOW: slow, EMAIL_INSTANT: instant}
        for round_index in range(1, options.rounds + 1):
            for part in delivery_parts:
                for way, spec, sink in _ways(part, smtp, hook, secret):
                    run_dir = work_dir / f"round{round_index}-{part}-{way}"
                    run = distance_once(part, way, spec, sink, round_index, options, run_dir)
                    collected.runs.append(run)
                    _say_run(run, options.rounds, say)
        if PACE in options.parts:
            capacities = {
                AIOSMTPD: median_or_zero(
                    run.api_rps
                    for run in collected.runs
                    if run.part == EMAIL_INSTANT and run.way == SERVICE
                ),
                LEAN: 0.0,
            }
            sinks = {LEAN: lean, AIOSMTPD: instant}
            for receiver, sink in sinks.items():
                try:
                    pace = _pace(receiver, sink, capacities[receiver], options, work_dir, say)
                except HarnessError as exc:  # the delivery parts' figures are kept
                    collected.pace_error = str(exc)
                    say(f"  pace FAILED: {exc}")
                    return collected
                if receiver == LEAN:
                    collected.pace = pace
                else:
                    collected.pace_aiosmtpd = pace
    return collected


def _pace(
    receiver: str,
    sink: SmtpSink,
    capacity: float,
    options: DistanceOptions,
    work_dir: Path,
    say: Say,
) -> PaceRun:
    """The pace run against ``sink``, at ``pace_share`` of ``capacity`` (measured here, with
    this SMTP server, when 0)."""
    if capacity == 0:
        say(f"  pace ({receiver}): measuring the service's API req/s with email on first")
        spec = email_spec(SERVICE, sink)
        run_dir = work_dir / f"capacity-{receiver}"
        capacity = distance_once(EMAIL_INSTANT, SERVICE, spec, sink, 0, options, run_dir).api_rps
    if capacity <= 0:
        raise HarnessError("the service's API req/s measured 0: no rate for the pace run")
    pace = pace_once(receiver, sink, capacity, options, work_dir / f"pace-{receiver}")
    say(
        f"  pace ({receiver}): {pace.achieved_rate:,.0f} req/s for {pace.seconds:g} s"
        f" ({options.pace_share:.0%} of {capacity:,.0f}); backlog at the end"
        f" {pace.backlog:,} = {pace.backlog_s:.2f} s of traffic; CPU: service"
        f" {pace.service_cores:.2f}, SMTP server {pace.receiver_cores:.2f} of a core"
    )
    return pace


def median_or_zero(values: Iterable[float]) -> float:
    listed = list(values)
    return median(listed) if listed else 0.0


def _paired(
    runs: Sequence[DistanceRun], part: str, value: Callable[[DistanceRun], float], over: str
) -> list[float]:
    """Per round: ``value`` of ``over`` (a way) divided by the service's, or the service's by
    the guide's (``over`` = "service")."""
    ratios = []
    for round_index in sorted({run.round for run in runs}):
        here = {run.way: run for run in runs if run.part == part and run.round == round_index}
        if SERVICE in here and over in here:
            top, bottom = value(here[over]), value(here[SERVICE])
            if bottom > 0:
                ratios.append(top / bottom)
    return ratios


def _seconds(run: DistanceRun) -> float:
    return math.inf if run.all_in_s is None else run.all_in_s


def summarise(runs: Sequence[DistanceRun]) -> dict[str, Any]:
    """Per part and way: medians; per part, the service's ratios to the other ways, round by
    round: ``faster`` (their seconds over the service's) and ``api`` (the service's req/s
    over theirs)."""
    parts: dict[str, Any] = {}
    for part in DELIVERY_PARTS:
        mine = [run for run in runs if run.part == part]
        if not mine:
            continue
        ways: dict[str, Any] = {}
        for way in dict.fromkeys(run.way for run in mine):
            these = [run for run in mine if run.way == way]
            complete = [run.all_in_s for run in these if run.all_in_s is not None]
            faster = _paired(runs, part, _seconds, way)
            api = [1 / ratio for ratio in _paired(runs, part, lambda r: r.api_rps, way) if ratio]
            ways[way] = {
                "runs": len(these),
                "api_rps": median(run.api_rps for run in these),
                "all_in_s": median(complete) if len(complete) == len(these) else None,
                "per_s": median(run.per_s for run in these),
                "delivered_during_load": median(run.delivered_during_load for run in these),
                "acked": median(run.acked for run in these),
                "lost": sum(run.lost for run in these),
                "repeats": sum(run.repeats for run in these),
                "non_200": sum(run.non_200 for run in these),
                "listen_overflows": median(run.listen_overflows for run in these),
                "server_cpu": median(
                    run.server_cpu_s / run.all_in_s for run in these if run.all_in_s
                )
                if complete
                else None,
                "service_faster": median(faster) if faster else None,
                "service_faster_per_round": faster,
                "service_api_ratio": median(api) if api else None,
                "service_api_ratio_per_round": api,
            }
        parts[part] = ways
    return parts


def _ratio(parts: dict[str, Any], part: str, way: str, name: str) -> float | None:
    value = parts.get(part, {}).get(way, {}).get(name)
    return None if value is None else float(value)


def goals(parts: dict[str, Any], pace: PaceRun | None) -> list[Goal]:
    backlog = pace.backlog_s if pace is not None else None
    slow = _ratio(parts, EMAIL_SLOW, GUIDE, "service_faster")
    slow_goal = at_least(
        "50 ms SMTP server: service first request -> all delivered, faster than the guide's",
        slow,
        SLOW_FASTER_GOAL,
    )
    return [
        replace(slow_goal, target=f"{slow_goal.target} (aim {SLOW_FASTER_AIM:.0f}x)"),
        at_least(
            "50 ms SMTP server: service API req/s vs the guide's",
            _ratio(parts, EMAIL_SLOW, GUIDE, "service_api_ratio"),
            SLOW_API_GOAL,
        ),
        at_least(
            "instant SMTP server: service first request -> all delivered, faster than the guide's",
            _ratio(parts, EMAIL_INSTANT, GUIDE, "service_faster"),
            INSTANT_FASTER_GOAL,
        ),
        at_least(
            "200 ms webhook receiver: service first request -> all delivered, faster than the"
            " guide's",
            _ratio(parts, WEBHOOK_SLOW, GUIDE, "service_faster"),
            WEBHOOK_FASTER_GOAL,
        ),
        Goal(
            "keeping pace: backlog at the load's end, in seconds of traffic",
            f"<= {BACKLOG_GOAL_S:g} s",
            backlog,
            "-" if backlog is None else f"{backlog:.2f} s",
            None if backlog is None else backlog <= BACKLOG_GOAL_S,
        ),
    ]


GOAL_PARTS = (EMAIL_SLOW, EMAIL_SLOW, EMAIL_INSTANT, WEBHOOK_SLOW, PACE)
"""The part each of ``goals``'s entries is measured by, in order."""


def _fmt(value: float | None, form: str, none: str = "-") -> str:
    return none if value is None else format(value, form)


def format_part(part: str, ways: dict[str, Any], options: DistanceOptions) -> str:
    warmup, count = options.count(part)
    unit = "webhooks" if part == WEBHOOK_SLOW else "emails"
    rows = [
        (
            way,
            f"{data['api_rps']:,.0f}",
            _fmt(data["service_api_ratio"], ".2f") + ("x" if data["service_api_ratio"] else ""),
            _fmt(data["all_in_s"], ".2f", "never (lost)"),
            f"{data['per_s']:,.0f}",
            _fmt(data["service_faster"], ".2f") + ("x" if data["service_faster"] else ""),
            f"{data['delivered_during_load']:,.0f}/{data['acked']:,.0f}",
            f"{data['lost']:,}",
            f"{data['repeats']:,}",
            _fmt(data["server_cpu"], ".2f"),
            f"{data['listen_overflows']:,.0f}",
        )
        for way, data in ways.items()
    ]
    header = (
        f"{part} ({count:,} {unit} after {warmup:,})",
        "API req/s",
        "service API vs",
        "all in, s",
        f"{unit}/s",
        "service faster",
        "in during load",
        "lost",
        "repeats",
        "server cpu",
        "listen overflows",
    )
    return format_rows(header, rows)


def format_pace(runs: Sequence[PaceRun]) -> str:
    rows = [
        (
            f"service, instant SMTP server ({pace.receiver})",
            f"{pace.capacity_rps:,.0f}",
            f"{pace.achieved_rate:,.0f}",
            f"{pace.acked:,}",
            f"{pace.received_by_end:,}",
            f"{pace.non_200:,}",
            f"{pace.connections:,}",
            f"{pace.backlog:,}",
            f"{pace.backlog_s:.2f}",
            _fmt(pace.drained_s, ".2f", "never (lost)"),
            f"{pace.lost:,}",
            f"{pace.repeats:,}",
            f"{pace.service_cores:.2f}",
            f"{pace.receiver_cores:.2f}",
        )
        for pace in runs
    ]
    header = (
        f"pace ({runs[0].seconds:g} s open loop)",
        "capacity req/s",
        "offered req/s",
        "acked",
        "in by the end",
        "not 200",
        "connections",
        "backlog",
        "backlog, s",
        "drained in, s",
        "lost",
        "repeats",
        "service cores",
        "SMTP server cores",
    )
    return format_rows(header, rows)


def format_goal_commands(listed: Sequence[Goal], commands: Sequence[str]) -> str:
    return format_rows(
        ("goal", "command"),
        [(goal.name, command) for goal, command in zip(listed, commands, strict=True)],
    )


def run(
    options: DistanceOptions, work_dir: Path, say: Say = print, argv: Sequence[str] = ()
) -> tuple[dict[str, Any], bool]:
    """Run the chosen parts; the JSON to save, and True (no log is checked here: losses are
    reported as figures)."""
    data = results_head(options.to_json(), say)
    data["command"] = shlex.join([*COMMAND.split(), *argv])
    say(
        f"{options.rounds} round(s) of {', '.join(p for p in options.parts if p != PACE)}"
        f" over {options.concurrency} connections"
        + (f"; then {options.pace_seconds:g} s of open-loop load" if PACE in options.parts else "")
    )
    collected = collect(options, work_dir, say)
    parts = summarise(collected.runs)
    listed = goals(parts, collected.pace)
    commands = [options.command(part) for part in GOAL_PARTS]
    data["parts"] = parts
    data["runs"] = [run.to_json() for run in collected.runs]
    data["pace"] = collected.pace.to_json() if collected.pace is not None else None
    reference = collected.pace_aiosmtpd
    data["pace_aiosmtpd"] = reference.to_json() if reference is not None else None
    data["pace_error"] = collected.pace_error
    data["goals"] = [
        {**goal.to_json(), "command": command}
        for goal, command in zip(listed, commands, strict=True)
    ]
    tables = [format_part(part, ways, options) for part, ways in parts.items()]
    paced = [run for run in (collected.pace, collected.pace_aiosmtpd) if run is not None]
    if paced:
        tables.append(format_pace(paced))
    tables.append(format_goals(listed))
    tables.append(format_goal_commands(listed, commands))
    data["tables"] = tables
    return data, True


def parse_options(argv: Sequence[str] | None = None) -> DistanceOptions:
    defaults = DistanceOptions()
    parser = argparse.ArgumentParser(
        prog=COMMAND, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", default=",".join(PARTS), help=f"from: {', '.join(PARTS)}")
    parser.add_argument(
        "--emails", type=int, help=f"measured notifications per email run ({defaults.emails:,})"
    )
    parser.add_argument("--warmup", type=int, help=f"email warm-up ({defaults.warmup})")
    parser.add_argument(
        "--webhooks",
        type=int,
        help=f"measured notifications per webhook run ({defaults.webhooks:,})",
    )
    parser.add_argument("--webhook-warmup", type=int, help=f"({defaults.webhook_warmup})")
    parser.add_argument(
        "--rounds",
        type=int,
        help=f"interleaved rounds of the delivery parts ({defaults.rounds}); pace runs once",
    )
    parser.add_argument("--concurrency", type=int, help=f"connections ({defaults.concurrency})")
    parser.add_argument(
        "--smtp-delay",
        type=float,
        help=f"seconds per message, slow server ({defaults.smtp_delay_s})",
    )
    parser.add_argument(
        "--webhook-delay", type=float, help=f"seconds per request ({defaults.webhook_delay_s})"
    )
    parser.add_argument(
        "--pace-seconds", type=float, help=f"open-loop seconds ({defaults.pace_seconds:g})"
    )
    parser.add_argument(
        "--pace-share", type=float, help=f"share of the API capacity ({defaults.pace_share})"
    )
    parser.add_argument(
        "--delivery",
        choices=("inline", "process"),
        help="the service row: inline, uvicorn service.main:app delivering on its event loop "
        "(the default); process, notify-service: the API and its delivery process",
    )
    parser.add_argument("--out", type=Path, help=f"results directory ({RESULTS_DIR})")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"small counts, one round, {QUICK.pace_seconds:g} s of pace, into a temp dir",
    )
    args = parser.parse_args(argv)
    parts = chosen_parts(parser, args.parts, PARTS)
    out = results_dir(args.out, quick=args.quick, name="distance")
    chosen = {
        "emails": args.emails,
        "warmup": args.warmup,
        "webhooks": args.webhooks,
        "webhook_warmup": args.webhook_warmup,
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "smtp_delay_s": args.smtp_delay,
        "webhook_delay_s": args.webhook_delay,
        "pace_seconds": args.pace_seconds,
        "pace_share": args.pace_share,
        "delivery": args.delivery,
    }
    base = QUICK if args.quick else defaults
    overrides = {key: value for key, value in chosen.items() if value is not None}
    return replace(base, **overrides, parts=parts, out=out)


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    options = parse_options(given)
    return run_and_save(
        lambda work_dir: run(options, work_dir, argv=given),
        options.out / "distance.json",
        "bench-distance-runs-",
    )


if __name__ == "__main__":
    raise SystemExit(main())
