"""Webhooks end to end: the real app through its lifespan, the SQLite outbox on real files, a
real receiver (uvicorn, on loopback) that verifies every request with ``standardwebhooks``."""

from __future__ import annotations

import asyncio
import base64
import logging
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from config import Settings
from service.channels.webhook import channel_name
from tests.conftest import make_settings, read_lines, running
from tests.support.server import http_client, post_notifications, running_worker, uvicorn_server
from tests.support.takeover import worker_killed_mid_delivery
from tests.support.webhooks import (
    Answer,
    disabled_and_enabled_from_the_api,
    readyz_channel,
    until,
    until_status,
    webhook_receiver,
)

pytestmark = pytest.mark.slow  # a webhook receiver under uvicorn, some with uvicorn subprocesses

SECRET = "whsec_" + base64.b64encode(b"the-first-secret-key-0123456789").decode()
NEW_SECRET = "whsec_" + base64.b64encode(b"the-second-secret-key-abcdefghij").decode()
ACKNOWLEDGEMENT = b'{"message":"Notification sent in the background"}'


def webhook_settings(tmp_path: Path, *urls: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "webhook_url": ",".join(urls),
        "webhook_secret": SECRET,
        "webhook_timeout": 2.0,
        "retry_initial": 0.02,
        "delivery_retry_max": 0.1,
        "file_check_interval": 0.05,
    }
    values.update(overrides)
    return make_settings(tmp_path, **values)


async def test_each_notification_is_delivered_once_per_url_signed(tmp_path: Path) -> None:
    """300 concurrent requests, two URLs: each receives every notification once, with a
    signature standardwebhooks verifies, the same webhook-id as the notification id, and the
    documented payload (q included when given)."""
    count = 300
    with webhook_receiver(SECRET) as hooks:
        urls = hooks.url("/a"), hooks.url("/b")
        settings = webhook_settings(tmp_path, *urls)
        async with running(settings) as client:

            async def post(number: int) -> httpx.Response:
                params = {"q": f"query {number}"} if number % 2 else None
                return await client.post(
                    f"/send-notification/u{number}@example.com",
                    params=params,
                    json={"message": f"héllo {number}\n"},
                )

            responses = await asyncio.gather(*(post(i) for i in range(count)))
            assert {response.status_code for response in responses} == {200}
            await until(hooks.receiver, lambda r: len(r.received) >= 2 * count)
            last = responses[-1].headers["x-notification-id"]
            for url in urls:
                state = await until_status(client, last, channel_name(url), "delivered")
                assert state["attempts"] == 1
        ids = {response.headers["x-notification-id"]: i for i, response in enumerate(responses)}
        received = hooks.receiver.received
    assert len(received) == 2 * count
    for path in ("/a", "/b"):
        on_path = [request for request in received if request.path == path]
        assert Counter(request.webhook_id for request in on_path) == Counter(set(ids))
    for request in received:
        assert request.verified_with == (0,)
        assert request.answered == 200
        number = ids[request.webhook_id]
        body = request.json()
        assert body == {
            "type": "notification",
            "id": request.webhook_id,
            "time": body["time"],
            "email": f"u{number}@example.com",
            "message": f"héllo {number}\n",
            "q": f"query {number}" if number % 2 else None,
            "subject": "Notification",
        }
        assert body["time"].endswith("Z")
        assert request.signature.startswith("v1,")
    assert len(read_lines(settings.log_path)) >= count


async def test_a_500_is_retried_then_delivered_without_pausing_the_channel(
    tmp_path: Path,
) -> None:
    with webhook_receiver(SECRET) as hooks:
        hooks.receiver.script("/hook", Answer(500))
        name = channel_name(hooks.url())
        async with running(webhook_settings(tmp_path, hooks.url())) as client:
            response = await client.post("/send-notification/r@example.com")
            notification_id = response.headers["x-notification-id"]
            delivered = await until_status(client, notification_id, name, "delivered")
            assert delivered["attempts"] == 2
            assert (await readyz_channel(client, name))["error"] is None
            metrics = (await client.get("/metrics")).text
        first, second = hooks.receiver.received
    assert first.webhook_id == second.webhook_id == notification_id
    assert (first.answered, second.answered) == (500, 200)
    assert first.body == second.body
    assert f'notify_deliveries_total{{channel="{name}",outcome="retried"}} 1.0' in metrics
    assert f'notify_deliveries_total{{channel="{name}",outcome="delivered"}} 1.0' in metrics


