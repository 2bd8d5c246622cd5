"""Email delivery end to end: the real app through its lifespan, the SQLite outbox on real files,
a real SMTP server (aiosmtpd) on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sqlite3
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from config import Settings
from tests.conftest import make_settings, read_lines, running
from tests.support.server import (
    free_port,
    http_client,
    post_notifications,
    uvicorn_server,
)
from tests.support.smtp import Recorder, smtp_server
from tests.support.takeover import worker_killed_mid_delivery
from tests.support.waiting import eventually

SENDER = "notify@service.example"
ACKNOWLEDGEMENT = b'{"message":"Notification sent in the background"}'


def email_settings(tmp_path: Path, url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "smtp_url": url,
        "smtp_from": SENDER,
        "smtp_timeout": 2.0,
        "retry_initial": 0.02,
        "delivery_retry_max": 0.1,
        "file_check_interval": 0.05,
    }
    values.update(overrides)
    return make_settings(tmp_path, **values)


async def until(recorder: Recorder, condition: Any, within: float = 20.0) -> None:
    """Wait (in a thread: the server records from its own) until the server saw it."""
    assert await asyncio.to_thread(recorder.wait_for, condition, within), "not seen in time"


async def channel_status(client: httpx.AsyncClient, notification_id: str) -> dict[str, Any]:
    response = await client.get(f"/notifications/{notification_id}")
    assert response.status_code == 200, response.text
    email: dict[str, Any] = response.json()["channels"]["email"]
    return email


async def until_email_status(
    client: httpx.AsyncClient, notification_id: str, status: str
) -> dict[str, Any]:
    async def reached() -> dict[str, Any]:
        email = await channel_status(client, notification_id)
        assert email["status"] == status, f"email stayed {email}"
        return email

    return await eventually(reached, interval=0.02, message=f"email {status}")


@pytest.mark.slow
async def test_each_notification_is_one_email_and_still_one_log_line(tmp_path: Path) -> None:
    """2,000 concurrent requests: 2,000 messages, one per Message-ID, to the right address,
    from the configured sender; the log has its 2,000 lines as before."""
    count = 2000
    with smtp_server() as server:
        settings = email_settings(tmp_path, server.url())
        async with running(settings) as client:
            responses = await asyncio.gather(
                *(client.post(f"/send-notification/u{i}@example.com") for i in range(count))
            )
            assert {response.status_code for response in responses} == {200}
            await until(server.recorder, lambda r: len(r.messages) >= count)
            ids = {response.headers["x-notification-id"] for response in responses}
            last = responses[-1].headers["x-notification-id"]
            assert (await until_email_status(client, last, "delivered"))["attempts"] == 1
        messages = [received.parsed() for received in server.recorder.messages]
    assert len(messages) == count
    assert {message["Message-ID"] for message in messages} == {
        f"<{notification_id}@service.example>" for notification_id in ids
    }
    assert {message["X-Notification-Id"] for message in messages} == ids
    assert {message["To"] for message in messages} == {f"u{i}@example.com" for i in range(count)}
    assert {message["From"] for message in messages} == {SENDER}
    assert server.recorder.connections <= settings.smtp_connections
    assert len(read_lines(settings.log_path)) == count


@pytest.mark.slow
async def test_a_451_is_retried_until_accepted_and_nothing_is_sent_twice(tmp_path: Path) -> None:
    """The server defers for a while: the delivery is retrying, then delivered, once."""
    with smtp_server() as server:
        server.recorder.data_reply = "451 4.3.0 try again later"
        async with running(email_settings(tmp_path, server.url())) as client:
            response = await client.post("/send-notification/later@example.com")
            notification_id = response.headers["x-notification-id"]
            retrying = await until_email_status(client, notification_id, "retrying")
            assert "451" in retrying["last_error"]
            assert retrying["next_attempt_at"] is not None
            server.recorder.data_reply = None
            delivered = await until_email_status(client, notification_id, "delivered")
            assert delivered["attempts"] >= 2
        assert [m.parsed()["X-Notification-Id"] for m in server.recorder.messages] == [
            notification_id
        ]


@pytest.mark.slow
async def test_a_550_is_dead_at_once_listed_and_sent_by_retry(tmp_path: Path) -> None:
    """An unknown mailbox fails for good with one attempt, is listed as a dead letter, and an
    operator's retry sends it once the mailbox exists."""
    with smtp_server() as server:
        server.recorder.rcpt_replies["gone@example.com"] = "550 5.1.1 no such mailbox"
        async with running(email_settings(tmp_path, server.url())) as client:
            response = await client.post("/send-notification/gone@example.com")
            notification_id = response.headers["x-notification-id"]
            dead = await until_email_status(client, notification_id, "dead")
            assert dead["attempts"] == 1
            assert "550" in dead["last_error"]

            async def dead_listed() -> dict[str, Any]:  # once its row is in the ledger
                body: dict[str, Any] = (
                    await client.get("/notifications", params={"status": "dead"})
                ).json()
                assert [item["id"] for item in body["items"]] == [notification_id], body
                return body

            listed = await eventually(dead_listed, message="listed as dead")
            assert listed["next"] is None
            assert server.recorder.messages == []
            del server.recorder.rcpt_replies["gone@example.com"]
            retried = await client.post(f"/notifications/{notification_id}/retry")
            assert retried.json() == {"id": notification_id, "retried": 1}
            await until_email_status(client, notification_id, "delivered")
            again = await client.post(f"/notifications/{notification_id}/retry")
            assert again.status_code == 404
        assert len(server.recorder.messages) == 1


