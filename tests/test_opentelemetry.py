"""``NOTIFY_OPENTELEMETRY``: FastAPI's native OpenTelemetry, on when asked, off by default.

Each case runs ``tests.support.otel_probe`` in a process of its own, with the OpenTelemetry
SDK's tracer provider set globally: the real app, its lifespan, a real request.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import read_lines

REPO_ROOT = Path(__file__).resolve().parent.parent


async def probe(directory: Path, setting: str) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "tests.support.otel_probe", str(directory), setting),
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out)
    return result


@pytest.mark.slow
async def test_on_fastapi_traces_the_request_and_its_tasks_in_order(tmp_path: Path) -> None:
    result = await probe(tmp_path, "on")
    assert result["status"] == 200
    spans = result["spans"]
    server = [span for span in spans if span["attributes"].get("http.route")]
    assert [span["attributes"]["http.route"] for span in server] == ["/send-notification/{email}"]
    assert server[0]["attributes"]["http.response.status_code"] == 200
    tasks = [
        span["attributes"]["code.function.name"].rsplit(".", 1)[-1]
        for span in spans
        if span["name"] == "fastapi.background_task"
    ]
    assert tasks == ["log_query", "notify"]  # the guide's order: the query's line first
    assert read_lines(tmp_path / "log.txt") == [
        "found query: probe",
        "notification for ada@example.com: traced",
    ]


@pytest.mark.slow
async def test_off_by_default_no_span_even_with_a_provider_set(tmp_path: Path) -> None:
    result = await probe(tmp_path, "default")
    assert result == {"status": 200, "spans": []}
    assert read_lines(tmp_path / "log.txt") == [
        "found query: probe",
        "notification for ada@example.com: traced",
    ]
