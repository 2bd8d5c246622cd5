"""The SIGKILL report: background mode's loss in milliseconds of acknowledgements."""

from __future__ import annotations

from bench.kill import BACKGROUND_GOAL_MS, KillRun, format_table, lost_ms, summarize, verdicts
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
