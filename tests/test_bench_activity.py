"""Smoke test of ``python -m bench.activity --quick``: it fills a real ledger and outbox through
the service's store classes, serves them with real uvicorn and looks recipients up over HTTP
and in the store; every lookup finds that recipient's notifications (the figures are not
asserted: they depend on the machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # fills 20,000 notifications and serves them: seconds

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_quick_activity_benchmark_finds_every_recipients_notifications(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "bench.activity", "--quick", "--out", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert completed.returncode in (0, 1), completed.stdout + completed.stderr
    results = json.loads((tmp_path / "activity.json").read_text())
    assert results["notifications"] == 20_000
    # 20,000 notifications to 4,000 recipients: about 5 each, every one found
    assert 4 < results["http"]["items_per_lookup"] < 6
    assert results["http"]["lookups"] == results["store"]["lookups"] == 300
    assert results["goal"]["verdict"] in ("met", "NOT met")
