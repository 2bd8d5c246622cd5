"""``python -m bench.recovery``: how fast delivery resumes after a receiver's outage (issue 22).

Each scenario starts the service as real processes with its default settings (only paths,
ports and the channel's destination set), proves the channel works with one warm-up
notification, then takes the receiver down, posts notifications through the HTTP API while it
is down, brings it back and measures **the seconds from its return until every accepted
notification has arrived**:

- ``smtp-10s``: the SMTP server (``bench.smtp_sink``: aiosmtpd on a thread of this process) is
  stopped, so its port refuses connections, for 10 s while 50 notifications are posted at once;
  then a new server starts on the same port. Goal: all 50 within 15 s of its return.
- ``webhook-503-10s``: the webhook receiver (``bench.webhook_sink``: a bare asyncio HTTP server,
  a thread of this process) answers ``503`` (no ``Retry-After``) for 10 s while 20 notifications
  are posted at once; then ``200``. Goal: all 20 within 15 s of its recovery.
- ``smtp-60s``: the SMTP server is down for 60 s while 300 notifications are posted, 5 a second;
  then it comes back. Goal: all 300 within 35 s of its return.

Each runs on two backends: ``local`` (one ``uvicorn service.main:app``: its SQLite outbox and
dispatchers) and ``redis`` (a fresh ``redis-server``, the API with ``NOTIFY_BACKEND=redis``
and ``--workers`` worker processes, ``python -m service.redis.worker``, which deliver).

Also counted: **lost** (accepted with 200 by the API, not received by the deadline) and
**repeats** (deliveries beyond the first of a notification: by ``X-Notification-Id`` for email,
by ``webhook-id`` for webhooks), goals 0 and 0. Waiting ends at the receiver's return +
``GIVE_UP_S`` (the old dispatcher is expected to miss the goals); after everything arrived the
harness waits ``SETTLE_S`` more for repeats. Every process is stopped at the end of its run, also
on an error or Ctrl-C. Results: a table, and ``recovery.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import operator
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from bench.arrivals import ArrivalLog
from bench.errors import HarnessError
from bench.machine import machine_info
from bench.options import results_dir
from bench.paths import REPO_ROOT, RESULTS_DIR, save_json
from bench.process import HOST, ServerProcess, running_server
from bench.redis_stack import running_redis, running_worker
from bench.servers import LOG_FILE_NAME, REDIS_MISSING, REDIS_STREAM, ServerSpec
from bench.smtp_sink import Recorder, SmtpSink, smtp_sink
from bench.webhook_sink import webhook_sink

BACKENDS = ("local", "redis")
GIVE_UP_S = 150.0
"""Waiting for the deliveries ends this long after the receiver's return."""
QUICK_GIVE_UP_S = 60.0
SETTLE_S = 2.0
"""After the last notification arrived, how long repeats are still waited for."""
READY_TIMEOUT_S = 30.0
WARMUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
POST_TIMEOUT_S = 10.0
POLL_S = 0.05
SMTP_FROM = "notify@example.com"
RESULT_FILE = "recovery.json"


@dataclass(frozen=True)
class Scenario:
    name: str
    channel: str
    """``smtp`` or ``webhook``."""
    outage_s: float
    notifications: int
    rate: float | None
    """Posts a second during the outage (None: all at once)."""
    goal_s: float


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("smtp-10s", "smtp", 10.0, 50, None, 15.0),
    Scenario("webhook-503-10s", "webhook", 10.0, 20, None, 15.0),
    Scenario("smtp-60s", "smtp", 60.0, 300, 5.0, 35.0),
)


def quick(scenario: Scenario) -> Scenario:
    """The smallest variant: a 1 s outage and 5 notifications, posted at once."""
    return replace(
        scenario, name=f"{scenario.name}-quick", outage_s=1.0, notifications=5, rate=None
    )


@dataclass(frozen=True)
class RecoveryOptions:
    scenarios: tuple[Scenario, ...] = SCENARIOS
    backends: tuple[str, ...] = BACKENDS
    workers: int = 2
    """Worker processes of the redis backend."""
    give_up_s: float = GIVE_UP_S
    out: Path = RESULTS_DIR
    quick: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "scenarios": [asdict(scenario) for scenario in self.scenarios],
            "backends": list(self.backends),
            "workers": self.workers,
            "give_up_s": self.give_up_s,
            "settle_s": SETTLE_S,
            "quick": self.quick,
            "out": str(self.out),
        }


