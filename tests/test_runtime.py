"""The app starts again: each lifespan run owns its resources, on its own event loop; a
sender that dies is never silent."""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.main import GC_THRESHOLD, create_app
from service.sinks.base import SinkUnavailable
from service.sinks.core import Batch, BatchOptions, BatchSink
from service.sinks.spool import RAW_LINES, Spool
from service.wire import WireRecord
from tests.conftest import make_settings, read_lines


@pytest.fixture
def module_app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with no ``.env`` and no ``NOTIFY_*`` variables: the module's
    ``app`` writes ``log.txt`` there, as ``make run`` does in the project's directory."""
    for name in ("NOTIFY_LOG_PATH", "NOTIFY_QUERY_LOG_PATH", "NOTIFY_SPOOL_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_module_app_serves_a_first_test_client(module_app_dir: Path) -> None:
    """FastAPI's testing guide: ``with TestClient(app)`` on ``service.main.app``."""
    from service.main import app

    with TestClient(app) as client:
        response = client.post("/send-notification/first@example.com")
        assert response.status_code == 200
    assert read_lines(module_app_dir / "log.txt") == [
        "notification for first@example.com: some notification"
    ]


def test_the_module_app_serves_a_second_test_client(module_app_dir: Path) -> None:
    """The same app object again, on a new event loop: its lines are written too (the app
    used to keep the first run's writer, dead with the first loop, and answer 200 for lines
    it never wrote)."""
    from service.main import app

    with TestClient(app) as client:
        response = client.post("/send-notification/second@example.com")
        assert response.status_code == 200
        assert client.get("/readyz").status_code == 200
    assert read_lines(module_app_dir / "log.txt") == [
        "notification for second@example.com: some notification"
    ]


def test_one_app_runs_its_lifespan_three_times(tmp_path: Path) -> None:
    """Three runs, one after another, each on its own loop, each writing its own lines
    (the query line first) and closing what it opened."""
    app = create_app(make_settings(tmp_path))
    for run in range(3):
        with TestClient(app) as client:
            response = client.post(f"/send-notification/r{run}@example.com?q=run{run}")
            assert response.status_code == 200
            status = client.get(response.headers["location"]).json()
            assert status["status"] in ("queued", "written")
    assert read_lines(tmp_path / "log.txt") == [
        line
        for run in range(3)
        for line in (
            f"found query: run{run}",
            f"notification for r{run}@example.com: some notification",
        )
    ]


def test_a_run_collects_cycles_less_often_and_gives_the_threshold_back(tmp_path: Path) -> None:
    """While the app runs, a young collection every GC_THRESHOLD allocations (not Python's
    700): requests waiting for their write (ack=write) survive fewer collections. After the
    run, the process's own thresholds again."""
    before = gc.get_threshold()
    assert before[0] < GC_THRESHOLD  # Python's default (700) in the test process
    app = create_app(make_settings(tmp_path, ack="write"))
    with TestClient(app) as client:
        assert client.post("/send-notification/gc@example.com").status_code == 200
        assert gc.get_threshold() == (GC_THRESHOLD, *before[1:])
    assert gc.get_threshold() == before
    assert read_lines(tmp_path / "log.txt") == [
        "notification for gc@example.com: some notification"
    ]


class _BuggyTarget:
    """A target with a bug: its send raises something that is not a ``TargetError``."""

    name = description = "buggy target"
    is_open = True

    async def open(self) -> None:
        pass

    async def send(self, batch: Batch) -> None:
        raise RuntimeError("a bug in the target")

    async def check(self) -> bool:
        return True

    def unsent(self, batch: Batch) -> list[WireRecord]:
        return batch.records()

    async def close(self) -> list[WireRecord]:
        return []


async def test_a_sender_that_dies_refuses_lines_says_why_and_loses_none(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The error is logged once with its traceback; the waiting request is told; new lines
    get ``SinkUnavailable`` naming the reason; health says so; the lines it held are spooled."""
    spool = tmp_path / "spool"
    sink = BatchSink(_BuggyTarget(), BatchOptions(), spool=Spool(spool, RAW_LINES))
    await sink.start()
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    sink.admit()
    sink.submit("id-1", "notification", "first line\n", done)
    with pytest.raises(SinkUnavailable, match="a bug in the target"):
        await done
    with pytest.raises(SinkUnavailable, match="sender stopped: RuntimeError: a bug"):
        sink.admit()
    health = sink.health()
    assert not health.running
    assert health.problem is not None
    assert "a bug in the target" in health.problem
    await sink.aclose()
    assert read_lines(spool) == ["first line"]
    stopped = [record for record in caplog.records if "sender stopped" in record.getMessage()]
    assert len(stopped) == 1
    assert stopped[0].levelno == logging.ERROR
    assert stopped[0].exc_info is not None
