"""``POST /notifications``: one notification to each of many recipients, all or none. The real
app through its lifespan, real files under ``tmp_path``, the SQLite outbox, a real SMTP
server (aiosmtpd), and for the Redis backend a real Redis, uvicorn and a worker."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import make_settings, read_lines, running
from tests.support.server import http_client, running_worker, uvicorn_server
from tests.support.smtp import smtp_server
from tests.support.waiting import eventually

SENDER = "notify@service.example"


def _to(count: int) -> list[str]:
    return [f"user{number}@example.com" for number in range(count)]


def _outbox_rows(path: Path) -> list[tuple[str, str, float]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT id, recipient, next_attempt_at FROM deliveries").fetchall()


async def test_each_recipient_gets_a_notification_with_its_id_in_order(tmp_path: Path) -> None:
    """Ids in the order of ``to``; each a line and a status of its own; a repeated address
    (after normalization) once, with its first entry's id, its index in ``duplicates``."""
    settings = make_settings(tmp_path)
    to = ["ada@example.com", "grace@EXAMPLE.com", "bob@example.com", "ada@example.com"]
    async with running(settings) as client:
        response = await client.post("/notifications", json={"to": to, "message": "hi"})
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["message"] == "Notifications sent in the background"
        ids = answer["ids"]
        assert answer["duplicates"] == [3]
        assert len(ids) == 4
        assert ids[3] == ids[0]
        assert len(set(ids)) == 3

        async def written() -> list[dict[str, Any]]:
            statuses = [(await client.get(f"/notifications/{i}")).json() for i in ids[:3]]
            assert [s["status"] for s in statuses] == ["written"] * 3
            return statuses

        statuses = await eventually(written, interval=0.02, message="all written")
    assert [s["email"] for s in statuses] == [
        "ada@example.com",
        "grace@example.com",
        "bob@example.com",
    ]
    assert read_lines(settings.log_path) == [
        "notification for ada@example.com: hi",
        "notification for grace@example.com: hi",
        "notification for bob@example.com: hi",
    ]


async def test_the_lot_enters_the_outbox_in_one_transaction(tmp_path: Path) -> None:
    """1,000 recipients with email on and nobody delivering here: every row is in the outbox,
    all added by one statement (one time of addition), each once."""
    with smtp_server() as server:
        settings = make_settings(
            tmp_path, smtp_url=server.url(), smtp_from=SENDER, delivery="external", ack="write"
        )
        async with running(settings) as client:
            before = await client.post("/send-notification/first@example.com")
            response = await client.post("/notifications", json={"to": _to(1000)})
            assert before.status_code == response.status_code == 200, response.text
            rows = _outbox_rows(settings.effective_outbox_path())
    ids = set(response.json()["ids"])
    ours = [row for row in rows if row[0] in ids]
    assert sorted(row[1] for row in ours) == sorted(_to(1000))
    assert len({row[2] for row in ours}) == 1
    assert len(rows) == 1001


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        (
            {"to": ["a@example.com", "not an address", "b@example.com", "c@"]},
            [["body", "to", 1], ["body", "to", 3]],
        ),
        ({"to": []}, [["body", "to"]]),
        ({"to": "a@example.com"}, [["body", "to"]]),
        ({"message": "hi"}, [["body", "to"]]),
        ({"to": ["a@example.com"], "cc": ["b@example.com"]}, [["body", "cc"]]),
        ({"to": ["a@example.com"], "channels": []}, [["body", "channels"]]),
        ({"to": ["a@example.com"], "channels": ["sms"]}, [["body", "channels", 0]]),
        ({"to": ["a@example.com"], "message": 5}, [["body", "message"]]),
        ({"to": _to(11)}, [["body", "to"]]),
    ],
)
async def test_one_bad_entry_refuses_the_whole_request_naming_each(
    tmp_path: Path, body: dict[str, Any], errors: list[list[Any]]
) -> None:
    settings = make_settings(tmp_path, max_recipients=10)
    async with running(settings) as client:
        response = await client.post("/notifications", json=body)
        assert response.status_code == 422, response.text
        assert [error["loc"] for error in response.json()["detail"]] == errors
        everything = (await client.get("/notifications")).json()
    assert everything["items"] == []
    assert read_lines(settings.log_path) == []


