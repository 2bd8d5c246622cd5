"""One measurement: a fresh server (and its helpers), one load generator process, then the log
checks."""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from bench.cpu import MachineCpu
from bench.errors import HarnessError
from bench.loadgen import LoadResult
from bench.logcheck import LogTail, file_size
from bench.options import Options
from bench.paths import REPO_ROOT
from bench.process import HOST, tail_text
from bench.servers import LOG_FILE_NAME, ServerSpec
from bench.stack import Stack, running_stack

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
DRAIN_LIMIT_S = 10.0
POLL_INTERVAL_S = 0.002

_Cpu = tuple[float, dict[str, float]]
"""CPU seconds of all the row's processes, and of the helpers by name."""


@dataclass(frozen=True)
class RunResult:
    """Everything measured in one run of one server."""

    server: str
    round: int
    requests: int
    acked: int
    non_200: dict[int, int]
    rps: float
    p50_ms: float
    p99_ms: float
    duration_s: float
    startup_s: float
    peak_rss_kb: int
    """The API process's; the redis row's other processes are in ``helper_peak_rss_kb``."""
    server_cpu_s: float
    """CPU time of the row's processes during the measured phase: the API and, for the redis
    row, the worker and redis-server (also in ``helper_cpu_s``)."""
    client_cpu_s: float
    machine_cpu_s: float
    """CPU time of the whole machine during the measured phase (all processes)."""
    steal_s: float
    writes_log: bool
    pending_at_stop: int | None
    """Acknowledged lines not in the log when the load generator reported its last response."""
    drain_ms: float | None
    """Last response until every acknowledged line was in the log; None if it never was."""
    snapshot_lag_ms: float
    """How late after the last response the log was counted for ``pending_at_stop``."""
    missing: int
    duplicated: int
    unexpected: int
    exit_code: int | None
    """None when the server had to be killed; uvicorn re-raises SIGTERM, so -15 is clean."""
    helper_cpu_s: dict[str, float]
    """The redis row's worker and redis-server: CPU time during the measured phase."""
    helper_peak_rss_kb: dict[str, int]
    """Their peak RSS (the worker's: its managing process plus the one it forks)."""
    helper_exits: dict[str, int | None]
    """Their exit codes after SIGTERM (None: killed)."""
    stream_left: int | None
    """Redis stream entries the worker had not written when it was stopped."""

    @property
    def clean_exit(self) -> bool:
        codes = [self.exit_code, *self.helper_exits.values()]
        return all(code in (0, -signal.SIGTERM) for code in codes)

    @property
    def exactly_once(self) -> bool:
        return self.missing == 0 and self.duplicated == 0

    @property
    def other_cpu_s(self) -> float:
        """CPU time used by neither the server nor the load generator (noise).

        Clamped at 0: the three readings tick in 10 ms steps and are not simultaneous.
        """
        return max(0.0, self.machine_cpu_s - self.server_cpu_s - self.client_cpu_s)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["non_200"] = {str(status): n for status, n in self.non_200.items()}
        data["exactly_once"] = self.exactly_once
        data["other_cpu_s"] = self.other_cpu_s
        data["clean_exit"] = self.clean_exit
        return data


@dataclass(frozen=True)
class _LoadPhase:
    load: LoadResult
    done_wall: float
    """When the last response arrived, as reported by the load generator."""
    log_size_at_done: int
    snapshot_wall: float
    server_cpu_s: float
    helper_cpu_s: dict[str, float]
    machine_cpu: MachineCpu
    log_complete_wall: float | None


def _poll_until(tail: LogTail, condition: Callable[[], bool], deadline: float) -> float | None:
    """Re-read the log every ~2 ms until ``condition`` holds; when it did, or None."""
    while True:
        tail.poll()
        if condition():
            return time.time()
        if time.time() >= deadline:
            return None
        time.sleep(POLL_INTERVAL_S)


def _read_announcement(stdout: IO[str], expected: str, stderr_path: Path) -> list[str]:
    words = stdout.readline().split()
    if not words or words[0] != expected:
        detail = tail_text(stderr_path)
        raise HarnessError(f"load generator did not announce {expected}: {words}\n{detail}")
    return words[1:]


def _loadgen_command(port: int, options: Options, result_path: Path) -> list[str]:
    return [
        *(sys.executable, "-m", "bench.loadgen", "--host", HOST, "--port", str(port)),
        *("--requests", str(options.requests), "--concurrency", str(options.concurrency)),
        *("--warmup", str(options.warmup), "--token", secrets.token_hex(4)),
        *("--timeout", str(30 + options.requests / 250), "--out", str(result_path)),
    ]


def _cpu_since(stack: Stack, api_start: float, helpers_start: dict[str, float]) -> _Cpu:
    api = stack.server.cpu_seconds() - api_start
    helpers = {name: s - helpers_start[name] for name, s in stack.helper_cpu_seconds().items()}
    return api + sum(helpers.values()), helpers


