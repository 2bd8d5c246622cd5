"""Smoke test of ``python -m bench.apprise --quick``: the service and the guide's way each
deliver every acknowledged notification through real Apprise to the bench's receiver (the
figures are not asserted: they depend on the machine)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.bench import quick_results

pytestmark = pytest.mark.slow  # two uvicorn servers, 400 sends through Apprise: seconds


def test_quick_apprise_benchmark_delivers_every_notification_both_ways(tmp_path: Path) -> None:
    results = quick_results("apprise", tmp_path)
    runs = results["delivery"]["runs"]
    assert sorted(run["way"] for run in runs) == ["guide", "service"]
    for run in runs:
        assert run["acked"] == run["delivered"] == 200, run
        assert run["complete"]
    [goal] = results["goals"]
    assert goal["met"] in (True, False)
