"""Apprise end to end: the real app through its lifespan (or real uvicorn, notify-service and
Redis worker processes), the real Apprise library, and real local receivers (uvicorn, on
loopback) reached through Apprise's ``json://``, ``form://`` and ``ntfy://`` schemes."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

from config import Settings
from tests.conftest import make_settings, read_lines, running
from tests.support.apprise import FAKE_SECRETS, FAKE_URLS, SHOWN
from tests.support.server import http_client, notify_service, running_worker, uvicorn_server
from tests.support.waiting import eventually
from tests.support.webhooks import (
    Answer,
    ReceiverServer,
    readyz_channel,
    until,
    until_status,
    webhook_receiver,
)

pytestmark = pytest.mark.slow  # receivers under uvicorn, some tests with server processes

TOKEN = "p4th-t0ken-XYZ"
"""A secret in a URL's path: it must show nowhere."""
PASSWORD = "pa55-w0rd-XYZ"


def json_url(hooks: ReceiverServer, path: str = "/hook") -> str:
    return hooks.url(path).replace("http://", "json://", 1)


def apprise_settings(tmp_path: Path, *urls: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "apprise_urls": ", ".join(urls),
        "apprise_timeout": 5.0,
        "retry_initial": 0.02,
        "delivery_retry_max": 0.1,
        "channel_pause_max": 0.2,
        "file_check_interval": 0.05,
    }
    values.update(overrides)
    return make_settings(tmp_path, **values)


async def test_json_form_and_ntfy_deliveries_arrive_with_the_message_and_title(
    tmp_path: Path,
) -> None:
    """One notification, three URLs: each receiver gets the message and, as the title, the
    configured subject, in its scheme's shape; each channel's status is delivered."""
    message = "héllo\nworld"
    with webhook_receiver() as hooks:
        settings = apprise_settings(
            tmp_path,
            f"ops={json_url(hooks, '/json')}",
            f"forms={hooks.url('/form').replace('http://', 'form://', 1)}",
            f"alerts=ntfy://127.0.0.1:{hooks.port}/builds",
            email_subject="Build report",
        )
        async with running(settings) as client:
            response = await client.post(
                "/send-notification/ada@example.com", json={"message": message}
            )
            notification_id = response.headers["x-notification-id"]
            for name in ("ops", "forms", "alerts"):
                delivered = await until_status(client, notification_id, name, "delivered")
                assert delivered["attempts"] == 1
        by_path = {request.path: request for request in hooks.receiver.received}
    assert len(hooks.receiver.received) == 3
    posted = by_path["/json"].json()
    assert (posted["title"], posted["message"], posted["type"]) == ("Build report", message, "info")
    form = by_path["/form"].form()
    assert (form["title"], form["message"]) == ("Build report", message)
    assert by_path["/json"].header("content-type") == "application/json"
    assert by_path["/form"].header("content-type") == "application/x-www-form-urlencoded"
    ntfy = by_path["/"].json()
    assert ntfy == {"topic": "builds", "title": "Build report", "message": message}


async def test_a_500_is_retried_then_delivered_and_counted_by_the_channels_name(
    tmp_path: Path,
) -> None:
    """The receiver answers 500 once: the delivery is retried (the channel not paused) and
    delivered; the metrics count both under the channel's name."""
    with webhook_receiver() as hooks:
        hooks.receiver.script("/hook", Answer(500))
        async with running(apprise_settings(tmp_path, f"ops={json_url(hooks)}")) as client:
            response = await client.post("/send-notification/r@example.com")
            notification_id = response.headers["x-notification-id"]
            delivered = await until_status(client, notification_id, "ops", "delivered")
            assert delivered["attempts"] == 2
            assert [entry["outcome"] for entry in delivered["history"]] == [
                "retrying",
                "delivered",
            ]
            assert delivered["history"][0]["error"] == "Apprise: the JSON send failed"
            assert (await readyz_channel(client, "ops"))["error"] is None
            metrics = (await client.get("/metrics")).text
    assert [request.answered for request in hooks.receiver.received] == [500, 200]
    assert 'notify_deliveries_total{channel="ops",outcome="retried"} 1.0' in metrics
    assert 'notify_deliveries_total{channel="ops",outcome="delivered"} 1.0' in metrics


