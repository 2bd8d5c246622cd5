"""Ids and status, idempotency, tokens, body limits and JSON lines, through the real app."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import make_settings, read_lines, running
from tests.support.waiting import eventually
from tests.test_file_sink import wait_for_lines
from tests.test_notifications import INJECTION_CORPUS

GUIDE_BODY = {"message": "Notification sent in the background"}


async def wait_for_status(
    client: httpx.AsyncClient, location: str, state: str
) -> dict[str, object]:
    """Poll a notification's status until it is ``state``."""

    async def reached() -> dict[str, object]:
        body: dict[str, object] = (await client.get(location)).json()
        assert body["status"] == state, body
        return body

    return await eventually(reached, message=f"status {state}")


async def test_each_notification_gets_an_id_and_a_location(tmp_path: Path) -> None:
    """The 200 carries ``Location`` and ``X-Notification-Id``; the body is still the guide's."""
    async with running(make_settings(tmp_path)) as client:
        first = await client.post("/send-notification/a@example.com")
        second = await client.post("/send-notification/a@example.com")
    assert first.json() == GUIDE_BODY
    ids = [response.headers["x-notification-id"] for response in (first, second)]
    assert ids[0] != ids[1]
    assert uuid.UUID(ids[0]).version == 7
    assert first.headers["location"] == f"/notifications/{ids[0]}"


async def test_status_goes_from_queued_to_written(tmp_path: Path) -> None:
    """``GET /notifications/{id}`` reports the write, with its time and attempt count."""
    async with running(make_settings(tmp_path)) as client:
        location = (await client.post("/send-notification/a@example.com")).headers["location"]
        body = await wait_for_status(client, location, "written")
    assert body["attempts"] == 1
    assert body["error"] is None
    assert str(body["accepted_at"]).endswith("Z")
    assert str(body["written_at"]) >= str(body["accepted_at"])


async def test_status_of_a_notification_whose_write_fails(tmp_path: Path) -> None:
    """On ``/dev/full`` the status is ``failed`` with the error and a growing attempt count."""
    settings = make_settings(
        tmp_path, log_path=Path("/dev/full"), spool_path=tmp_path / "spool", shutdown_timeout=0.2
    )
    async with running(settings) as client:
        location = (await client.post("/send-notification/a@example.com")).headers["location"]
        body = await wait_for_status(client, location, "failed")
        assert "No space left on device" in str(body["error"])

        async def retried() -> dict[str, Any]:
            later: dict[str, Any] = (await client.get(location)).json()
            assert later["attempts"] > body["attempts"], later
            return later

        # until a later retry has failed too (backoff from 50 ms)
        later = await eventually(retried, message="another failed attempt")
    assert later["status"] == "failed"
    assert later["attempts"] > body["attempts"]


async def test_unknown_or_malformed_id_is_404(tmp_path: Path) -> None:
    """An id nobody was given gets 404 with a message: a UUID of either version, or a text
    shaped like neither (a version digit 7 where a UUIDv7 has it, hex nowhere)."""
    unknown = [
        str(uuid.uuid4()),
        "01a2502e-ed3e-7d3e-98dd-777e698ae518",
        "zzzzzzzz-zzzz-7zzz-8zzz-zzzzzzzzzzzz",
        "x" * 14 + "7",
        "ada",
    ]
    async with running(make_settings(tmp_path)) as client:
        responses = [await client.get(f"/notifications/{text}") for text in unknown]
    for response in responses:
        assert response.status_code == 404, response.text
        assert "unknown, or expired" in response.json()["detail"]


async def test_statuses_expire(tmp_path: Path) -> None:
    """After the status TTL the id is forgotten (404)."""
    async with running(make_settings(tmp_path, status_ttl=0.05)) as client:
        location = (await client.post("/send-notification/a@example.com")).headers["location"]

        async def forgotten() -> bool:
            return (await client.get(location)).status_code == 404

        await eventually(forgotten, message="a 404 once the 50 ms TTL has run out")


async def test_same_idempotency_key_and_request_writes_once(tmp_path: Path) -> None:
    """A repeated key with the same request gets the same answer and id, and no second line."""
    settings = make_settings(tmp_path)
    headers = {"Idempotency-Key": "order-42"}
    async with running(settings) as client:
        url = "/send-notification/a@example.com?q=x"
        first = await client.post(url, headers=headers, json={"message": "hi"})
        again = await client.post(url, headers=headers, json={"message": "hi"})
    assert first.status_code == again.status_code == 200
    assert again.json() == GUIDE_BODY
    assert again.headers["x-notification-id"] == first.headers["x-notification-id"]
    assert read_lines(settings.log_path) == [
        "found query: x",
        "notification for a@example.com: hi",
    ]


