"""Per-server summaries (ratios to bare taken round by round), the table and the JSON file."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median
from typing import Any

from bench.measure import RunResult
from bench.paths import save_json
from bench.servers import ServerSpec

BASELINE = "bare"
REFERENCE = "same-signature"
"""The second reference: ``rps_vs_reference`` is each server's throughput against it."""
NOISY_OTHER_CPU = 0.25
"""Share of a core used by other processes above which a run is flagged as noisy."""


@dataclass(frozen=True)
class Summary:
    """One server over all its runs; medians unless named otherwise."""

    name: str
    runs: int
    writes_log: bool
    rps: float
    p50_ms: float
    p99_ms: float
    rps_ratio: float | None
    rps_vs_reference: float | None
    """Req/s against same-signature, pair by pair (#3's "the background work costs ≤ 5 %")."""
    p99_ratio: float | None
    rss_mb: float
    rss_ratio: float | None
    helper_rss_mb: dict[str, float]
    """The redis row's worker and redis-server: median peak RSS, by name."""
    pending_median: float | None
    pending_max: int | None
    drain_ms_median: float | None
    drain_ms_max: float | None
    undrained_runs: int
    acked: int
    missing: int
    duplicated: int
    unexpected: int
    exactly_once: bool
    unclean_exits: int
    """Runs whose server (or its worker or redis-server) did not exit cleanly on SIGTERM."""
    non_200: dict[int, int]
    client_cpu: float
    """Share of one core the load generator used during the measured phase."""
    server_cpu: float
    """Share of one core the server (with its worker and Redis, if any) used meanwhile."""
    other_cpu: float
    """Share of one core used by every other process meanwhile (noise, if large)."""
    steal: float
    """Share of one core the hypervisor withheld meanwhile."""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["non_200"] = {str(status): n for status, n in self.non_200.items()}
        return data


def _paired_ratio(
    runs: Sequence[RunResult], baseline: dict[int, RunResult], metric: Callable[[RunResult], float]
) -> float | None:
    """Median over rounds of metric(run) / metric(baseline run of the same round)."""
    ratios = [
        metric(run) / metric(baseline[run.round])
        for run in runs
        if run.round in baseline and metric(baseline[run.round]) > 0
    ]
    return median(ratios) if ratios else None


def _drain_stats(runs: Sequence[RunResult]) -> tuple[float | None, float | None, int]:
    """Median and max drain time (None when infinite) and the count of undrained runs."""
    times = [math.inf if run.drain_ms is None else run.drain_ms for run in runs]
    middle, worst = median(times), max(times)
    undrained = sum(1 for run in runs if run.drain_ms is None)
    return (
        None if math.isinf(middle) else middle,
        None if math.isinf(worst) else worst,
        undrained,
    )


def _helper_rss_mb(runs: Sequence[RunResult]) -> dict[str, float]:
    by_name: dict[str, list[int]] = {}
    for run in runs:
        for name, kb in run.helper_peak_rss_kb.items():
            by_name.setdefault(name, []).append(kb)
    return {name: median(kbs) / 1024 for name, kbs in sorted(by_name.items())}


def summarize_server(
    spec: ServerSpec,
    runs: Sequence[RunResult],
    baseline: dict[int, RunResult],
    reference: dict[int, RunResult] | None = None,
) -> Summary:
    pending = [run.pending_at_stop for run in runs if run.pending_at_stop is not None]
    drain_median, drain_max, undrained = _drain_stats(runs) if spec.writes_log else (None, None, 0)
    non_200: Counter[int] = Counter()
    for run in runs:
        non_200.update(run.non_200)
    return Summary(
        name=spec.name,
        runs=len(runs),
        writes_log=spec.writes_log,
        rps=median(run.rps for run in runs),
        p50_ms=median(run.p50_ms for run in runs),
        p99_ms=median(run.p99_ms for run in runs),
        rps_ratio=_paired_ratio(runs, baseline, lambda run: run.rps),
        rps_vs_reference=_paired_ratio(runs, reference or {}, lambda run: run.rps),
        p99_ratio=_paired_ratio(runs, baseline, lambda run: run.p99_ms),
        rss_mb=median(run.peak_rss_kb for run in runs) / 1024,
        rss_ratio=_paired_ratio(runs, baseline, lambda run: run.peak_rss_kb),
        helper_rss_mb=_helper_rss_mb(runs),
        pending_median=median(pending) if pending else None,
        pending_max=max(pending) if pending else None,
        drain_ms_median=drain_median,
        drain_ms_max=drain_max,
        undrained_runs=undrained,
        acked=sum(run.acked for run in runs),
        missing=sum(run.missing for run in runs),
        duplicated=sum(run.duplicated for run in runs),
        unexpected=sum(run.unexpected for run in runs),
        exactly_once=all(run.exactly_once for run in runs),
        unclean_exits=sum(1 for run in runs if not run.clean_exit),
        non_200=dict(non_200),
        client_cpu=median(run.client_cpu_s / run.duration_s for run in runs),
        server_cpu=median(run.server_cpu_s / run.duration_s for run in runs),
        other_cpu=median(run.other_cpu_s / run.duration_s for run in runs),
        steal=median(run.steal_s / run.duration_s for run in runs),
    )