@pytest.mark.slow
async def test_dead_letters_and_retry_need_the_token_when_tokens_are_set(tmp_path: Path) -> None:
    with smtp_server() as server:
        settings = email_settings(tmp_path, server.url(), api_tokens="s3cret")
        async with running(settings) as client:
            assert (await client.get("/notifications?status=dead")).status_code == 401
            assert (await client.post("/notifications/x/retry")).status_code == 401
            authorized = {"Authorization": "Bearer s3cret"}
            listed = await client.get("/notifications?status=dead", headers=authorized)
            assert listed.json() == {"items": [], "next": None}


@pytest.mark.slow
async def test_a_mail_server_down_at_start_gets_everything_once_it_is_up(
    tmp_path: Path,
) -> None:
    """Requests are accepted while the server is unreachable (the outbox holds the mail, and
    /readyz names the channel without refusing); once it is up, all are delivered."""
    port = free_port()
    settings = email_settings(tmp_path, f"smtp://127.0.0.1:{port}")
    async with running(settings) as client:
        responses = [await client.post(f"/send-notification/d{i}@example.com") for i in range(20)]
        assert {response.status_code for response in responses} == {200}
        first = responses[0].headers["x-notification-id"]
        await until_email_status(client, first, "retrying")
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        [channel] = ready.json()["channels"]
        assert channel["name"] == "email"
        assert channel["error"]
        with smtp_server(port=port) as server:
            await until(server.recorder, lambda r: len(r.messages) >= 20)
            for response in responses:
                await until_email_status(client, response.headers["x-notification-id"], "delivered")
            assert (await client.get("/readyz")).json()["channels"][0]["error"] is None
    assert sorted(m.parsed()["To"] for m in server.recorder.messages) == sorted(
        f"d{i}@example.com" for i in range(20)
    )


@pytest.mark.slow
async def test_while_the_server_is_down_every_waiting_email_shows_the_probe_time(
    tmp_path: Path,
) -> None:
    """With the mail server unreachable, the channel pauses once for the round that found it
    down: every accepted email, tried or not, shows ``retrying`` with the server's error and
    the same next attempt (the probe's), in the future; /readyz names the error."""
    port = free_port()
    # A first pause of 30-60 s: long enough to look at, whatever the machine's speed.
    settings = email_settings(
        tmp_path, f"smtp://127.0.0.1:{port}", retry_initial=60.0, channel_pause_max=60.0
    )
    async with running(settings) as client:
        responses = [await client.post(f"/send-notification/p{i}@example.com") for i in range(20)]
        ids = [response.headers["x-notification-id"] for response in responses]
        await until_email_status(client, ids[0], "retrying")
        statuses = [await channel_status(client, notification_id) for notification_id in ids]
        now = time.time()
        error = (await client.get("/readyz")).json()["channels"][0]["error"]
    assert {status["status"] for status in statuses} == {"retrying"}
    assert {status["last_error"] for status in statuses} == {error}
    assert "cannot connect" in error
    untried = {s["next_attempt_at"] for s in statuses if s["attempts"] == 0}
    assert len(untried) == 1  # one pause for all
    [probe_at] = untried
    assert datetime.fromisoformat(probe_at).timestamp() > now
    assert sum(status["attempts"] for status in statuses) <= 8  # one round: a connection each


