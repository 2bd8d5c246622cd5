"""The service's own log lines, as an operator reads them next to uvicorn's."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from tests.conftest import make_settings, running
from tests.support.server import http_client, uvicorn_server
from tests.support.waiting import eventually
from tests.test_file_sink import count_lines, wait_for_lines


@pytest.mark.slow
async def test_the_services_lines_start_their_text_where_uvicorns_do(tmp_path: Path) -> None:
    async with uvicorn_server(tmp_path) as server:
        await server.wait_for_output("writing notifications to")
        output = server.output().splitlines()
    uvicorn = next(line for line in output if "Started server process" in line)
    ours = next(line for line in output if "writing notifications to" in line)
    assert uvicorn.startswith("INFO:     Started")
    assert ours.startswith("INFO:     service: writing notifications to")


@pytest.mark.slow
async def test_json_lines_are_one_object_each(tmp_path: Path) -> None:
    """NOTIFY_LOG_JSON=true: each of the service's lines is a JSON object."""
    async with (
        uvicorn_server(tmp_path, {"NOTIFY_LOG_JSON": "true"}) as server,
        http_client(server.url) as client,
    ):
        await server.wait_for_output('"logger": "service"')
        await client.post("/send-notification/j@example.com")
        lines = [line for line in server.output().splitlines() if line.startswith("{")]
    started = [json.loads(line) for line in lines]
    assert any(
        entry["level"] == "info" and entry["message"].startswith("writing notifications to")
        for entry in started
    )
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in started)


async def test_a_rotated_log_is_reopened_with_one_line_and_a_recovery_is_info(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A log moved away (logrotate's create) is reopened at its path, said once at INFO."""
    caplog.set_level(logging.INFO, logger="service")
    settings = make_settings(tmp_path, file_check_interval=0.05)
    async with running(settings) as client:
        await client.post("/send-notification/before@example.com")
        await wait_for_lines(settings.log_path, 1)
        shutil.move(settings.log_path, tmp_path / "log.txt.1")
        number = 0

        async def reopened() -> bool:
            nonlocal number
            await client.post(f"/send-notification/after{number}@example.com")
            number += 1
            await eventually(  # until this line is written, in one file or the other
                lambda: count_lines(tmp_path / "log.txt.1", settings.log_path) >= 1 + number,
                message=f"after{number - 1}@example.com written",
            )
            return count_lines(settings.log_path) > 0

        if count_lines(settings.log_path) == 0:
            await eventually(reopened, interval=0, message="the moved log reopened at its path")
    moved = [r for r in caplog.records if "was moved away" in r.getMessage()]
    assert len(moved) == 1
    assert moved[0].levelno == logging.INFO