@dataclass
class RecoveryRun:
    """One scenario on one backend."""

    scenario: str
    backend: str
    channel: str
    notifications: int
    goal_s: float
    accepted: int = 0
    """Posts answered 200 (with an ``X-Notification-Id``)."""
    rejected: int = 0
    """Posts answered otherwise, or not at all."""
    post_s: float = 0.0
    """From the first post to the last answer."""
    outage_s: float = 0.0
    """From the receiver going down to its return, as it happened."""
    recovered_s: float | None = None
    """From the return until every accepted notification had arrived (None: not by the
    deadline)."""
    first_after_return_s: float | None = None
    """From the return to the first arrival after it."""
    delivered: int = 0
    """Accepted notifications that arrived by the deadline."""
    lost: int = 0
    """Accepted notifications that had not arrived by the deadline."""
    repeats: int = 0
    """Arrivals beyond the first of a notification (the warm-up one included)."""
    during_outage: int = 0
    """Arrivals between the receiver going down and its return (must be 0)."""
    refused: int = 0
    """Webhook attempts answered 503 during the outage."""
    refused_at_s: list[float] = field(default_factory=list)
    """When those came, in seconds after the outage began: the dispatcher's retry rhythm."""
    arrivals_s: list[float] = field(default_factory=list)
    """First arrival of each accepted notification, seconds after the return, in order."""
    return_wall: float = 0.0
    """``time.time()`` of the return."""
    missing_states: dict[str, int] = field(default_factory=dict)
    """What ``GET /notifications/{id}`` said, at the deadline, of the channel's delivery of
    each notification not yet arrived (``retrying``: still pending, not lost for good)."""
    missing_next_attempt_s: float | None = None
    """The latest ``next_attempt_at`` among those, in seconds after the return."""
    missing_attempts_max: int | None = None

    @property
    def met(self) -> bool:
        return (
            self.recovered_s is not None
            and self.recovered_s <= self.goal_s
            and self.lost == 0
            and self.repeats == 0
        )

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met}


def new_secret() -> str:
    """A fresh ``NOTIFY_WEBHOOK_SECRET``: ``whsec_`` and the base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def service_spec(backend: str, destination: dict[str, str], log_path: Path) -> ServerSpec:
    """The service with default settings but for its log, its backend and the destination."""
    env = {"NOTIFY_LOG_PATH": str(log_path), **destination}
    if backend == "redis":
        env |= {
            "NOTIFY_BACKEND": "redis",
            "NOTIFY_REDIS_URL": "{redis_url}",
            "NOTIFY_REDIS_STREAM": REDIS_STREAM,
        }
    return ServerSpec(f"service-{backend}", "service.main", env=env, redis=backend == "redis")


@contextmanager
def running_service(
    backend: str, destination: dict[str, str], run_dir: Path, workers: int
) -> Iterator[ServerProcess]:
    """The API (and for ``redis`` a redis-server and ``workers`` workers), ready; every
    process is killed when the block exits."""
    spec = service_spec(backend, destination, run_dir / LOG_FILE_NAME)
    with ExitStack() as stack:
        redis_url = ""
        if backend == "redis":
            redis = stack.enter_context(running_redis(run_dir, READY_TIMEOUT_S))
            redis_url = redis.url
        server = stack.enter_context(running_server(spec, run_dir, REPO_ROOT, redis_url))
        server.wait_ready(READY_TIMEOUT_S)
        if backend == "redis":
            for number in range(1, workers + 1):
                worker_dir = run_dir / f"worker{number}"  # its cwd and output; the log is shared
                worker_dir.mkdir()
                stack.enter_context(
                    running_worker(spec, worker_dir, REPO_ROOT, redis_url, READY_TIMEOUT_S)
                )
        yield server


class Poster:
    """Posts notifications to the API; remembers the accepted ids."""

    def __init__(self, port: int) -> None:
        self._client = httpx.Client(base_url=f"http://{HOST}:{port}", timeout=POST_TIMEOUT_S)
        self.accepted: list[str] = []
        self.rejected = 0
        self._sent = 0

    def close(self) -> None:
        self._client.close()

    def post(self) -> str | None:
        self._sent += 1
        email = f"r{self._sent}-{secrets.token_hex(4)}@example.com"
        try:
            answer = self._client.post(
                f"/send-notification/{email}", json={"message": "recovery bench"}
            )
        except httpx.HTTPError:
            self.rejected += 1
            return None
        notification_id: str | None = answer.headers.get("x-notification-id")
        if answer.status_code != 200 or not notification_id:
            self.rejected += 1
            return None
        self.accepted.append(notification_id)
        return notification_id

    def delivery_state(self, notification_id: str) -> dict[str, Any] | None:
        """The delivery channel's entry (not the log's) of ``GET /notifications/{id}``."""
        try:
            answer = self._client.get(f"/notifications/{notification_id}")
        except httpx.HTTPError:
            return None
        if answer.status_code != 200:
            return None
        channels: dict[str, dict[str, Any]] = answer.json().get("channels", {})
        for name, state in channels.items():
            if name == "email" or name.startswith("webhook-"):
                return state
        return None

    def post_many(self, count: int, rate: float | None) -> None:
        started = time.monotonic()
        for index in range(count):
            if rate:
                wait = started + index / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            self.post()


def first_arrivals(log: ArrivalLog) -> tuple[dict[str, float], Counter[str]]:
    """Each notification's first arrival time, and how often each arrived."""
    first: dict[str, float] = {}
    counts: Counter[str] = Counter()
    for arrival in log.arrivals():
        if arrival.notification_id is None:
            continue
        counts[arrival.notification_id] += 1
        first.setdefault(arrival.notification_id, arrival.at)
    return first, counts