async def test_a_receiver_that_keeps_failing_pauses_the_channel_until_it_recovers(
    tmp_path: Path, root_log: list[str]
) -> None:
    """Every attempt failing: after three in a row the channel is down (``/readyz`` says why,
    one log line), probed, and delivers again once the receiver answers; its recovery is
    logged."""
    with webhook_receiver() as hooks:
        hooks.receiver.answer("/hook", Answer(500))
        async with running(apprise_settings(tmp_path, f"ops={json_url(hooks)}")) as client:
            response = await client.post("/send-notification/p@example.com")
            notification_id = response.headers["x-notification-id"]

            async def down() -> dict[str, Any]:
                channel = await readyz_channel(client, "ops")
                assert channel["error"] is not None
                return channel

            paused = await eventually(down, message="the channel paused")
            assert paused["error"] == "Apprise: the JSON send failed (3+ in a row)"
            assert paused["target"] == f"json://127.0.0.1:{hooks.port} (JSON)"
            retrying = await until_status(client, notification_id, "ops", "retrying")
            assert retrying["last_error"].startswith("Apprise: the JSON send failed")
            hooks.receiver.answer("/hook", Answer(200))
            await until_status(client, notification_id, "ops", "delivered")
            assert (await readyz_channel(client, "ops"))["error"] is None
    answers = [request.answered for request in hooks.receiver.received]
    assert answers[-1] == 200
    assert answers.count(500) >= 3
    failing = [line for line in root_log if "ops: cannot deliver" in line]
    assert len(failing) == 1
    assert any("ops: delivering again" in line for line in root_log)


async def test_too_old_is_dead_and_the_retry_endpoint_sends_it_again(tmp_path: Path) -> None:
    """Failing past ``NOTIFY_DELIVERY_MAX_AGE``: dead, listed with the dead letters; once the
    receiver is back, ``POST /notifications/{id}/retry`` delivers it."""
    with webhook_receiver() as hooks:
        hooks.receiver.answer("/hook", Answer(500))
        settings = apprise_settings(tmp_path, f"ops={json_url(hooks)}", delivery_max_age=0.5)
        async with running(settings) as client:
            response = await client.post("/send-notification/d@example.com")
            notification_id = response.headers["x-notification-id"]
            dead = await until_status(client, notification_id, "ops", "dead")
            # Dead after an attempt, or when claimed past its age (the channel paused meanwhile):
            # the last error says which; the attempts' history has Apprise's failure either way.
            assert "not delivered within" in dead["last_error"]
            errors = [attempt["error"] or "" for attempt in dead["history"]]
            assert any(error.startswith("Apprise: the JSON send failed") for error in errors)
            listed = (await client.get("/notifications?status=dead&channel=ops")).json()
            assert [item["id"] for item in listed["items"]] == [notification_id]
            hooks.receiver.answer("/hook", Answer(200))
            retried = await client.post(f"/notifications/{notification_id}/retry")
            assert retried.json() == {"id": notification_id, "retried": 1}
            await until_status(client, notification_id, "ops", "delivered")
            metrics = (await client.get("/metrics")).text
    assert hooks.receiver.received[-1].answered == 200
    assert 'notify_deliveries_total{channel="ops",outcome="dead"} 1.0' in metrics


