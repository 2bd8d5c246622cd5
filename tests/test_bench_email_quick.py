"""Smoke test of ``python -m bench.email --quick``: real servers and a real SMTP server; it
must finish, deliver what was acknowledged and judge every goal (the figures are not
asserted: they depend on the machine)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.bench import quick_results

pytestmark = pytest.mark.slow  # runs the email benchmark's quick mode: servers, for seconds


def test_quick_email_benchmark_delivers_everything_and_judges_every_goal(tmp_path: Path) -> None:
    results = quick_results("email", tmp_path)
    rows = results["api"]["rows"]
    assert rows.keys() == {"log-only", "email-fast", "email-slow"}
    assert all(row["exactly_once"] and row["non_200"] == 0 for row in rows.values())
    for run in results["delivery"]["runs"]:
        assert run["delivered"] == run["acked"] == run["posted"], run
    latency = results["latency"]["runs"][0]
    assert latency["delivered"] == latency["acked"] == latency["sent"]
    assert (latency["missing"], latency["repeats"]) == (0, 0)
    assert [goal["verdict"] in ("met", "NOT met") for goal in results["goals"]] == [True] * 4