async def test_a_named_url_is_a_channel_of_that_name_everywhere(tmp_path: Path) -> None:
    """``NOTIFY_WEBHOOK_URL=billing=<url>``: the status, /readyz and the metrics call the
    channel ``billing``; the URL is shown in none of them."""
    with webhook_receiver(SECRET) as hooks:
        async with running(webhook_settings(tmp_path, f"billing={hooks.url()}")) as client:
            response = await client.post("/send-notification/n@example.com")
            notification_id = response.headers["x-notification-id"]
            delivered = await until_status(client, notification_id, "billing", "delivered")
            assert delivered["attempts"] == 1
            assert (await readyz_channel(client, "billing"))["error"] is None
            metrics = (await client.get("/metrics")).text
            status = (await client.get(f"/notifications/{notification_id}")).text
        (request,) = hooks.receiver.received
    assert request.webhook_id == notification_id
    assert 'notify_deliveries_total{channel="billing",outcome="delivered"} 1.0' in metrics
    assert hooks.url() not in status
    assert channel_name(hooks.url()) not in status


async def test_a_429_retry_after_is_honoured(tmp_path: Path) -> None:
    """429 with Retry-After: 1, with a backoff of a few hundredths: the next attempt comes
    at least a second after the first (by the receiver's clock)."""
    with webhook_receiver(SECRET) as hooks:
        hooks.receiver.script("/hook", Answer(429, retry_after="1"))
        name = channel_name(hooks.url())
        async with running(webhook_settings(tmp_path, hooks.url())) as client:
            response = await client.post("/send-notification/slow@example.com")
            notification_id = response.headers["x-notification-id"]
            retrying = await until_status(client, notification_id, name, "retrying")
            assert "429" in retrying["last_error"]
            await until_status(client, notification_id, name, "delivered")
        first, second = hooks.receiver.received
    assert (first.answered, second.answered) == (429, 200)
    assert second.at - first.at >= 1.0


@pytest.mark.parametrize(
    ("status", "retry_after", "longest"),
    [
        # The channel's pause: an hour asked, NOTIFY_CHANNEL_PAUSE_MAX given.
        (503, "3600", {"channel_pause_max": 0.2}),
        # One delivery's retry: past its max age of a day (dead at once, before), yet
        # NOTIFY_DELIVERY_RETRY_MAX given.
        (500, "90000", {"delivery_retry_max": 0.2}),
    ],
)
async def test_retry_after_is_honoured_only_up_to_the_longest_wait(
    tmp_path: Path, status: int, retry_after: str, longest: dict[str, float]
) -> None:
    """A Retry-After longer than the longest wait of its kind (the channel's pause, or one
    delivery's retry delay; here 0.2 s) waits that longest only: the receiver, back at once,
    gets the delivery."""
    with webhook_receiver(SECRET) as hooks:
        hooks.receiver.script("/hook", Answer(status, retry_after=retry_after))
        name = channel_name(hooks.url())
        settings = webhook_settings(tmp_path, hooks.url(), **longest)
        async with running(settings) as client:
            response = await client.post("/send-notification/later@example.com")
            notification_id = response.headers["x-notification-id"]
            await until_status(client, notification_id, name, "delivered")
        first, second = hooks.receiver.received
    assert (first.answered, second.answered) == (status, 200)


