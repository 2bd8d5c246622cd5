"""The benchmark's summary: ratios are taken round by round, then their median."""

from __future__ import annotations

from bench.measure import RunResult
from bench.report import format_table, summarize
from bench.servers import SERVERS


def _run(server: str, round_number: int, rps: float) -> RunResult:
    return RunResult(
        server=server,
        round=round_number,
        requests=1000,
        acked=1000,
        non_200={},
        rps=rps,
        p50_ms=10.0,
        p99_ms=20.0,
        duration_s=1000 / rps,
        startup_s=0.5,
        peak_rss_kb=50_000,
        server_cpu_s=1.0,
        client_cpu_s=0.4,
        machine_cpu_s=1.4,
        steal_s=0.0,
        writes_log=server == "service",
        pending_at_stop=0 if server == "service" else None,
        drain_ms=0.0 if server == "service" else None,
        snapshot_lag_ms=0.0,
        missing=0,
        duplicated=0,
        unexpected=0,
        exit_code=0,
        helper_cpu_s={},
        helper_peak_rss_kb={},
        helper_exits={},
        stream_left=None,
    )


def test_ratio_to_same_signature_is_the_median_of_each_rounds_ratio() -> None:
    """A slow round slows both servers of that round; pairing rounds cancels it out."""
    throughput = {
        "bare": [6000, 3000, 6000],
        "same-signature": [5000, 2500, 5000],
        "service": [4900, 2400, 4700],
    }
    runs = [
        _run(name, index + 1, rps)
        for index in range(3)
        for name, column in throughput.items()
        for rps in [column[index]]
    ]
    summaries = {summary.name: summary for summary in summarize(SERVERS, runs)}
    # Rounds: 0.98, 0.96, 0.94. The ratio of the medians (4700 / 5000) would say 0.94.
    assert summaries["service"].rps_vs_reference == 2400 / 2500
    assert summaries["same-signature"].rps_vs_reference == 1.0
    assert summaries["service"].rps_ratio == 2400 / 3000
    assert "vs same-sig" in format_table(list(summaries.values()))


def test_without_same_signature_there_is_no_ratio_to_it() -> None:
    runs = [_run("bare", 1, 6000), _run("service", 1, 4800)]
    (_, service) = summarize(SERVERS, runs)
    assert service.rps_vs_reference is None
    assert service.rps_ratio == 0.8
