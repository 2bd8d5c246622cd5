"""Liveness, readiness, and a startup that cannot open its log."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

from service.main import create_app
from service.metrics import Metrics
from service.runtime import Runtime, StartupError
from tests.conftest import make_settings


async def test_healthz_says_ok(client: httpx.AsyncClient) -> None:
    """``/healthz`` answers 200 while the process is up."""
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_lists_every_writer(tmp_path: Path) -> None:
    """``/readyz`` answers 200 and lists each log writer, and the ledger, as running and open."""
    settings = make_settings(tmp_path, query_log_path=tmp_path / "queries.txt")
    async with LifespanManager(create_app(settings)) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert body["reasons"] == []
    assert {sink["name"] for sink in body["sinks"]} == {
        str(tmp_path / "log.txt"),
        str(tmp_path / "queries.txt"),
        f"ledger {tmp_path / 'log.txt.ledger'}",
    }
    assert all(sink["running"] and sink["open"] for sink in body["sinks"])


@pytest.mark.parametrize(
    ("make_path", "reason"),
    [
        (lambda tmp: tmp, "Is a directory"),
        (lambda tmp: tmp / "file" / "log.txt", "File exists"),
        (lambda tmp: Path("/proc/self/log.txt"), ""),
    ],
    ids=["directory", "parent-is-a-file", "read-only-place"],
)
async def test_unopenable_log_stops_startup_with_one_line(
    tmp_path: Path, make_path: object, reason: str
) -> None:
    """A log path that cannot be opened stops startup with one line naming path and reason."""
    (tmp_path / "file").write_text("")
    assert callable(make_path)
    path = make_path(tmp_path)
    app = create_app(make_settings(tmp_path, log_path=path))
    with pytest.raises(StartupError) as caught:
        async with LifespanManager(app):
            pass
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"cannot open log file {path}: ")
    assert reason in message


async def test_a_device_as_the_log_needs_an_explicit_spool(tmp_path: Path) -> None:
    """A log path that is not a regular file or a FIFO (/dev/full) would put its spool in /dev:
    startup stops with one line asking for NOTIFY_SPOOL_PATH, and starts once it is set."""
    settings = make_settings(tmp_path, log_path=Path("/dev/full"))
    with pytest.raises(StartupError, match="NOTIFY_LOG_PATH=/dev/full is not a regular file"):
        async with Runtime(settings, Metrics()):
            pass
    spooled = make_settings(tmp_path, log_path=Path("/dev/full"), spool_path=tmp_path / "spool")
    async with Runtime(spooled, Metrics()):
        pass
    assert not Path("/dev/full.spool").exists()