async def test_same_key_with_another_request_is_422(tmp_path: Path) -> None:
    """Reusing a key for a different request is refused with 422 naming the header."""
    settings = make_settings(tmp_path)
    async with running(settings) as client:
        await client.post("/send-notification/a@example.com", headers={"Idempotency-Key": "k"})
        other = await client.post(
            "/send-notification/b@example.com", headers={"Idempotency-Key": "k"}
        )
    assert other.status_code == 422
    [error] = other.json()["detail"]
    assert error["loc"] == ["header", "idempotency-key"]
    assert "different request" in error["msg"]
    assert len(read_lines(settings.log_path)) == 1


async def test_fifty_concurrent_requests_with_one_key_write_one_line(tmp_path: Path) -> None:
    """50 concurrent requests with one key: all 200 with one id, and exactly one line."""
    settings = make_settings(tmp_path)
    async with running(settings) as client:
        responses = await asyncio.gather(
            *(
                client.post("/send-notification/a@example.com", headers={"Idempotency-Key": "same"})
                for _ in range(50)
            )
        )
    assert {response.status_code for response in responses} == {200}
    assert len({response.headers["x-notification-id"] for response in responses}) == 1
    assert read_lines(settings.log_path) == ["notification for a@example.com: some notification"]


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there", "é"])
async def test_invalid_idempotency_key_is_422(client: httpx.AsyncClient, key: str) -> None:
    """An empty, over-long or non-printable-ASCII key is refused with 422."""
    headers = [(b"idempotency-key", key.encode())]
    response = await client.post("/send-notification/a@example.com", headers=headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["header", "idempotency-key"]


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with running(make_settings(tmp_path, api_tokens="alpha, beta")) as client:
        yield client


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong", "Bearer alph", "Basic alpha", "alpha", "Bearer "]
)
async def test_missing_or_wrong_token_is_401(
    guarded: httpx.AsyncClient, authorization: str | None
) -> None:
    """With tokens set, a POST without a valid bearer token gets 401 and WWW-Authenticate."""
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await guarded.post("/send-notification/a@example.com", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "Bearer <token>" in response.json()["detail"]


async def test_any_configured_token_is_accepted(guarded: httpx.AsyncClient) -> None:
    """Each configured token works; health and readiness stay open."""
    for token in ("alpha", "beta"):
        response = await guarded.post(
            "/send-notification/a@example.com", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 200
    assert (await guarded.get("/healthz")).status_code == 200
    assert (await guarded.get("/readyz")).status_code == 200


async def test_body_over_the_limit_is_413_before_parsing(tmp_path: Path) -> None:
    """A body over the limit gets 413, declared or streamed, and nothing is logged."""
    settings = make_settings(tmp_path, max_body_bytes=100)
    big = json.dumps({"message": "x" * 200}).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 30):
            yield big[start : start + 30]

    async with running(settings) as client:
        url = "/send-notification/a@example.com"
        declared = await client.post(url, content=big, headers={"content-type": "application/json"})
        streamed = await client.post(
            url, content=chunks(), headers={"content-type": "application/json"}
        )
        fits = await client.post(url, json={"message": "small"})
    assert declared.status_code == 413
    assert streamed.status_code == 413
    assert "limit is 100 bytes" in declared.json()["detail"]
    assert fits.status_code == 200
    await wait_for_lines(settings.log_path, 1)
    assert read_lines(settings.log_path) == ["notification for a@example.com: small"]


async def test_jsonl_lines_parse_back_to_the_hostile_values(tmp_path: Path) -> None:
    """With ``log_format=jsonl`` every line is one JSON object holding the exact values."""
    settings = make_settings(tmp_path, log_format="jsonl")
    ids = []
    async with running(settings) as client:
        for value in INJECTION_CORPUS:
            response = await client.post(
                "/send-notification/victim@example.com",
                params={"q": value},
                json={"message": value},
            )
            ids.append(response.headers["x-notification-id"])
    lines = read_lines(settings.log_path)
    assert len(lines) == 2 * len(INJECTION_CORPUS)
    records = [json.loads(line) for line in lines]
    for value, notification_id, query, note in zip(
        INJECTION_CORPUS, ids, records[::2], records[1::2], strict=True
    ):
        assert query["kind"] == "query"
        assert query["q"] == value
        assert note == {
            "id": notification_id,
            "time": note["time"],
            "kind": "notification",
            "email": "victim@example.com",
            "message": value,
            "q": None,
        }
        assert note["time"].endswith("Z")
    assert all(line.isascii() for line in lines)
