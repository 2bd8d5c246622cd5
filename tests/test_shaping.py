"""A request shapes its notification: its own ``subject`` and the ``channels`` it goes to. The
real app through its lifespan, the SQLite outbox on real files, a real SMTP server (aiosmtpd)
and a real webhook receiver (uvicorn) on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from config import Settings
from tests.conftest import make_settings, read_lines, running
from tests.support.smtp import Recorder, smtp_server
from tests.support.waiting import eventually
from tests.support.webhooks import Receiver, webhook_receiver

pytestmark = pytest.mark.slow  # an SMTP server and a webhook receiver on their own threads

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SENDER = "notify@service.example"


@dataclass
class Receivers:
    mail: Recorder
    hooks: Receiver
    settings: Settings


@contextmanager
def receivers(tmp_path: Path, **overrides: Any) -> Iterator[Receivers]:
    """An SMTP server and a webhook receiver, and settings that deliver to both: ``email``
    and the webhook URL named ``billing``."""
    with smtp_server() as server, webhook_receiver(SECRET) as hooks:
        values: dict[str, Any] = {
            "smtp_url": server.url(),
            "smtp_from": SENDER,
            "smtp_timeout": 2.0,
            "webhook_url": f"billing={hooks.url()}",
            "webhook_secret": SECRET,
            "webhook_timeout": 2.0,
            "retry_initial": 0.02,
            "delivery_retry_max": 0.1,
            "file_check_interval": 0.05,
            **overrides,
        }
        yield Receivers(server.recorder, hooks.receiver, make_settings(tmp_path, **values))


@asynccontextmanager
async def app(
    tmp_path: Path, **overrides: Any
) -> AsyncIterator[tuple[Receivers, httpx.AsyncClient]]:
    with receivers(tmp_path, **overrides) as seen:
        async with running(seen.settings) as client:
            yield seen, client


async def delivered(
    client: httpx.AsyncClient, notification_id: str, *channels: str
) -> dict[str, Any]:
    """The notification's status once each of ``channels`` is delivered."""

    async def reached() -> dict[str, Any]:
        response = await client.get(f"/notifications/{notification_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        for channel in channels:
            assert body["channels"][channel]["status"] == "delivered", body
        return body

    return await eventually(reached, interval=0.02, message=f"{channels} delivered")


async def post(client: httpx.AsyncClient, email: str, body: Any, **kwargs: Any) -> httpx.Response:
    return await client.post(f"/send-notification/{email}", json=body, **kwargs)


async def test_a_subject_goes_to_the_email_and_the_webhook_and_the_default_otherwise(
    tmp_path: Path,
) -> None:
    async with app(tmp_path, email_subject="Default") as (seen, client):
        shaped = await post(client, "a@example.com", {"message": "hi", "subject": "Order 1042 ✓"})
        plain = await post(client, "b@example.com", {"message": "hi"})
        assert shaped.status_code == plain.status_code == 200
        await delivered(client, shaped.headers["x-notification-id"], "email", "billing")
        await delivered(client, plain.headers["x-notification-id"], "email", "billing")
    subjects = {m.rcpt_tos[0]: m.parsed()["Subject"] for m in seen.mail.messages}
    assert subjects == {"a@example.com": "Order 1042 ✓", "b@example.com": "Default"}
    payloads = {r.json()["email"]: r.json()["subject"] for r in seen.hooks.received}
    assert payloads == {"a@example.com": "Order 1042 ✓", "b@example.com": "Default"}


async def test_a_subject_with_line_breaks_is_escaped_and_never_a_second_header(
    tmp_path: Path,
) -> None:
    subject = "Hello\r\nBcc: victim@example.com\nX-Evil: 1"
    async with app(tmp_path) as (seen, client):
        response = await post(client, "a@example.com", {"subject": subject, "channels": ["email"]})
        assert response.status_code == 200, response.text
        await delivered(client, response.headers["x-notification-id"], "email")
    [mail] = seen.mail.messages
    parsed = mail.parsed()
    assert parsed["Subject"] == "Hello\\r\\nBcc: victim@example.com\\nX-Evil: 1"
    assert parsed["Bcc"] is None
    assert parsed["X-Evil"] is None
    assert mail.rcpt_tos == ("a@example.com",)


async def test_channels_choose_where_it_goes_and_the_log_line_is_always_written(
    tmp_path: Path,
) -> None:
    """``["email"]``: an email and no webhook; ``["billing"]``: the other way round; ``["log"]``:
    neither. Each status lists only the channels its notification goes to. The log has every
    line."""
    async with app(tmp_path) as (seen, client):
        ids = {}
        for name, channels in [("m", ["email"]), ("h", ["billing", "billing"]), ("l", ["log"])]:
            response = await post(client, f"{name}@example.com", {"channels": channels})
            assert response.status_code == 200, response.text
            ids[name] = response.headers["x-notification-id"]
        everywhere = await post(
            client, "all@example.com", {"channels": ["log", "email", "billing"]}
        )
        mail = await delivered(client, ids["m"], "email")
        hook = await delivered(client, ids["h"], "billing")
        await delivered(client, everywhere.headers["x-notification-id"], "email", "billing")
        log_only = (await client.get(f"/notifications/{ids['l']}")).json()
        assert sorted(mail["channels"]) == ["email", "log"]
        assert sorted(hook["channels"]) == ["billing", "log"]
        assert sorted(log_only["channels"]) == ["log"]
        lines = read_lines(seen.settings.log_path)
    assert sorted(m.rcpt_tos[0] for m in seen.mail.messages) == ["all@example.com", "m@example.com"]
    assert sorted(r.json()["email"] for r in seen.hooks.received) == [
        "all@example.com",
        "h@example.com",
    ]
    assert sorted(lines) == sorted(
        f"notification for {name}@example.com: some notification" for name in ["m", "h", "l", "all"]
    )


async def test_a_request_naming_only_the_log_is_answered_with_ack_write(tmp_path: Path) -> None:
    """With ``NOTIFY_ACK=write`` the 200 waits for the outbox too, when there is something to
    put in it; a notification to the log only waits for its line alone."""
    async with app(tmp_path, ack="write") as (seen, client):
        response = await post(client, "a@example.com", {"message": "x", "channels": ["log"]})
        assert response.status_code == 200, response.text
        assert read_lines(seen.settings.log_path) == ["notification for a@example.com: x"]
        mailed = await post(client, "b@example.com", {"message": "y", "channels": ["email"]})
        assert mailed.status_code == 200, mailed.text
        await delivered(client, mailed.headers["x-notification-id"], "email")


@pytest.mark.parametrize(
    ("body", "location", "named"),
    [
        ({"channels": ["sms"]}, ["body", "channels", 0], "no channel 'sms' here"),
        ({"channels": ["email", "sms", "x"]}, ["body", "channels", 1], "log, email, billing"),
        ({"channels": []}, ["body", "channels"], "at least 1 item"),
        ({"channels": "email"}, ["body", "channels"], "valid array"),
        ({"channels": [5]}, ["body", "channels", 0], "valid string"),
        ({"channels": [""]}, ["body", "channels", 0], "at least 1 character"),
        ({"subject": ""}, ["body", "subject"], "at least 1 character"),
        ({"subject": 5}, ["body", "subject"], "valid string"),
        ({"subject": "x" * 201}, ["body", "subject"], "at most 200 characters"),
        (
            {"subject": "=?utf-8?q?Invoice=0D=0ABcc:_x@evil.example?="},
            ["body", "subject"],
            "RFC 2047 encoded word",
        ),
    ],
)
async def test_a_bad_subject_or_channels_is_a_422_naming_it_and_nothing_is_accepted(
    tmp_path: Path, body: dict[str, Any], location: list[Any], named: str
) -> None:
    async with app(tmp_path) as (seen, client):
        response = await post(client, "a@example.com", body)
        assert response.status_code == 422, response.text
        [first, *_] = response.json()["detail"]
        assert first["loc"] == location
        assert named in first["msg"]
        assert read_lines(seen.settings.log_path) == []
        outbox = (await client.get("/notifications")).json()
        assert outbox["items"] == []
    assert seen.mail.messages == []
    assert seen.hooks.received == []


async def test_an_idempotency_key_covers_the_subject_and_the_channels(tmp_path: Path) -> None:
    """The same key: the same request is a replay (one line, one email); a different subject
    or different channels is a 422 conflict."""
    key = {"Idempotency-Key": "order-1042"}
    async with app(tmp_path) as (seen, client):
        first = await post(
            client, "a@example.com", {"subject": "S", "channels": ["email"]}, headers=key
        )
        again = await post(
            client, "a@example.com", {"subject": "S", "channels": ["email"]}, headers=key
        )
        assert first.status_code == again.status_code == 200
        assert first.headers["x-notification-id"] == again.headers["x-notification-id"]
        for changed in [{"subject": "T", "channels": ["email"]}, {"subject": "S"}, {}]:
            conflict = await post(client, "a@example.com", changed, headers=key)
            assert conflict.status_code == 422, (changed, conflict.text)
            assert "Idempotency-Key" in conflict.text
        await delivered(client, first.headers["x-notification-id"], "email")
        assert read_lines(seen.settings.log_path) == [
            "notification for a@example.com: some notification"
        ]
    assert len(seen.mail.messages) == 1
    assert seen.hooks.received == []


async def test_the_guides_body_and_no_body_still_go_everywhere(tmp_path: Path) -> None:
    async with app(tmp_path) as (seen, client):
        responses = await asyncio.gather(
            post(client, "a@example.com", {"message": "hi"}),
            client.post("/send-notification/b@example.com"),
        )
        for response in responses:
            assert response.status_code == 200
            await delivered(client, response.headers["x-notification-id"], "email", "billing")
    assert len(seen.mail.messages) == 2
    assert len(seen.hooks.received) == 2