async def test_no_secret_reaches_a_log_line_status_readyz_or_metric(
    tmp_path: Path, root_log: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Failures and a recovery with a password and a token in the URL: Apprise itself logs
    them (its own logger), yet neither is in any line the service's log shows, any status,
    the activity log, ``/readyz`` or ``/metrics``."""
    caplog.set_level(logging.DEBUG)
    with webhook_receiver() as hooks:
        path = f"/hook/{TOKEN}"
        hooks.receiver.script(path, Answer(500), Answer(503), Answer(500), Answer(500))
        url = f"json://user:{PASSWORD}@127.0.0.1:{hooks.port}{path}"
        async with running(apprise_settings(tmp_path, f"ops={url}")) as client:
            response = await client.post("/send-notification/s@example.com")
            notification_id = response.headers["x-notification-id"]
            await until_status(client, notification_id, "ops", "delivered")
            shown = [
                (await client.get("/readyz")).text,
                (await client.get("/metrics")).text,
                (await client.get(f"/notifications/{notification_id}")).text,
                (await client.get("/notifications?channel=ops")).text,
            ]
    assert [request.answered for request in hooks.receiver.received] == [500, 503, 500, 500, 200]
    said_by_apprise = [r.getMessage() for r in caplog.records if r.name == "apprise"]
    assert any(TOKEN in message for message in said_by_apprise), "the test shows nothing"
    assert f"json://127.0.0.1:{hooks.port} (JSON)" in shown[0]
    assert any("delivering notifications to json://127.0.0.1" in line for line in root_log)
    for text in [*root_log, *shown]:
        assert TOKEN not in text
        assert PASSWORD not in text


async def test_apprise_sends_hold_neither_the_event_loop_nor_its_default_executor(
    tmp_path: Path,
) -> None:
    """More sends held by the receiver than the loop's default executor has threads: the API
    answers, and the next notification's line is written (the log's writes use that
    executor); once released, every notification is delivered."""
    held = min(32, (os.cpu_count() or 1) + 4) + 1
    with webhook_receiver() as hooks:
        hooks.receiver.hold_all = True
        settings = apprise_settings(
            tmp_path,
            f"ops={json_url(hooks)}",
            apprise_connections=held,
            apprise_connections_min=held,
        )
        async with running(settings) as client:
            for number in range(held):
                await client.post(f"/send-notification/h{number}@example.com")
            await until(hooks.receiver, lambda r: r.held == held)
            assert (await client.get("/healthz")).status_code == 200
            response = await client.post("/send-notification/later@example.com")
            assert response.status_code == 200
            await eventually(
                lambda: (
                    "notification for later@example.com: some notification"
                    in read_lines(settings.log_path)
                ),
                message="the next line written",
            )
            assert hooks.receiver.held == held
            hooks.receiver.release()
            await until_status(client, response.headers["x-notification-id"], "ops", "delivered")
    assert len(hooks.receiver.received) == held + 1


async def test_the_five_schemes_start_and_readyz_shows_them_without_secrets(
    tmp_path: Path, root_log: list[str]
) -> None:
    """slack://, discord://, tgram://, mailto:// and pover:// URLs (fake tokens) start with
    the app; ``/readyz`` lists each channel as its scheme and service, and no token shows
    there, in ``/metrics`` or in the log."""
    urls = [f"{scheme}-ops={url}" for scheme, url in FAKE_URLS.items()]
    async with running(apprise_settings(tmp_path, *urls)) as client:
        ready = await client.get("/readyz")
        metrics = (await client.get("/metrics")).text
    assert ready.status_code == 200
    channels = {c["name"]: c["target"] for c in ready.json()["channels"]}
    assert channels == {f"{scheme}-ops": shown for scheme, shown in SHOWN.items()}
    for text in [ready.text, metrics, *root_log]:
        for secret in FAKE_SECRETS:
            assert secret not in text


async def test_notify_service_runs_a_delivery_process_for_apprise(tmp_path: Path) -> None:
    """notify-service with only Apprise configured starts its delivery process, which sends;
    no secret is in the output of either process."""
    with webhook_receiver() as hooks:
        url = f"json://user:{PASSWORD}@127.0.0.1:{hooks.port}/hook/{TOKEN}"
        settings = {
            "NOTIFY_LOG_PATH": str(tmp_path / "log.txt"),
            "NOTIFY_APPRISE_URLS": f"ops={url}",
            "NOTIFY_LOG_LEVEL": "debug",
        }
        async with (
            notify_service(tmp_path, settings) as server,
            http_client(server.url) as client,
        ):
            response = await client.post("/send-notification/n@example.com")
            await until_status(client, response.headers["x-notification-id"], "ops", "delivered")
            output = server.output()
    assert [request.path for request in hooks.receiver.received] == [f"/hook/{TOKEN}"]
    assert f"json://127.0.0.1:{hooks.port} (JSON) as ops" in output
    assert TOKEN not in output
    assert PASSWORD not in output


async def test_with_redis_a_worker_delivers_through_apprise(tmp_path: Path, redis_url: str) -> None:
    """NOTIFY_BACKEND=redis: the API adds the delivery, a worker sends it through Apprise; the
    API shows it delivered; no secret is in the output of either process."""
    with webhook_receiver() as hooks:
        hooks.receiver.script(f"/hook/{TOKEN}", Answer(500))
        url = f"json://user:{PASSWORD}@127.0.0.1:{hooks.port}/hook/{TOKEN}"
        settings = {
            "NOTIFY_BACKEND": "redis",
            "NOTIFY_REDIS_URL": redis_url,
            "NOTIFY_APPRISE_URLS": f"ops={url}",
            "NOTIFY_RETRY_INITIAL": "0.02",
            "NOTIFY_FILE_CHECK_INTERVAL": "0.1",
            "NOTIFY_LOG_LEVEL": "debug",
        }
        async with (
            uvicorn_server(tmp_path, settings) as api,
            running_worker(tmp_path, settings) as worker,
            http_client(api.url) as client,
        ):
            response = await client.post("/send-notification/w@example.com")
            notification_id = response.headers["x-notification-id"]
            delivered = await until_status(client, notification_id, "ops", "delivered")
            assert delivered["attempts"] == 2
            outputs = [api.output(), worker.output()]
    assert [request.answered for request in hooks.receiver.received] == [500, 200]
    assert f"json://127.0.0.1:{hooks.port} (JSON) as ops" in outputs[1]
    for output in outputs:
        assert TOKEN not in output
        assert PASSWORD not in output
