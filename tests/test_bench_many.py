"""Smoke test of ``python -m bench.many --quick``: against real uvicorn servers, both ways of
sending are acknowledged and every acknowledged notification is in the log exactly once (the
figures are not asserted: they depend on the machine)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.bench import quick_results

pytestmark = pytest.mark.slow  # two uvicorn servers and 5,000 requests: seconds


def test_quick_many_benchmark_logs_every_acknowledged_notification_once(tmp_path: Path) -> None:
    results = quick_results("many", tmp_path, goal_may_fail=True)
    for config in ("log", "email"):
        [round_] = results[config]["rounds"]
        assert round_["many"]["statuses"] == {"200": 10}
        assert round_["many"]["accepted"] == 10 * 500
        assert round_["single"]["accepted"] == 2000
        assert round_["log_lines"] == round_["acknowledged"] == 2000 + 256 + 11 * 500
        assert results[config]["summary"]["verdict"] in ("met", "NOT met")