def summarize(specs: Sequence[ServerSpec], runs: Sequence[RunResult]) -> list[Summary]:
    """One summary per server that has runs, in table order."""
    baseline = {run.round: run for run in runs if run.server == BASELINE}
    reference = {run.round: run for run in runs if run.server == REFERENCE}
    summaries = []
    for spec in specs:
        own = [run for run in runs if run.server == spec.name]
        if own:
            summaries.append(summarize_server(spec, own, baseline, reference))
    return summaries


def _number(value: float | None, digits: int = 0, suffix: str = "") -> str:
    return "-" if value is None else f"{value:,.{digits}f}{suffix}"


def _exactly_once_cell(summary: Summary) -> str:
    if not summary.exactly_once:
        return f"FAIL {summary.missing} missing, {summary.duplicated} dup"
    if not summary.writes_log:
        return "n/a (no log)"
    return f"ok ({summary.acked:,} lines)"


def _drain_cell(summary: Summary) -> str:
    if not summary.writes_log:
        return "-"
    worst = _number(summary.drain_ms_max, 1) if summary.undrained_runs == 0 else ">10 s"
    return f"{_number(summary.drain_ms_median, 1)} / {worst}"


def _row(summary: Summary) -> list[str]:
    pending = (
        f"{_number(summary.pending_median)} / {_number(summary.pending_max)}"
        if summary.writes_log
        else "-"
    )
    return [
        summary.name,
        _number(summary.rps),
        _number(summary.rps_ratio, 2, "x"),
        _number(summary.rps_vs_reference, 3, "x"),
        _number(summary.p50_ms, 1),
        _number(summary.p99_ms, 1),
        _number(summary.p99_ratio, 2, "x"),
        _number(summary.rss_mb, 1),
        _number(summary.rss_ratio, 2, "x"),
        pending,
        _drain_cell(summary),
        f"{summary.client_cpu:.0%} / {summary.server_cpu:.0%} / {summary.other_cpu:.0%}",
        _exactly_once_cell(summary),
    ]


_HEADER = [
    "server",
    "req/s",
    "vs bare",
    "vs same-sig",
    "p50 ms",
    "p99 ms",
    "p99 vs bare",
    "RSS MB",
    "RSS vs bare",
    "pending med/max",
    "drain ms med/max",
    "CPU client/server/other",
    "exactly-once",
]


def format_table(summaries: Sequence[Summary]) -> str:
    """A plain-text table: name left-aligned, numbers right-aligned."""
    rows = [_HEADER, *(_row(summary) for summary in summaries)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER))]

    def line(cells: list[str]) -> str:
        first, *rest = cells
        aligned = [first.ljust(widths[0])]
        aligned += [cell.rjust(width) for cell, width in zip(rest, widths[1:], strict=True)]
        return "  ".join(aligned)

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(rows[0]), rule, *(line(row) for row in rows[1:])])


def progress_line(run: RunResult, rounds: int) -> str:
    """One line about a finished run, printed as the benchmark goes."""
    text = (
        f"round {run.round}/{rounds}  {run.server:<18} {run.rps:>8,.0f} req/s"
        f"  p99 {run.p99_ms:6.1f} ms  RSS {run.peak_rss_kb / 1024:5.1f} MB"
        f"  CPU client {run.client_cpu_s / run.duration_s:4.0%}"
        f" server {run.server_cpu_s / run.duration_s:4.0%}"
        f" other {run.other_cpu_s / run.duration_s:4.0%}"
    )
    for name, kb in run.helper_peak_rss_kb.items():
        text += f"  {name} RSS {kb / 1024:.1f} MB"
    if run.writes_log:
        text += f"  pending {run.pending_at_stop}  drain {_number(run.drain_ms, 1)} ms"
    if run.non_200:
        text += f"  non-200 {dict(sorted(run.non_200.items()))}"
    if not run.exactly_once:
        text += f"  EXACTLY-ONCE FAILED ({run.missing} missing, {run.duplicated} duplicated)"
    if not run.clean_exit:
        text += f"  UNCLEAN EXIT ({'killed' if run.exit_code is None else run.exit_code})"
    return text


def noisy_runs(runs: Sequence[RunResult]) -> list[RunResult]:
    """Runs during which other processes used a noticeable share of the CPU."""
    return [run for run in runs if run.other_cpu_s / run.duration_s > NOISY_OTHER_CPU]


def write_json(
    path: Path,
    machine: dict[str, Any],
    options: dict[str, Any],
    summaries: Sequence[Summary],
    runs: Sequence[RunResult],
    elapsed_s: float,
) -> None:
    document = {
        "machine": machine,
        "options": options,
        "elapsed_s": round(elapsed_s, 1),
        "ok": all(summary.exactly_once for summary in summaries),
        "noisy_runs": len(noisy_runs(runs)),
        "servers": [summary.to_json() for summary in summaries],
        "runs": [run.to_json() for run in runs],
    }
    save_json(path, document)
