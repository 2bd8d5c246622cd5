"""Smoke test of ``python -m bench.apprise --quick``: the service and the guide's way each
deliver every acknowledged notification through real Apprise to the bench's receiver (the
figures are not asserted: they depend on the machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # two uvicorn servers, 400 sends through Apprise: seconds

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_quick_apprise_benchmark_delivers_every_notification_both_ways(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "bench.apprise", "--quick", "--out", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    results = json.loads((tmp_path / "apprise.json").read_text())
    runs = results["delivery"]["runs"]
    assert sorted(run["way"] for run in runs) == ["guide", "service"]
    for run in runs:
        assert run["acked"] == run["delivered"] == 200, run
        assert run["complete"]
    [goal] = results["goals"]
    assert goal["met"] in (True, False)
