"""What the README's "Testing" section promises a user who tests an app with the service:
FastAPI's ``TestClient`` as a context manager works (its lifespan runs); a bare
``TestClient(app)`` gets a 503 that says how to fix it; with ``NOTIFY_ACK=write`` the line is
in the log when the answer comes."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from config import Settings
from service.main import create_app


def test_a_bare_test_client_gets_a_503_that_says_how_to_fix_it(tmp_path: Path) -> None:
    app = create_app(Settings(log_path=tmp_path / "log.txt"))
    client = TestClient(app)  # no ``with``: the lifespan does not run
    response = client.post("/send-notification/ada@example.com", json={"message": "hi"})
    assert response.status_code == 503
    detail = response.json()["detail"]
    assert "lifespan has not started" in detail
    assert "with TestClient(app) as client:" in detail
    assert not (tmp_path / "log.txt").exists()


def test_with_ack_write_the_line_is_in_the_log_when_the_answer_comes(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    app = create_app(Settings(log_path=log, ack="write"))
    with TestClient(app) as client:
        response = client.post("/send-notification/ada@example.com?q=x", json={"message": "hi"})
        assert response.status_code == 200
        assert response.json() == {"message": "Notification sent in the background"}
        assert log.read_text().splitlines() == [
            "found query: x",
            "notification for ada@example.com: hi",
        ]


def test_the_readmes_example_the_line_is_written_when_the_block_ends(tmp_path: Path) -> None:
    """README "Testing an app with it", as written there: default mode, asserted after the
    ``with`` block, whose exit (the lifespan's end) writes what was acknowledged."""
    log = tmp_path / "log.txt"
    with TestClient(create_app(Settings(log_path=log))) as client:  # runs the lifespan
        client.post("/send-notification/ada@example.com")
    assert log.read_text() == "notification for ada@example.com: some notification\n"