def wait_for_ids(log: ArrivalLog, ids: Sequence[str], deadline: float) -> bool:
    """Until every one of ``ids`` has arrived, or ``time.monotonic()`` passes ``deadline``."""
    wanted = set(ids)
    while True:
        seen = log.count()
        first, _ = first_arrivals(log)
        if wanted <= first.keys():
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        log.wait_for(partial(operator.lt, seen), timeout=min(left, 0.5))  # more than seen


class Receiver:
    """The scenario's destination, which can go down and come back."""

    log: ArrivalLog
    destination: dict[str, str]

    def go_down(self) -> None: ...

    def come_back(self) -> None: ...

    def refused_at(self) -> list[float]:
        return []


class SmtpReceiver(Receiver):
    """An SMTP server stopped (its port closed: connections refused) and started again on the
    same port, recording into the same log."""

    def __init__(self, stack: ExitStack) -> None:
        self._stack = stack
        self.recorder = Recorder()
        self.log = self.recorder
        self._current: ExitStack | None = None
        self._port = 0
        self._start()
        self.destination = {
            "NOTIFY_SMTP_URL": f"smtp://{HOST}:{self._port}",
            "NOTIFY_SMTP_FROM": SMTP_FROM,
        }
        stack.callback(self._stop)

    def _start(self) -> None:
        current = ExitStack()
        sink: SmtpSink = current.enter_context(
            smtp_sink(port=self._port or None, recorder=self.recorder)
        )
        self._port = sink.port
        self._current = current

    def _stop(self) -> None:
        current, self._current = self._current, None
        if current is not None:
            current.close()

    def go_down(self) -> None:
        self._stop()

    def come_back(self) -> None:
        try:
            self._start()
        except (RuntimeError, OSError) as exc:
            raise HarnessError(f"the SMTP server could not listen again: {exc}") from exc


class WebhookReceiver(Receiver):
    """An HTTP receiver that answers 503 while down."""

    def __init__(self, stack: ExitStack) -> None:
        sink = stack.enter_context(webhook_sink())
        self.receiver = sink.recorder
        self.log = sink.recorder
        self.destination = {
            "NOTIFY_WEBHOOK_URL": sink.url,
            "NOTIFY_WEBHOOK_SECRET": new_secret(),
        }

    def go_down(self) -> None:
        self.receiver.unavailable = True

    def come_back(self) -> None:
        self.receiver.unavailable = False

    def refused_at(self) -> list[float]:
        return list(self.receiver.refused)