async def test_a_410_disables_the_url_until_enabled(tmp_path: Path) -> None:
    """410: that delivery is dead, the URL disabled (readyz, metrics); what comes next for it
    is dead without a request, the other URL goes on; enabling (with the token) and a retry
    deliver it."""
    with webhook_receiver(SECRET) as hooks:
        hooks.receiver.answer("/gone", Answer(410))
        gone, other = channel_name(hooks.url("/gone")), channel_name(hooks.url("/ok"))
        settings = webhook_settings(
            tmp_path, hooks.url("/gone"), hooks.url("/ok"), api_tokens="s3cret"
        )
        authorized = {"Authorization": "Bearer s3cret"}
        async with running(settings) as client:
            first = await client.post("/send-notification/a@example.com", headers=authorized)
            first_id = first.headers["x-notification-id"]
            dead = await until_status(client, first_id, gone, "dead")
            assert "410" in dead["last_error"]
            await until_status(client, first_id, other, "delivered")
            channel = await readyz_channel(client, gone)
            assert channel["disabled"] is True
            assert "410" in channel["error"]
            assert channel["target"] == hooks.url("/gone")
            assert (await readyz_channel(client, other))["disabled"] is False
            metrics = (await client.get("/metrics")).text
            assert f'notify_channel_disabled{{channel="{gone}"}} 1.0' in metrics
            assert f'notify_channel_disabled{{channel="{other}"}} 0.0' in metrics

            second = await client.post("/send-notification/b@example.com", headers=authorized)
            second_id = second.headers["x-notification-id"]
            buried = await until_status(client, second_id, gone, "dead")
            assert buried["attempts"] == 0
            assert buried["last_error"].startswith("disabled: HTTP 410")
            await until_status(client, second_id, other, "delivered")
            assert [r.webhook_id for r in hooks.receiver.on("/gone")] == [first_id]

            hooks.receiver.answer("/gone", Answer(200))
            assert (await client.post("/webhooks/enable")).status_code == 401
            enabled = await client.post("/webhooks/enable", headers=authorized)
            assert enabled.json() == {"enabled": [gone]}
            again = await client.post("/webhooks/enable", headers=authorized)
            assert again.json() == {"enabled": []}
            assert (await readyz_channel(client, gone)) == {
                "name": gone,
                "error": None,
                "target": hooks.url("/gone"),
                "disabled": False,
            }
            metrics = (await client.get("/metrics")).text
            assert f'notify_channel_disabled{{channel="{gone}"}} 0.0' in metrics
            retried = await client.post(f"/notifications/{second_id}/retry", headers=authorized)
            assert retried.json() == {"id": second_id, "retried": 1}
            await until_status(client, second_id, gone, "delivered")
    assert [r.webhook_id for r in hooks.receiver.on("/gone")] == [first_id, second_id]


async def test_a_restart_enables_a_disabled_url_as_before(tmp_path: Path) -> None:
    """The API delivering (plain uvicorn): a URL disabled by a 410 is recorded so in the
    outbox, and the next start delivers to it again all the same, as before that record."""
    with webhook_receiver(SECRET) as hooks:
        hooks.receiver.answer("/hook", Answer(410))
        name = channel_name(hooks.url())
        settings = webhook_settings(tmp_path, hooks.url())
        async with running(settings) as client:
            response = await client.post("/send-notification/a@example.com")
            await until_status(client, response.headers["x-notification-id"], name, "dead")
            assert (await readyz_channel(client, name))["disabled"] is True
        hooks.receiver.answer("/hook", Answer(200))
        async with running(settings) as client:
            assert (await readyz_channel(client, name))["disabled"] is False
            response = await client.post("/send-notification/b@example.com")
            await until_status(client, response.headers["x-notification-id"], name, "delivered")
            assert (await client.post("/webhooks/enable")).json() == {"enabled": []}


async def test_with_redis_a_url_disabled_by_a_410_is_shown_and_enabled_from_the_api(
    tmp_path: Path, redis_url: str
) -> None:
    """NOTIFY_BACKEND=redis, a worker delivering: its 410 disables the URL in Redis, so the
    API (another process) shows it and what comes next is dead without a request; the API's
    POST /webhooks/enable reaches the worker at its next look, and it delivers again."""
    with webhook_receiver(SECRET) as hooks:
        settings = {
            "NOTIFY_BACKEND": "redis",
            "NOTIFY_REDIS_URL": redis_url,
            "NOTIFY_WEBHOOK_URL": hooks.url(),
            "NOTIFY_WEBHOOK_SECRET": SECRET,
            "NOTIFY_RETRY_INITIAL": "0.02",
            "NOTIFY_FILE_CHECK_INTERVAL": "0.1",
        }
        async with (
            uvicorn_server(tmp_path, settings) as api,
            running_worker(tmp_path, settings) as worker,
            http_client(api.url) as client,
        ):
            await disabled_and_enabled_from_the_api(client, hooks, worker.output)


async def test_a_receiver_that_hangs_past_the_timeout_gets_it_again(tmp_path: Path) -> None:
    """The first attempt gets no answer within the timeout: retried (same webhook-id, same
    body), delivered; the channel recovers."""
    timeout = 0.3
    with webhook_receiver(SECRET) as hooks:
        hooks.receiver.script("/hook", Answer(hang=True))
        name = channel_name(hooks.url())
        settings = webhook_settings(tmp_path, hooks.url(), webhook_timeout=timeout)
        async with running(settings) as client:
            response = await client.post("/send-notification/h@example.com")
            notification_id = response.headers["x-notification-id"]
            delivered = await until_status(client, notification_id, name, "delivered")
            assert delivered["attempts"] == 2
            assert (await readyz_channel(client, name))["error"] is None
        first, second = hooks.receiver.received
    assert first.webhook_id == second.webhook_id == notification_id
    assert first.body == second.body
    assert second.at - first.at >= timeout


