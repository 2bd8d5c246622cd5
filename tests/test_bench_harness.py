"""Smoke test of the benchmark harness: one quick run against real servers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import servers

REPO_ROOT = Path(__file__).resolve().parent.parent


def _quick_bench(out: Path, *options: str) -> Any:
    """Run `python -m bench --quick` with ``options``; it must exit 0. Its latest.json."""
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", *options, "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return json.loads((out / "latest.json").read_text())


@pytest.mark.slow
def test_quick_benchmark_acknowledges_and_logs_exactly_once(tmp_path: Path) -> None:
    """`python -m bench --quick` exits 0 and every server's log holds each ack exactly once."""
    results = _quick_bench(tmp_path)
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


@pytest.mark.slow
def test_quick_redis_row_counts_the_workers_log_and_stops_every_process(tmp_path: Path) -> None:
    """The redis row (API, worker, redis-server per run): the worker's log holds each ack once,
    and the API, the worker and Redis each exit cleanly on SIGTERM."""
    results = _quick_bench(tmp_path, "--servers", "redis")
    (row,) = results["servers"]
    assert row["name"] == "redis"
    assert row["acked"] > 0
    assert (row["missing"], row["duplicated"], row["unclean_exits"]) == (0, 0, 0)
    (run,) = results["runs"]
    assert run["helper_exits"].keys() == {"worker", "redis-server"}
    assert run["stream_left"] == 0
    assert run["helper_peak_rss_kb"]["worker"] > 0


def test_redis_row_needs_redis_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without redis-server on the PATH the row is refused up front, saying how to install it."""
    monkeypatch.setattr("bench.servers.shutil.which", lambda name: None)
    with pytest.raises(ValueError, match="make redis-server"):
        servers.select_servers(["service", "redis"], REPO_ROOT)
    assert [spec.name for spec in servers.select_servers(["service"], REPO_ROOT)] == ["service"]