@pytest.mark.slow
async def test_pending_mail_survives_a_restart(tmp_path: Path) -> None:
    """What was accepted while the server was down is in the outbox, on disk: the next run
    delivers it."""
    port = free_port()
    settings = email_settings(tmp_path, f"smtp://127.0.0.1:{port}", shutdown_timeout=0.2)
    async with running(settings) as client:
        response = await client.post("/send-notification/kept@example.com")
        notification_id = response.headers["x-notification-id"]
        await until_email_status(client, notification_id, "retrying")
    with smtp_server(port=port) as server:
        async with running(settings):
            await until(server.recorder, lambda r: len(r.messages) >= 1)
    [message] = [m.parsed() for m in server.recorder.messages]
    assert message["X-Notification-Id"] == notification_id


@pytest.mark.slow
async def test_ack_write_answers_after_the_outbox_commit(tmp_path: Path) -> None:
    """With NOTIFY_ACK=write the 200 comes once the delivery is in the outbox: its status is
    there at once, in every process. The intake does not linger for more then (with an hour's
    NOTIFY_OUTBOX_BATCH_DELAY the 200 would never come)."""
    with smtp_server() as server:
        server.recorder.hold_data = True
        settings = email_settings(tmp_path, server.url(), ack="write", outbox_batch_delay=3600.0)
        async with running(settings) as client:
            response = await client.post("/send-notification/w@example.com")
            assert response.status_code == 200
            email = await channel_status(client, response.headers["x-notification-id"])
            assert email["status"] in ("queued", "retrying", "delivered")
            server.recorder.release()
            await until(server.recorder, lambda r: len(r.messages) >= 1)


async def test_a_shutdown_ends_the_intakes_wait_for_more(tmp_path: Path) -> None:
    """The intake waits NOTIFY_OUTBOX_BATCH_DELAY for more notifications before a
    transaction; a shutdown ends the wait: what was accepted goes into the outbox then, not
    into the spool (with an hour's wait it would be spooled at the shutdown deadline)."""
    settings = email_settings(
        tmp_path, f"smtp://127.0.0.1:{free_port()}", outbox_batch_delay=3600.0
    )
    async with running(settings) as client:
        response = await client.post("/send-notification/late@example.com")
        assert response.status_code == 200
        notification_id = response.headers["x-notification-id"]
    outbox = settings.effective_outbox_path()
    with contextlib.closing(sqlite3.connect(outbox)) as db:
        rows = db.execute("SELECT id, channel, status FROM deliveries").fetchall()
    assert [(row[0], row[1]) for row in rows] == [(notification_id, "email")]
    assert rows[0][2] in ("queued", "retrying")
    assert not outbox.with_name(outbox.name + ".spool").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("message", "expected_body"),
    [
        ("hi\r\nBcc: evil@example.net", "hi\nBcc: evil@example.net\n"),
        ("Subject: forged\n\nbody", "Subject: forged\n\nbody\n"),
        ("line\u2028two\x85three", "line\u2028two\x85three\n"),
    ],
)
async def test_no_input_becomes_a_header(tmp_path: Path, message: str, expected_body: str) -> None:
    """A message with line breaks and header-like text stays in the body: the email has
    exactly its own headers and one recipient."""
    with smtp_server() as server:
        async with running(email_settings(tmp_path, server.url())) as client:
            response = await client.post(
                "/send-notification/to@example.com", json={"message": message}
            )
            assert response.status_code == 200
            await until(server.recorder, lambda r: len(r.messages) >= 1)
    [received] = server.recorder.messages
    assert received.rcpt_tos == ("to@example.com",)
    parsed = received.parsed()
    own = ["From", "To", "Subject", "Date", "Message-ID", "X-Notification-Id"]
    mime = ["Content-Type", "Content-Transfer-Encoding", "MIME-Version"]
    assert sorted(parsed.keys()) == sorted([*own, *mime])
    assert parsed["Subject"] == "Notification"
    assert parsed.get_content().replace("\r\n", "\n") == expected_body


