"""The benchmark's reference apps stay what they claim to be."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.apps.same_signature import app as same_signature
from bench.writer import run_writer_bench
from tests.conftest import make_settings, running


async def test_same_signature_documents_the_services_request(tmp_path: Path) -> None:
    """The "same signature" operation has the service's parameters and request body.

    Its responses are declared on their own (not shared with the service), so not compared.
    """
    async with running(make_settings(tmp_path)) as service:
        served = (await service.get("/openapi.json")).json()
    reference = same_signature.openapi()
    path = "/send-notification/{email}"
    ours, theirs = reference["paths"][path]["post"], served["paths"][path]["post"]

    def by_place(parameters: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(parameters, key=lambda parameter: (parameter["in"], parameter["name"]))

    assert [p["name"] for p in ours["parameters"]] == ["email", "q", "Idempotency-Key"]
    assert by_place(ours["parameters"]) == by_place(theirs["parameters"])
    assert ours["requestBody"] == theirs["requestBody"]
    # Schemas both declare (FastAPI's validation errors) are the same.
    for name, schema in reference["components"]["schemas"].items():
        assert schema == served["components"]["schemas"][name], name


def test_writer_benchmark_writes_every_line_both_ways() -> None:
    """The writer micro-benchmark runs, and both ways wrote every byte (checked inside)."""
    result = run_writer_bench(count=5000, repeats=1)
    assert result.lines == 5000
    assert result.sink_lines_per_s > 0
    assert result.plain_lines_per_s > 0


async def test_same_signature_answers_as_the_service_does(tmp_path: Path) -> None:
    """Same status, body and headers (a fresh id each time), through the same HTTP metrics."""
    transport = httpx.ASGITransport(app=same_signature)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        first = await client.post("/send-notification/a@example.com?q=x")
        second = await client.post("/send-notification/a@example.com")
    async with running(make_settings(tmp_path)) as service:
        served = await service.post("/send-notification/a@example.com?q=x")
    for response in (first, second):
        assert response.status_code == served.status_code == 200
        assert response.content == served.content
        assert sorted(response.headers) == sorted(served.headers)
        notification_id = response.headers["x-notification-id"]
        assert str(uuid.UUID(notification_id)) == notification_id
        assert response.headers["location"] == f"/notifications/{notification_id}"
    assert first.headers["x-notification-id"] != second.headers["x-notification-id"]