def run_once(
    scenario: Scenario, backend: str, options: RecoveryOptions, run_dir: Path
) -> RecoveryRun:
    """One scenario on one backend, with fresh processes and a fresh receiver."""
    run_dir.mkdir(parents=True)
    result = RecoveryRun(
        scenario.name, backend, scenario.channel, scenario.notifications, scenario.goal_s
    )
    with ExitStack() as stack:
        receiver: Receiver = (
            SmtpReceiver(stack) if scenario.channel == "smtp" else WebhookReceiver(stack)
        )
        server = stack.enter_context(
            running_service(backend, receiver.destination, run_dir, options.workers)
        )
        poster = Poster(server.port)
        stack.callback(poster.close)
        warmup = poster.post()
        if warmup is None:
            raise HarnessError(server.died("refused the warm-up notification"))
        if not wait_for_ids(receiver.log, [warmup], time.monotonic() + WARMUP_TIMEOUT_S):
            raise HarnessError(server.died("did not deliver the warm-up notification"))

        down_wall = time.time()
        down = time.monotonic()
        receiver.go_down()
        poster.post_many(scenario.notifications, scenario.rate)
        result.post_s = time.monotonic() - down
        remaining = down + scenario.outage_s - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)  # the outage's length is what the scenario is about
        receiver.come_back()
        back_wall = time.time()
        back = time.monotonic()
        result.return_wall = back_wall
        result.outage_s = back_wall - down_wall

        ids = poster.accepted[1:]
        if wait_for_ids(receiver.log, ids, back + options.give_up_s):
            time.sleep(SETTLE_S)  # repeats that are still on their way
        first, counts = first_arrivals(receiver.log)
        refused = [at for at in receiver.refused_at() if at >= down_wall]
        missing = [(i, poster.delivery_state(i)) for i in ids if i not in first]

    states = Counter(state.get("status", "?") if state else "unknown" for _, state in missing)
    result.missing_states = dict(states)
    nexts = [_wall(state.get("next_attempt_at")) for _, state in missing if state]
    known = [at for at in nexts if at is not None]
    if known:
        result.missing_next_attempt_s = round(max(known) - back_wall, 1)
    attempts = [int(state.get("attempts", 0)) for _, state in missing if state]
    result.missing_attempts_max = max(attempts, default=None)

    result.accepted = len(ids)
    result.rejected = poster.rejected
    arrived = sorted(first[i] for i in ids if i in first)
    result.delivered = len(arrived)
    result.lost = len(ids) - len(arrived)
    result.repeats = sum(n - 1 for n in counts.values() if n > 1)
    result.during_outage = sum(1 for at in arrived if down_wall <= at < back_wall)
    after = [at - back_wall for at in arrived if at >= back_wall]
    result.arrivals_s = [round(at, 3) for at in after]
    result.first_after_return_s = round(after[0], 3) if after else None
    if result.lost == 0 and ids:
        result.recovered_s = round(max(0.0, arrived[-1] - back_wall), 3)
    result.refused = len(refused)
    result.refused_at_s = [round(at - down_wall, 3) for at in refused]
    return result


def _wall(rfc3339: Any) -> float | None:
    """An RFC 3339 time as ``time.time()`` seconds, or None."""
    if not isinstance(rfc3339, str):
        return None
    try:
        return datetime.datetime.fromisoformat(rfc3339).timestamp()
    except ValueError:
        return None


