"""Smoke test of the benchmark harness: one quick run against real servers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_acknowledges_and_logs_exactly_once(tmp_path: Path) -> None:
    """`python -m bench --quick` exits 0 and every server's log holds each ack exactly once."""
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr

    results = json.loads((tmp_path / "latest.json").read_text())
    rows = {row["name"]: row for row in results["servers"]}
    expected = {"bare", "guide"}
    if (REPO_ROOT / "service" / "main.py").is_file():
        expected.add("service")
    assert expected <= rows.keys()
    for name in expected:
        row = rows[name]
        assert row["acked"] > 0, name
        assert row["missing"] == 0, name
        assert row["duplicated"] == 0, name