async def test_ack_write_answers_after_the_outbox_commit_with_q_in_the_payload(
    tmp_path: Path,
) -> None:
    """NOTIFY_ACK=write: the 200 comes once every URL's delivery is in the outbox (its status
    is there at once), and the payload carries q as the background path does."""
    with webhook_receiver(SECRET) as hooks:
        hooks.receiver.hold_all = True
        name = channel_name(hooks.url())
        async with running(webhook_settings(tmp_path, hooks.url(), ack="write")) as client:
            response = await client.post(
                "/send-notification/w@example.com", params={"q": "ack"}, json={"message": "m"}
            )
            assert response.status_code == 200
            notification_id = response.headers["x-notification-id"]
            state = (await client.get(f"/notifications/{notification_id}")).json()
            assert state["channels"][name]["status"] in ("queued", "retrying", "delivered")
            await until(hooks.receiver, lambda r: r.held == 1)
            hooks.receiver.release()
            await until_status(client, notification_id, name, "delivered")
    [request] = hooks.receiver.received
    assert request.json()["q"] == "ack"
    assert request.json()["message"] == "m"


async def test_redirects_and_other_4xx_are_dead_at_once(tmp_path: Path) -> None:
    with webhook_receiver(SECRET) as hooks:
        hooks.receiver.script("/hook", Answer(301, location="/elsewhere"), Answer(400))
        name = channel_name(hooks.url())
        async with running(webhook_settings(tmp_path, hooks.url())) as client:
            moved = await client.post("/send-notification/m@example.com")
            moved_state = await until_status(
                client, moved.headers["x-notification-id"], name, "dead"
            )
            bad = await client.post("/send-notification/b@example.com")
            bad_state = await until_status(client, bad.headers["x-notification-id"], name, "dead")
    assert moved_state["attempts"] == 1
    assert "301" in moved_state["last_error"]
    assert "redirect" in moved_state["last_error"]
    assert "400" in bad_state["last_error"]
    assert [r.path for r in hooks.receiver.received] == ["/hook", "/hook"]


async def test_while_rotating_each_delivery_carries_both_signatures(tmp_path: Path) -> None:
    """Two secrets: two signatures per request, and a receiver with either secret alone
    verifies it."""
    with webhook_receiver(SECRET, NEW_SECRET) as hooks:
        settings = webhook_settings(tmp_path, hooks.url(), webhook_secret=f"{SECRET},{NEW_SECRET}")
        async with running(settings) as client:
            for number in range(3):
                await client.post(f"/send-notification/rot{number}@example.com")
            await until(hooks.receiver, lambda r: len(r.received) >= 3)
    for request in hooks.receiver.received:
        assert request.verified_with == (0, 1)
        assert len(request.signature.split(" ")) == 2