@pytest.mark.slow
async def test_a_recipient_outside_the_allowed_domains_gets_422(tmp_path: Path) -> None:
    with smtp_server() as server:
        settings = email_settings(tmp_path, server.url(), email_domains="example.com, bücher.de")
        async with running(settings) as client:
            refused = await client.post("/send-notification/a@example.org")
            assert refused.status_code == 422
            [error] = refused.json()["detail"]
            assert error["loc"] == ["path", "email"]
            assert "example.com" in error["msg"]
            assert (await client.post("/send-notification/a@example.com")).status_code == 200
            idna = await client.post("/send-notification/a@xn--bcher-kva.de")
            assert idna.status_code == 200
    assert not settings.log_path.read_text().count("example.org")


@pytest.mark.slow
async def test_the_password_is_in_no_log_line_status_or_metric(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A server refusing our credentials: the failure is logged and shown, the password
    never."""
    password = "pa55-w0rd-XYZ"
    caplog.set_level(logging.DEBUG)
    with smtp_server(auth=("notify", "right-password"), starttls=None) as server:
        settings = email_settings(tmp_path, server.url("notify", password))
        async with running(settings) as client:
            response = await client.post("/send-notification/p@example.com")
            notification_id = response.headers["x-notification-id"]
            email = await until_email_status(client, notification_id, "retrying")
            shown = [
                str(email),
                (await client.get("/readyz")).text,
                (await client.get("/metrics")).text,
                (await client.get(f"/notifications/{notification_id}")).text,
            ]
    assert email["last_error"]
    assert password not in caplog.text
    assert all(password not in text for text in shown)


@pytest.mark.slow
async def test_metrics_count_deliveries_and_the_outbox_depth(tmp_path: Path) -> None:
    with smtp_server() as server:
        async with running(email_settings(tmp_path, server.url())) as client:
            response = await client.post("/send-notification/m@example.com")
            await until_email_status(client, response.headers["x-notification-id"], "delivered")
            text = (await client.get("/metrics")).text
    assert 'notify_deliveries_total{channel="email",outcome="delivered"} 1.0' in text
    assert 'notify_delivery_seconds_count{channel="email"} 1.0' in text
    assert "notify_outbox_depth" in text
    assert 'notify_channel_concurrency{channel="email"} 4.0' in text  # the floor: nothing waited


@pytest.mark.slow
async def test_sigkill_with_mail_pending_then_restart_delivers_all_repeating_few(
    tmp_path: Path,
) -> None:
    """NOTIFY_ACK=write, 1,000 deliveries pending (the mail server holds what is in flight),
    SIGKILL, restart: every acknowledged notification is delivered; a repeat only for what was
    in flight (at most one message per connection)."""
    connections = 4
    with smtp_server() as mail:
        mail.recorder.hold_data = True
        settings = {
            "NOTIFY_ACK": "write",
            "NOTIFY_SMTP_URL": mail.url(),
            "NOTIFY_SMTP_FROM": SENDER,
            "NOTIFY_SMTP_CONNECTIONS": str(connections),
            "NOTIFY_RETRY_INITIAL": "0.02",
            "NOTIFY_DELIVERY_RETRY_MAX": "0.2",
        }
        emails = [f"k{number:04d}@example.com" for number in range(1000)]
        async with uvicorn_server(tmp_path, settings) as server:
            async with asyncio.timeout(60):
                results = await post_notifications(
                    server.url, emails, concurrency=32, acknowledgement=ACKNOWLEDGEMENT
                )
            assert sorted(results.acknowledged) == emails
            await until(mail.recorder, lambda r: r.held == connections)
            server.send_signal(signal.SIGKILL)
            assert await server.wait_exit() == -signal.SIGKILL
        mail.recorder.release()
        second = {**settings, "NOTIFY_LOG_PATH": str(tmp_path / "log.txt")}
        async with uvicorn_server(tmp_path, second, output_name="second-output.txt"):
            await until(
                mail.recorder, lambda r: len({m.rcpt_tos for m in r.messages}) >= len(emails)
            )
    delivered = Counter(received.rcpt_tos[0] for received in mail.recorder.messages)
    assert set(delivered) == set(emails)
    repeated = {email: count for email, count in delivered.items() if count > 1}
    assert sum(count - 1 for count in repeated.values()) <= connections, repeated


@pytest.mark.slow
async def test_with_redis_workers_deliver_and_a_killed_one_is_taken_over_within_10_s(
    tmp_path: Path, redis_url: str
) -> None:
    """NOTIFY_BACKEND=redis: the outbox is in Redis and workers deliver. A worker SIGKILLed
    with sends in flight: the next worker gives its leases back at once and delivers every
    notification within 10 s; a repeat only for what was in flight. The API answers each
    notification's email status from Redis."""
    connections = 4
    with smtp_server() as mail:
        mail.recorder.hold_data = True
        settings = {
            "NOTIFY_BACKEND": "redis",
            "NOTIFY_REDIS_URL": redis_url,
            "NOTIFY_SMTP_URL": mail.url(),
            "NOTIFY_SMTP_FROM": SENDER,
            "NOTIFY_SMTP_CONNECTIONS": str(connections),
            "NOTIFY_RETRY_INITIAL": "0.02",
            "NOTIFY_DELIVERY_RETRY_MAX": "0.2",
            "NOTIFY_FILE_CHECK_INTERVAL": "0.1",
        }
        emails = [f"r{number:03d}@example.com" for number in range(100)]

        async def in_flight() -> None:
            await until(mail.recorder, lambda r: r.held == connections)

        async with (
            worker_killed_mid_delivery(
                tmp_path, settings, emails, in_flight=in_flight, release=mail.recorder.release
            ) as takeover,
            http_client(takeover.api.url) as client,
        ):
            await until(
                mail.recorder,
                lambda r: len({m.rcpt_tos for m in r.messages}) >= len(emails),
            )
            assert time.monotonic() - takeover.killed_at < 10
            late = await client.post("/send-notification/late@example.com")
            await until_email_status(client, late.headers["x-notification-id"], "delivered")
            response = await client.get("/notifications", params={"status": "dead"})  # none
            assert response.json() == {"items": [], "next": None}
    delivered = Counter(received.rcpt_tos[0] for received in mail.recorder.messages)
    assert set(delivered) == {*emails, "late@example.com"}
    assert sum(count - 1 for count in delivered.values()) <= connections


@pytest.mark.slow
async def test_every_process_sharing_the_outbox_answers_the_email_status(tmp_path: Path) -> None:
    """Two processes (two apps, one outbox file and one ledger, as --workers 2): the one that
    did not accept the notification answers as the one that did, its email status (from the
    outbox) and its log status (from the ledger) alike."""
    with smtp_server() as server:
        settings = email_settings(tmp_path, server.url())
        async with running(settings) as first, running(settings) as second:
            response = await first.post("/send-notification/both@example.com")
            notification_id = response.headers["x-notification-id"]
            await until_email_status(first, notification_id, "delivered")

            async def written_there() -> dict[str, Any]:
                other = await second.get(f"/notifications/{notification_id}")
                assert other.status_code == 200, other.text
                body: dict[str, Any] = other.json()
                assert body["status"] == "written", body
                return body

            body = await eventually(written_there, message="the log status in the other process")
            assert body["channels"]["email"]["status"] == "delivered"
            mine = (await first.get(f"/notifications/{notification_id}")).json()
            assert mine == body
    assert len(server.recorder.messages) == 1