def _seconds(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else "-"


def format_table(runs: Sequence[RecoveryRun], give_up_s: float) -> str:
    header = (
        f"{'scenario':<21} {'backend':<7} {'s to all':>8} {'goal':>6} {'met?':<4}"
        f" {'lost':>5} {'repeats':>7} {'delivered by deadline':>21} {'first after':>11}"
        f" {'still retrying':>14}"
    )
    rows = [header, "-" * len(header)]
    for run in runs:
        recovered = f">{give_up_s:.0f}" if run.recovered_s is None else f"{run.recovered_s:.1f}"
        first = _seconds(run.first_after_return_s)
        retrying = run.missing_states.get("retrying", 0) + run.missing_states.get("queued", 0)
        rows.append(
            f"{run.scenario:<21} {run.backend:<7} {recovered:>8} {run.goal_s:>5.0f}s"
            f" {'yes' if run.met else 'NO':<4} {run.lost:>5} {run.repeats:>7}"
            f" {f'{run.delivered}/{run.accepted}':>21} {first:>11} {retrying:>14}"
        )
    rows.append(
        "s to all / first after: seconds from the receiver's return until every accepted"
        " notification / the first one arrived;\nlost: accepted, not arrived by the deadline"
        f" (the return + {give_up_s:g} s); still retrying: of those, what the API said was"
        " still pending (retrying or queued) then"
    )
    return "\n".join(rows)


def progress_line(run: RecoveryRun) -> str:
    refused = f", {run.refused} attempts answered 503" if run.channel == "webhook" else ""
    return (
        f"  {run.scenario} on {run.backend}: {run.accepted} accepted (posted in"
        f" {run.post_s:.1f} s), receiver down {run.outage_s:.1f} s{refused}; first arrival"
        f" {_seconds(run.first_after_return_s)} s after its return, all"
        f" {_seconds(run.recovered_s)} s after; {run.delivered} delivered, {run.lost} lost,"
        f" {run.repeats} repeats"
        + (
            f"; not arrived: {run.missing_states}, next attempt at the latest"
            f" {_seconds(run.missing_next_attempt_s)} s after the return"
            if run.missing_states
            else ""
        )
    )


def _commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip() or None


def run_all(
    options: RecoveryOptions, work_dir: Path, say: Callable[[str], None] = print
) -> list[RecoveryRun]:
    runs = []
    for scenario in options.scenarios:
        for backend in options.backends:
            say(
                f"{scenario.name} on {backend}: receiver down {scenario.outage_s:g} s,"
                f" {scenario.notifications} notifications"
                + (f" at {scenario.rate:g}/s" if scenario.rate else "")
            )
            run = run_once(scenario, backend, options, work_dir / f"{scenario.name}-{backend}")
            say(progress_line(run))
            runs.append(run)
    return runs


def results(options: RecoveryOptions, runs: Sequence[RecoveryRun], elapsed_s: float) -> Any:
    return {
        "kind": "recovery",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": _commit(),
        "machine": machine_info(),
        "settings": options.to_json(),
        "runs": [run.to_json() for run in runs],
        "table": format_table(runs, options.give_up_s),
        "elapsed_s": round(elapsed_s, 1),
    }


def _pick(parser: argparse.ArgumentParser, text: str, known: Sequence[str], what: str) -> list[str]:
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in known]
    if not chosen or unknown:
        parser.error(f"--{what} takes some of {', '.join(known)}")
    return chosen


def parse_options(argv: Sequence[str] | None = None) -> RecoveryOptions:
    names = [scenario.name for scenario in SCENARIOS]
    parser = argparse.ArgumentParser(
        prog="python -m bench.recovery",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--scenarios", default=",".join(names), help=f"from: {', '.join(names)}")
    parser.add_argument("--backends", help=f"from: {', '.join(BACKENDS)} (all; --quick: local)")
    parser.add_argument(
        "--workers", type=int, default=2, help="worker processes of the redis backend (2)"
    )
    parser.add_argument(
        "--give-up", type=float, help=f"seconds after the return to stop waiting ({GIVE_UP_S:g})"
    )
    parser.add_argument(
        "--out", type=Path, help=f"results directory ({RESULTS_DIR}; --quick: a temp dir)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="outage 1 s, 5 notifications posted at once, local backend unless --backends,"
        f" giving up after {QUICK_GIVE_UP_S:g} s",
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    picked = _pick(parser, args.scenarios, names, "scenarios")
    scenarios = tuple(scenario for scenario in SCENARIOS if scenario.name in picked)
    backends_text = args.backends or ("local" if args.quick else ",".join(BACKENDS))
    backends = tuple(_pick(parser, backends_text, BACKENDS, "backends"))
    give_up = args.give_up or (QUICK_GIVE_UP_S if args.quick else GIVE_UP_S)
    if args.quick:
        scenarios = tuple(quick(scenario) for scenario in scenarios)
    out = results_dir(args.out, quick=args.quick, name="recovery")
    return RecoveryOptions(scenarios, backends, args.workers, give_up, out, args.quick)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    if "redis" in options.backends and shutil.which("redis-server") is None:
        print(f"error: {REDIS_MISSING}", file=sys.stderr)
        return 2
    work_dir = Path(tempfile.mkdtemp(prefix="bench-recovery-runs-"))
    started = time.monotonic()
    try:
        runs = run_all(options, work_dir, partial(print, flush=True))  # progress, also to a file
    except HarnessError as exc:
        print(f"harness failed: {exc}\nruns kept in {work_dir}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted; every process stopped; runs kept in {work_dir}", file=sys.stderr)
        return 130
    elapsed = time.monotonic() - started
    data = results(options, runs, elapsed)
    print()
    print(data["table"])
    path = options.out / RESULT_FILE
    save_json(path, data)
    print(f"\nresults: {path}\ntook {elapsed:.0f} s")
    shutil.rmtree(work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