async def test_no_body_and_a_body_too_large_are_refused(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_recipients=2, max_body_bytes=100)
    async with running(settings) as client:
        missing = await client.post("/notifications")
        assert missing.status_code == 422
        assert missing.json()["detail"][0]["msg"] == "A JSON body is required"
        large = await client.post(
            "/notifications", json={"to": ["a@example.com"], "message": "x" * 800}
        )
        assert large.status_code == 413
        assert "the limit is 740 bytes" in large.json()["detail"]
    assert read_lines(settings.log_path) == []


async def test_a_domain_outside_the_allowed_ones_is_named_by_index(tmp_path: Path) -> None:
    with smtp_server() as server:
        settings = make_settings(
            tmp_path,
            smtp_url=server.url(),
            smtp_from=SENDER,
            email_domains="example.com",
            delivery="external",
        )
        async with running(settings) as client:
            response = await client.post(
                "/notifications", json={"to": ["a@example.com", "b@elsewhere.org"]}
            )
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "to", 1]
    assert "example.com" in error["msg"]
    assert read_lines(settings.log_path) == []


async def test_it_needs_the_token_when_tokens_are_set(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, api_tokens="s3cret")
    body = {"to": ["a@example.com"]}
    async with running(settings) as client:
        refused = await client.post("/notifications", json=body)
        wrong = await client.post(
            "/notifications", json=body, headers={"Authorization": "Bearer x"}
        )
        taken = await client.post(
            "/notifications", json=body, headers={"Authorization": "Bearer s3cret"}
        )
    assert refused.status_code == wrong.status_code == 401
    assert taken.status_code == 200
    assert read_lines(settings.log_path) == ["notification for a@example.com: some notification"]


async def test_a_recipients_id_does_not_lead_to_the_other_recipients(tmp_path: Path) -> None:
    """Each recipient gets its own id (in its email's Message-ID, a webhook's id) and may look
    it up, with no token; the ids next to it (one more, one less in its last bits) are not
    the other recipients', whose addresses their statuses would show."""
    settings = make_settings(tmp_path, api_tokens="s3cret")
    body = {"to": ["alice@example.com", "bob@example.com", "carol@example.com"]}
    async with running(settings) as client:
        taken = await client.post(
            "/notifications", json=body, headers={"Authorization": "Bearer s3cret"}
        )
        bob = taken.json()["ids"][1]
        own = await client.get(f"/notifications/{bob}")
        low = int(bob[24:], 16)
        neighbours = [f"{bob[:24]}{low + step:012x}" for step in (-1, 1)]
        looked_up = [(await client.get(f"/notifications/{id_}")).status_code for id_ in neighbours]
    assert own.json()["email"] == "bob@example.com"
    assert looked_up == [404, 404]


async def test_an_idempotency_key_covers_the_whole_request(tmp_path: Path) -> None:
    """The same key and request: the same ids, nothing written twice, also when sent at
    once; a different list or message with the key: 422."""
    settings = make_settings(tmp_path)
    key = {"Idempotency-Key": "newsletter-7"}
    body = {"to": ["a@example.com", "b@example.com", "a@example.com"], "message": "m"}
    async with running(settings) as client:
        answers = await asyncio.gather(
            *(client.post("/notifications", json=body, headers=key) for _ in range(5))
        )
        assert {response.status_code for response in answers} == {200}
        assert len({tuple(response.json()["ids"]) for response in answers}) == 1
        assert answers[0].json()["duplicates"] == [2]
        for changed in [{**body, "to": ["a@example.com"]}, {**body, "message": "n"}]:
            conflict = await client.post("/notifications", json=changed, headers=key)
            assert conflict.status_code == 422, conflict.text
    assert read_lines(settings.log_path) == [
        "notification for a@example.com: m",
        "notification for b@example.com: m",
    ]


async def test_a_full_outbox_refuses_the_lot_and_keeps_nothing(tmp_path: Path) -> None:
    """Room for 5 deliveries: 6 recipients get 503 and no line; 5 are taken."""
    with smtp_server() as server:
        settings = make_settings(
            tmp_path, smtp_url=server.url(), smtp_from=SENDER, delivery="external", outbox_max=5
        )
        async with running(settings) as client:
            refused = await client.post("/notifications", json={"to": _to(6)})
            assert refused.status_code == 503
            assert "the outbox is full" in refused.json()["detail"]
            taken = await client.post("/notifications", json={"to": _to(5)})
            assert taken.status_code == 200
    assert sorted(read_lines(settings.log_path)) == sorted(
        f"notification for {email}: some notification" for email in _to(5)
    )