async def test_secrets_are_in_no_log_status_readyz_or_metric(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Failures of every kind, logged and shown: neither secret, nor the token in a URL's
    query, appear anywhere."""
    token = "url-t0ken-XYZ"
    caplog.set_level(logging.DEBUG)
    with webhook_receiver(SECRET, NEW_SECRET) as hooks:
        hooks.receiver.script("/hook", Answer(503), Answer(500))
        hooks.receiver.answer("/gone", Answer(410))
        urls = (hooks.url(f"/hook?token={token}"), hooks.url("/gone"))
        settings = webhook_settings(tmp_path, *urls, webhook_secret=f"{SECRET},{NEW_SECRET}")
        async with running(settings) as client:
            response = await client.post("/send-notification/s@example.com")
            notification_id = response.headers["x-notification-id"]
            await until_status(client, notification_id, channel_name(urls[0]), "delivered")
            await until_status(client, notification_id, channel_name(urls[1]), "dead")
            shown = [
                (await client.get("/readyz")).text,
                (await client.get("/metrics")).text,
                (await client.get(f"/notifications/{notification_id}")).text,
                (await client.get("/notifications?status=dead")).text,
            ]
    assert hooks.receiver.on("/hook")[-1].query == f"token={token}"
    assert "hook?…" in shown[0]
    secrets = [SECRET, NEW_SECRET, SECRET.removeprefix("whsec_"), NEW_SECRET.removeprefix("whsec_")]
    for text in [caplog.text, *shown]:
        for secret in [*secrets, token]:
            assert secret not in text


async def test_sigkill_with_webhooks_in_flight_then_restart_delivers_all_repeating_few(
    tmp_path: Path,
) -> None:
    """NOTIFY_ACK=write, 300 acknowledged, the receiver holding what is in flight, SIGKILL,
    restart: every notification is delivered; a repeat (same webhook-id) only for what was in
    flight (at most one per connection). The secret is in none of the server's output."""
    connections = 4
    with webhook_receiver(SECRET) as hooks:
        hooks.receiver.hold_all = True
        settings = {
            "NOTIFY_ACK": "write",
            "NOTIFY_WEBHOOK_URL": hooks.url(),
            "NOTIFY_WEBHOOK_SECRET": SECRET,
            "NOTIFY_WEBHOOK_CONNECTIONS": str(connections),
            "NOTIFY_WEBHOOK_TIMEOUT": "30",
            "NOTIFY_RETRY_INITIAL": "0.02",
            "NOTIFY_DELIVERY_RETRY_MAX": "0.2",
        }
        emails = [f"k{number:04d}@example.com" for number in range(300)]
        async with uvicorn_server(tmp_path, settings) as server:
            async with asyncio.timeout(60):
                results = await post_notifications(
                    server.url, emails, concurrency=32, acknowledgement=ACKNOWLEDGEMENT
                )
            assert sorted(results.acknowledged) == emails
            await until(hooks.receiver, lambda r: r.held == connections)
            in_flight = {request.webhook_id for request in hooks.receiver.received}
            assert len(in_flight) == connections
            server.send_signal(signal.SIGKILL)
            assert await server.wait_exit() == -signal.SIGKILL
            first_output = server.output()
        hooks.receiver.release()
        async with uvicorn_server(tmp_path, settings, output_name="second-output.txt") as again:
            await until(
                hooks.receiver,
                lambda r: len({request.webhook_id for request in r.received}) >= len(emails),
            )
            second_output = again.output()
        received = hooks.receiver.received
    delivered = Counter(request.json()["email"] for request in received)
    assert set(delivered) == set(emails)
    repeated = Counter(request.webhook_id for request in received) - Counter(
        {request.webhook_id: 1 for request in received}
    )
    assert set(repeated) <= in_flight
    assert sum(repeated.values()) <= connections
    assert all(request.verified_with == (0,) for request in received)
    for output in (first_output, second_output):
        assert f"delivering notifications to {hooks.url()} as webhook-" in output
        assert SECRET.removeprefix("whsec_") not in output


async def test_with_redis_a_killed_worker_is_taken_over_and_a_repeat_keeps_its_webhook_id(
    tmp_path: Path, redis_url: str
) -> None:
    """NOTIFY_BACKEND=redis: workers deliver the webhooks. One SIGKILLed with requests in
    flight (the receiver holds them): the next worker delivers every notification within
    10 s, each verified; a repeat only for what was in flight, with the same webhook-id."""
    connections = 4
    with webhook_receiver(SECRET) as hooks:
        hooks.receiver.hold_all = True
        settings = {
            "NOTIFY_BACKEND": "redis",
            "NOTIFY_REDIS_URL": redis_url,
            "NOTIFY_WEBHOOK_URL": hooks.url(),
            "NOTIFY_WEBHOOK_SECRET": SECRET,
            "NOTIFY_WEBHOOK_CONNECTIONS": str(connections),
            "NOTIFY_RETRY_INITIAL": "0.02",
            "NOTIFY_DELIVERY_RETRY_MAX": "0.2",
            "NOTIFY_FILE_CHECK_INTERVAL": "0.1",
        }
        emails = [f"w{number:03d}@example.com" for number in range(100)]

        async def in_flight() -> None:
            await until(hooks.receiver, lambda r: r.held == connections)

        async with worker_killed_mid_delivery(
            tmp_path, settings, emails, in_flight=in_flight, release=hooks.receiver.release
        ) as takeover:
            await until(
                hooks.receiver,
                lambda r: (
                    len({m.json()["email"] for m in r.received if m.answered == 200}) >= len(emails)
                ),
            )
            assert time.monotonic() - takeover.killed_at < 10
    delivered = [m for m in hooks.receiver.received if m.answered == 200]
    assert all(m.verified_with for m in delivered)
    by_email = Counter(m.json()["email"] for m in delivered)
    assert set(by_email) == set(emails)
    assert sum(count - 1 for count in by_email.values()) <= connections
    webhook_ids: dict[str, set[str]] = {}
    for received in delivered:  # a repeat carries the same webhook-id: the receiver drops it
        webhook_ids.setdefault(received.json()["email"], set()).add(received.webhook_id)
    assert all(len(ids) == 1 for ids in webhook_ids.values())