def _run_loadgen(
    stack: Stack, tail: LogTail, spec: ServerSpec, options: Options, run_dir: Path
) -> _LoadPhase:
    """Drive the server from a load generator process, reacting to its announcements.

    At ``START`` it notes CPU times; at ``DONE`` it first notes the log's size (what the
    log held when the last response arrived), then CPU times, then waits until the log
    holds as many notification lines as there were acknowledgements (or the drain limit).
    """
    result_path = run_dir / "loadgen.json"
    stderr_path = run_dir / "loadgen.err"
    command = _loadgen_command(stack.server.port, options, result_path)
    with (
        stderr_path.open("w") as stderr,
        subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True
        ) as loadgen,
    ):
        assert loadgen.stdout is not None
        try:
            _read_announcement(loadgen.stdout, "START", stderr_path)
            machine_start, api_start = MachineCpu.read(), stack.server.cpu_seconds()
            helpers_start = stack.helper_cpu_seconds()
            done = _read_announcement(loadgen.stdout, "DONE", stderr_path)
            log_size = file_size(tail.path)
            snapshot_wall = time.time()
            machine_cpu = MachineCpu.read() - machine_start
            server_cpu, helper_cpu = _cpu_since(stack, api_start, helpers_start)
            done_wall, acked = float(done[0]), int(done[1])
            complete_wall = None
            if spec.writes_log:
                deadline = done_wall + DRAIN_LIMIT_S
                complete_wall = _poll_until(tail, lambda: tail.lines >= acked, deadline)
            loadgen.stdout.read()
            code = loadgen.wait(timeout=60)
        finally:
            if loadgen.poll() is None:
                loadgen.kill()
    if code != 0:
        raise HarnessError(f"load generator exited with {code}:\n{tail_text(stderr_path)}")
    load = LoadResult.from_json(json.loads(result_path.read_text()))
    return _LoadPhase(
        load, done_wall, log_size, snapshot_wall, server_cpu, helper_cpu, machine_cpu, complete_wall
    )


def _drain_ms(pending: int | None, done_wall: float, complete_wall: float | None) -> float | None:
    """0 when nothing was pending, None when the log never caught up (or is not checked)."""
    if pending == 0:
        return 0.0
    if pending is None or complete_wall is None:
        return None
    return (complete_wall - done_wall) * 1000


def run_once(spec: ServerSpec, round_index: int, options: Options, run_dir: Path) -> RunResult:
    """Start a fresh server (and helpers) in ``run_dir``, load it, check its log, stop it."""
    run_dir.mkdir(parents=True)
    tail = LogTail(run_dir / LOG_FILE_NAME)
    with running_stack(spec, run_dir, REPO_ROOT, READY_TIMEOUT_S) as stack:
        startup_s = stack.server.wait_ready(READY_TIMEOUT_S)
        phase = _run_loadgen(stack, tail, spec, options, run_dir)
        expected = phase.load.acked_emails if spec.writes_log else []
        complete_wall = phase.log_complete_wall
        if spec.writes_log and not tail.has_all(expected):
            # Lines of unacknowledged emails made up the count: wait for the real ones.
            deadline = phase.done_wall + DRAIN_LIMIT_S
            complete_wall = _poll_until(tail, lambda: tail.has_all(expected), deadline)
        peak_rss_kb = stack.server.peak_rss_kb()
        stopped = stack.stop(STOP_TIMEOUT_S, DRAIN_LIMIT_S)
    tail.poll()
    check = tail.check(expected)
    pending = tail.pending_at(phase.log_size_at_done, expected) if spec.writes_log else None
    load = phase.load
    return RunResult(
        server=spec.name,
        round=round_index,
        requests=load.requests,
        acked=len(load.acked_emails),
        non_200=load.non_200,
        rps=load.rps,
        p50_ms=load.p50_ms,
        p99_ms=load.p99_ms,
        duration_s=load.duration_s,
        startup_s=startup_s,
        peak_rss_kb=peak_rss_kb,
        server_cpu_s=phase.server_cpu_s,
        client_cpu_s=load.client_cpu_s,
        machine_cpu_s=phase.machine_cpu.busy,
        steal_s=phase.machine_cpu.steal,
        writes_log=spec.writes_log,
        pending_at_stop=pending,
        drain_ms=_drain_ms(pending, phase.done_wall, complete_wall),
        snapshot_lag_ms=(phase.snapshot_wall - phase.done_wall) * 1000,
        missing=check.missing,
        duplicated=check.duplicated,
        unexpected=check.unexpected,
        exit_code=stopped.exit_code,
        helper_cpu_s=phase.helper_cpu_s,
        helper_peak_rss_kb=stopped.helper_peak_rss_kb,
        helper_exits=stopped.helper_exits,
        stream_left=stopped.stream_left,
    )
