"""The SIGKILL report: background mode's loss in milliseconds of acknowledgements."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from bench.kill import (
    BACKGROUND_GOAL_MS,
    TOTAL_DEADLINE_S,
    KillRun,
    format_table,
    kill_spec,
    lost_ms,
    progress_line,
    repeated_lines,
    summarize,
    taken_over_batches,
    total_budget,
    verdicts,
)
from bench.servers import SERVERS


def _run(round_number: int, missing: int, ack_rate: float) -> KillRun:
    return KillRun(
        server="service",
        ack_mode="background",
        round=round_number,
        acked=10_000,
        acked_at_kill=9_990,
        acked_after_kill=10,
        ack_rate=ack_rate,
        kill_after_s=2.0,
        failed=64,
        unsent=9_936,
        logged=10_000 - missing,
        missing=missing,
        loss_pct=100 * missing / 10_000,
        lost_ms=lost_ms(missing, ack_rate),
        lost_after_kill=0,
        lost_oldest_ms=None,
        lost_oldest_acks=None,
        written_after_lost=0,
        duplicated=0,
        unexpected=0,
        torn_tail=False,
        acked_log_matches=True,
    )


def test_lost_lines_are_the_milliseconds_it_takes_to_acknowledge_them() -> None:
    assert lost_ms(84, 5000.0) == 84 / 5000 * 1000  # 16.8 ms
    assert lost_ms(0, 5000.0) == 0.0
    assert lost_ms(10, 0.0) is None


def test_the_summary_takes_each_rounds_milliseconds_then_their_median() -> None:
    """Rounds at different rates: the median of the rounds' ms, not lost / rate of medians."""
    runs = [_run(1, 100, 5000.0), _run(2, 300, 2000.0), _run(3, 120, 4000.0)]
    [summary] = summarize(SERVERS, runs)
    assert [run.lost_ms for run in runs] == [20.0, 150.0, 30.0]
    assert summary.lost_ms_median == 30.0
    assert summary.lost_ms_max == 150.0
    table = format_table([summary])
    assert "lost ms med" in table
    assert "30 ms" in table
    assert "150 ms" in table


def test_the_goal_is_judged_on_the_worst_round_at_concurrency_64() -> None:
    within = summarize(SERVERS, [_run(1, 100, 5000.0), _run(2, 400, 5000.0)])  # 20, 80 ms
    beyond = summarize(SERVERS, [_run(1, 100, 5000.0), _run(2, 600, 5000.0)])  # 20, 120 ms
    goal = f"goal <= {BACKGROUND_GOAL_MS:.0f} ms at concurrency 64"
    lines, ok = verdicts(within, concurrency=64)
    assert ok
    assert any("goal met" in line and goal in line for line in lines)
    lines, ok = verdicts(beyond, concurrency=64)
    assert ok  # a goal, not a guarantee: it does not fail the run
    assert any("goal NOT met" in line and "lost max 120 ms" in line for line in lines)
    lines, _ = verdicts(beyond, concurrency=16)
    assert any("goal not judged at concurrency 16" in line for line in lines)


def _redis_run(round_number: int, repeated: int, missing: int = 0) -> KillRun:
    return replace(
        _run(round_number, missing, 0.0),
        server="redis",
        ack_mode="write",
        acked_at_kill=10_000,
        acked_after_kill=0,
        lost_ms=None,
        repeated=repeated,
        duplicated=repeated,
        written_at_kill=5_100,
        stream_at_kill=70,
        takeover_ms=5_400.0 + round_number,
    )


def test_repeated_lines_count_every_line_beyond_an_acknowledged_emails_first() -> None:
    logged = Counter({"a": 1, "b": 3, "c": 2, "unacked": 4})
    assert repeated_lines(logged, {"a", "b", "c", "gone"}) == 3
    assert repeated_lines(Counter(), {"a"}) == 0


def test_the_redis_row_runs_with_ack_write_and_a_larger_budget() -> None:
    redis = next(spec for spec in SERVERS if spec.name == "redis")
    assert kill_spec(redis).env["NOTIFY_ACK"] == "write"
    assert kill_spec(redis).redis
    service = next(spec for spec in SERVERS if spec.name == "service")
    assert kill_spec(service) is service
    assert total_budget([service], 3) == TOTAL_DEADLINE_S
    assert total_budget([service, redis], 3) > total_budget([service, redis], 1) > TOTAL_DEADLINE_S


def test_the_redis_rows_repeats_are_summarized_shown_and_judged() -> None:
    runs = [_redis_run(1, 0), _redis_run(2, 64), _redis_run(3, 0)]
    [summary] = summarize(SERVERS, runs)
    assert (summary.repeated_median, summary.repeated_max) == (0, 64)
    assert summary.takeover_ms_max == 5_403.0
    assert summary.killed == "worker"
    header, _, row = format_table([summary]).splitlines()
    assert "repeated" in header
    assert row.split()[-2:] == ["0", "64"]
    lines, ok = verdicts([summary])
    assert ok  # nothing lost: repeats are a goal, not a guarantee
    assert any("PASS" in line for line in lines)
    assert any("redis: goal NOT met" in line and "max 64" in line for line in lines)
    [clean] = summarize(SERVERS, [_redis_run(1, 0)])
    lines, _ = verdicts([clean])
    assert any("redis: goal met" in line for line in lines)
    [lossy] = summarize(SERVERS, [_redis_run(1, 0, missing=3)])
    assert not verdicts([lossy])[1]
    line = progress_line(runs[1], 3)
    assert "worker killed at 5,100 lines" in line
    assert "repeated 64" in line


def test_server_kills_count_repeats_but_are_not_judged_on_them() -> None:
    [summary] = summarize(SERVERS, [replace(_run(1, 0, 5000.0), repeated=2)])
    assert (summary.repeated_max, summary.killed) == (2, "server")
    lines, _ = verdicts([summary])
    assert not any("repeated" in line for line in lines)


def test_the_batches_taken_over_are_read_from_the_workers_output() -> None:
    output = (
        "INFO: redis: took over 3 batches another worker did not finish\n"
        "INFO: redis: took over 1 batches another worker did not finish\n"
    )
    assert taken_over_batches(output) == 4
    assert taken_over_batches("worker writing redis stream notifications\n") == 0
