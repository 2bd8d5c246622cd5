"""Smoke test of ``python -m bench.activity --quick``: it fills a real ledger and outbox through
the service's store classes, serves them with real uvicorn and looks recipients up over HTTP
and in the store; every lookup finds that recipient's notifications (the figures are not
asserted: they depend on the machine)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.bench import quick_results

pytestmark = pytest.mark.slow  # fills 20,000 notifications and serves them: seconds


def test_quick_activity_benchmark_finds_every_recipients_notifications(tmp_path: Path) -> None:
    results = quick_results("activity", tmp_path, goal_may_fail=True)
    assert results["notifications"] == 20_000
    # 20,000 notifications to 4,000 recipients: about 5 each, every one found
    assert 4 < results["http"]["items_per_lookup"] < 6
    assert results["http"]["lookups"] == results["store"]["lookups"] == 300
    assert results["goal"]["verdict"] in ("met", "NOT met")
