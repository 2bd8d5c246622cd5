"""The command line and the settings' own warnings: what an operator sees first."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from config import SettingsError, load_settings
from service.cli import empty_multiprocess_dir
from service.main import create_app
from tests.support.server import service_env, worker_command


def test_help_lists_the_options_and_the_settings_and_starts_nothing(tmp_path: Path) -> None:
    """``python -m service --help`` prints and exits 0; no log file appears."""
    done = subprocess.run(
        [sys.executable, "-m", "service", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for option in ("--host", "--port", "--workers", "--log-level", "--reload"):
        assert option in done.stdout
    for variable in (
        "NOTIFY_LOG_PATH",
        "NOTIFY_ACK",
        "NOTIFY_SMTP_URL",
        "PROMETHEUS_MULTIPROC_DIR",
    ):
        assert variable in done.stdout
    assert list(tmp_path.iterdir()) == []


def test_notify_worker_help_lists_the_settings_and_starts_nothing(tmp_path: Path) -> None:
    """``notify-worker --help`` (the entry point pyproject.toml declares) prints and exits 0;
    no log file appears and no Redis is needed."""
    done = subprocess.run(
        [*worker_command(), "--help"],
        cwd=tmp_path,
        env=service_env({"NOTIFY_REDIS_URL": "redis://127.0.0.1:1/0"}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: notify-worker")
    for variable in ("NOTIFY_REDIS_STREAM", "NOTIFY_REDIS_IDLE_TIMEOUT", "NOTIFY_LOG_PATH"):
        assert variable in done.stdout
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_setting_is_named_with_the_closest_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A typo such as NOTIFY_PORTT gets one warning naming NOTIFY_PORT."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NOTIFY_PORTT", "9000")
    caplog.set_level(logging.WARNING, logger="service")
    create_app(load_settings())
    warnings = [r.getMessage() for r in caplog.records if "NOTIFY_PORTT" in r.getMessage()]
    assert warnings == ["unknown setting NOTIFY_PORTT is ignored; did you mean NOTIFY_PORT?"]


def test_a_bad_value_from_dotenv_says_it_came_from_dotenv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NOTIFY_PORT", raising=False)
    (tmp_path / ".env").write_text("NOTIFY_PORT=abc\n")
    with pytest.raises(SettingsError, match=r"NOTIFY_PORT='abc' \(from \.env\): "):
        load_settings()
    monkeypatch.setenv("NOTIFY_PORT", "xyz")  # the environment wins, and is named as such
    with pytest.raises(SettingsError, match=r"NOTIFY_PORT='xyz': "):
        load_settings()


def test_workers_start_from_an_empty_multiprocess_directory(tmp_path: Path) -> None:
    """prometheus-client's multiprocess mode needs the directory emptied between runs."""
    (tmp_path / "counter_1234.db").write_bytes(b"old")
    (tmp_path / "gauge_livesum_1234.db").write_bytes(b"old")
    (tmp_path / "keep.txt").write_text("not a metrics file")
    assert empty_multiprocess_dir(tmp_path) == 2
    assert [path.name for path in tmp_path.iterdir()] == ["keep.txt"]