async def test_with_ack_write_the_answer_follows_every_line_and_the_outbox(
    tmp_path: Path,
) -> None:
    with smtp_server() as server:
        settings = make_settings(
            tmp_path, smtp_url=server.url(), smtp_from=SENDER, delivery="external", ack="write"
        )
        async with running(settings) as client:
            response = await client.post(
                "/notifications", json={"to": _to(50), "subject": "S", "channels": ["email"]}
            )
            assert response.status_code == 200
            assert len(read_lines(settings.log_path)) == 50
            assert len(_outbox_rows(settings.effective_outbox_path())) == 50
            log_only = await client.post(
                "/notifications", json={"to": ["x@example.com"], "channels": ["log"]}
            )
            assert log_only.status_code == 200
            assert len(read_lines(settings.log_path)) == 51
            assert len(_outbox_rows(settings.effective_outbox_path())) == 50


@pytest.mark.slow
async def test_each_recipient_is_emailed_with_the_requests_subject(tmp_path: Path) -> None:
    with smtp_server() as server:
        settings = make_settings(
            tmp_path,
            smtp_url=server.url(),
            smtp_from=SENDER,
            retry_initial=0.02,
            file_check_interval=0.05,
        )
        async with running(settings) as client:
            response = await client.post(
                "/notifications", json={"to": _to(200), "message": "hi", "subject": "Digest"}
            )
            assert response.status_code == 200
            ok = await asyncio.to_thread(
                server.recorder.wait_for, lambda r: len(r.messages) >= 200, 20.0
            )
            assert ok
    messages = server.recorder.messages
    assert sorted(m.rcpt_tos[0] for m in messages) == sorted(_to(200))
    assert {m.parsed()["Subject"] for m in messages} == {"Digest"}
    ids = {m.parsed()["X-Notification-Id"] for m in messages}
    assert ids == set(response.json()["ids"])


@pytest.mark.slow
async def test_the_redis_backend_takes_many_recipients_too(tmp_path: Path, redis_url: str) -> None:
    """Through uvicorn and a worker: every line written once; the ids' statuses readable."""
    settings = {"NOTIFY_BACKEND": "redis", "NOTIFY_REDIS_URL": redis_url}
    async with (
        uvicorn_server(tmp_path, settings) as api,
        running_worker(tmp_path, settings),
        http_client(api.url) as client,
    ):
        response = await client.post("/notifications", json={"to": _to(300), "message": "hi"})
        assert response.status_code == 200, response.text
        ids = response.json()["ids"]

        def all_written() -> list[str]:
            path = tmp_path / "log.txt"
            lines = read_lines(path) if path.exists() else []
            assert len(lines) == 300
            return lines

        lines = await eventually(all_written, interval=0.05, message="300 lines")

        async def written(client: httpx.AsyncClient = client) -> bool:
            status = (await client.get(f"/notifications/{ids[-1]}")).json()
            return bool(status["status"] == "written")

        await eventually(written, interval=0.05, message="the last written")
    assert sorted(lines) == sorted(f"notification for {email}: hi" for email in _to(300))


async def test_while_the_outbox_cannot_take_them_the_limit_counts_every_recipient(
    tmp_path: Path,
) -> None:
    """The outbox locked by another connection (its intake's batch waits): requests of 1,000
    recipients are on their way in, and each counts as 1,000 against NOTIFY_OUTBOX_MAX
    (2,500): the third is refused. Once the lock goes, the two accepted ones are all there."""
    with smtp_server() as server:
        settings = make_settings(
            tmp_path,
            smtp_url=server.url(),
            smtp_from=SENDER,
            delivery="external",
            outbox_max=2500,
            retry_initial=0.02,
            retry_max=0.1,
        )
        async with running(settings) as client:
            await client.post("/send-notification/warm@example.com")  # the outbox exists
            path = settings.effective_outbox_path()
            await eventually(lambda: len(_outbox_rows(path)) == 1, message="the first row")
            lock = sqlite3.connect(path, timeout=0, isolation_level=None)
            try:
                lock.execute("BEGIN EXCLUSIVE")
                first = await client.post("/notifications", json={"to": _to(1000)})
                second = await client.post(
                    "/notifications", json={"to": [f"x{n}@example.com" for n in range(1000)]}
                )
                third = await client.post(
                    "/notifications", json={"to": [f"y{n}@example.com" for n in range(1000)]}
                )
            finally:
                lock.execute("ROLLBACK")
                lock.close()
            assert first.status_code == second.status_code == 200
            assert third.status_code == 503, third.text
            assert "the outbox is full" in third.json()["detail"]
            await eventually(
                lambda: len(_outbox_rows(path)) == 2001, timeout=30, message="all rows in"
            )
