"""The local backend's delivery process: ``NOTIFY_DELIVERY=external`` API processes only add to
the SQLite outbox, and ``python -m service.deliver`` (run and supervised by ``notify-service``)
delivers it. Real processes, a real SMTP server (aiosmtpd) on loopback."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from service.deliver import DeliveryProcess
from service.metrics import Metrics
from service.outbox.sqlite import SqliteOutbox
from tests.conftest import make_settings, running
from tests.support.server import (
    HOST,
    delivery_pids,
    free_port,
    http_client,
    notify_service,
    post_notifications,
    service_env,
)
from tests.support.smtp import Recorder, smtp_server
from tests.support.waiting import eventually
from tests.support.webhooks import disabled_and_enabled_from_the_api, webhook_receiver

SENDER = "notify@service.example"
ACKNOWLEDGEMENT = b'{"message":"Notification sent in the background"}'
CONNECTIONS = 4
SECRET = "whsec_" + base64.b64encode(b"the-delivery-process-secret-key").decode()


def outbox_rows(path: Path) -> list[tuple[str, str, int, str | None]]:
    """Every delivery in the outbox file: recipient, status, attempts, lease holder."""
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT recipient, status, attempts, lease_owner FROM deliveries ORDER BY recipient"
        ).fetchall()
    db.close()
    return [(str(a), str(b), int(c), d) for a, b, c, d in rows]


async def test_an_external_api_adds_to_the_outbox_and_never_sends(tmp_path: Path) -> None:
    """NOTIFY_DELIVERY=external, through the app's lifespan: each notification's delivery is in
    the outbox, unattempted and unleased after shutdown; /readyz shows the channel as the
    delivering process records it in the outbox (paused with its error, then delivering)."""
    unreachable = f"smtp://{HOST}:{free_port()}"  # a send would fail, and count an attempt
    settings = make_settings(tmp_path, smtp_url=unreachable, smtp_from=SENDER, delivery="external")
    emails = [f"e{number}@example.com" for number in range(5)]
    async with running(settings) as client:
        for email in emails:
            assert (await client.post(f"/send-notification/{email}")).status_code == 200
        [channel] = (await client.get("/readyz")).json()["channels"]
        assert (channel["name"], channel["error"]) == ("email", None)
        outbox = settings.effective_outbox_path()
        await eventually(lambda: len(outbox_rows(outbox)) == len(emails), message="rows added")
        elsewhere = SqliteOutbox(outbox, lease_seconds=60)  # as notify-deliver records it
        await elsewhere.open()
        try:
            await elsewhere.pause("email", time.time() + 60, "cannot connect: refused")
            [channel] = (await client.get("/readyz")).json()["channels"]
            assert channel["error"] == "cannot connect: refused"
            await elsewhere.resume("email")
            [channel] = (await client.get("/readyz")).json()["channels"]
            assert channel["error"] is None
        finally:
            await elsewhere.close()
    assert outbox_rows(outbox) == [(email, "queued", 0, None) for email in emails]


def test_notify_deliver_help_says_what_it_does_and_starts_nothing(tmp_path: Path) -> None:
    """``python -m service.deliver --help`` prints what it does and the settings, exits 0, and
    opens no outbox."""
    done = subprocess.run(
        [sys.executable, "-m", "service.deliver", "--help"],
        cwd=tmp_path,
        env=service_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for text in ("NOTIFY_DELIVERY=external", "SIGTERM", "NOTIFY_OUTBOX_PATH", "NOTIFY_SMTP_URL"):
        assert text in done.stdout
    assert list(tmp_path.iterdir()) == []


def test_notify_deliver_with_no_channel_says_so_in_one_line(tmp_path: Path) -> None:
    """With no channel configured (email, webhooks, Apprise) it exits 1 with one line, opening
    nothing."""
    done = subprocess.run(
        [sys.executable, "-m", "service.deliver"],
        cwd=tmp_path,
        env=service_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: cannot start: nothing to deliver: set NOTIFY_SMTP_URL, NOTIFY_WEBHOOK_URL or "
        "NOTIFY_APPRISE_URLS"
    ]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
async def test_a_delivery_process_is_woken_by_another_processs_commit(tmp_path: Path) -> None:
    """The dispatchers' own poll set to a minute: a notification the external API adds is
    delivered at once all the same, the outbox's data_version having changed."""
    with smtp_server() as mail:
        settings = make_settings(
            tmp_path,
            smtp_url=mail.url(),
            smtp_from=SENDER,
            delivery="external",
            file_check_interval=60.0,
        )
        async with running(settings) as client, DeliveryProcess(settings, Metrics()):
            response = await client.post("/send-notification/woken@example.com")
            started = time.monotonic()
            await eventually(lambda: len(mail.recorder.messages) == 1, message="delivered")
            assert time.monotonic() - started < 30  # far below the poll's minute
            notification_id = response.headers["x-notification-id"]

            async def delivered() -> bool:
                body = (await client.get(f"/notifications/{notification_id}")).json()
                return bool(body["channels"]["email"]["status"] == "delivered")

            await eventually(delivered, message="recorded as delivered")
    assert mail.recorder.messages[0].rcpt_tos == ("woken@example.com",)


# -- notify-service with its delivery process, as real processes --------------------------------


def delivery_settings(url: str, **more: str) -> dict[str, str]:
    return {
        "NOTIFY_SMTP_URL": url,
        "NOTIFY_SMTP_FROM": SENDER,
        "NOTIFY_SMTP_CONNECTIONS": str(CONNECTIONS),
        "NOTIFY_RETRY_INITIAL": "0.02",
        "NOTIFY_DELIVERY_RETRY_MAX": "0.2",
        **more,
    }


async def until(
    recorder: Recorder, condition: Callable[[Recorder], bool], within: float = 20.0
) -> None:
    """Wait (in a thread: the SMTP server records from its own) until the server saw it."""
    assert await asyncio.to_thread(recorder.wait_for, condition, within), "not seen in time"


def gone(pid: int) -> bool:
    """Whether no process ``pid`` exists (reaped: not even a zombie)."""
    return not Path(f"/proc/{pid}").exists()


@pytest.mark.slow
async def test_notify_service_delivers_from_its_delivery_process(tmp_path: Path) -> None:
    """notify-service: the delivery process sends every notification posted, and the API
    process has no dispatcher (its log says who delivers; its /readyz shows the channel as the
    delivery process records it: working)."""
    emails = [f"a{number:02d}@example.com" for number in range(40)]
    with smtp_server() as mail:
        async with notify_service(tmp_path, delivery_settings(mail.url())) as server:
            async with asyncio.timeout(30):
                results = await post_notifications(
                    server.url, emails, concurrency=8, acknowledgement=ACKNOWLEDGEMENT
                )
            assert sorted(results.acknowledged) == emails
            await until(mail.recorder, lambda r: len(r.messages) >= len(emails))
            async with http_client(server.url) as client:
                readiness = (await client.get("/readyz")).json()
    assert [(c["name"], c["error"]) for c in readiness["channels"]] == [("email", None)]
    output = server.output()
    assert "no dispatcher here: another process delivers them" in output
    assert "service.deliver: delivering the outbox" in output
    assert "INFO:     service: delivering notifications to" not in output  # the API's own
    assert sorted(m.rcpt_tos[0] for m in mail.recorder.messages) == emails


@pytest.mark.slow
async def test_the_delivery_process_runs_at_a_lower_cpu_priority(tmp_path: Path) -> None:
    """notify-service runs its delivery process, and one started again after it died, 10
    nice levels below itself, so that on few cores a burst of requests gets the CPU first;
    the API's process keeps the priority it was started with."""
    own = os.getpriority(os.PRIO_PROCESS, 0)

    def lowered(pid: int) -> bool:
        return os.getpriority(os.PRIO_PROCESS, pid) == min(own + 10, 19)

    with smtp_server() as mail:
        async with notify_service(tmp_path, delivery_settings(mail.url())) as server:
            await eventually(lambda: len(delivery_pids(server)) == 1, message="started")
            (first,) = delivery_pids(server)
            await eventually(lambda: lowered(first), message="the delivery process niced")
            assert os.getpriority(os.PRIO_PROCESS, server.pid) == own
            os.kill(first, signal.SIGKILL)
            await eventually(lambda: len(delivery_pids(server)) == 2, message="restarted")
            second = delivery_pids(server)[1]
            await eventually(lambda: lowered(second), message="the restarted one niced")


@pytest.mark.slow
async def test_a_killed_delivery_process_is_restarted_and_loses_nothing(tmp_path: Path) -> None:
    """SIGKILL of the delivery process with sends in flight (the SMTP server holds them):
    notify-service starts another within seconds, which delivers every notification; a repeat
    only for what was in flight (at most one message per connection)."""
    emails = [f"k{number:03d}@example.com" for number in range(200)]
    with smtp_server() as mail:
        mail.recorder.hold_data = True
        async with notify_service(tmp_path, delivery_settings(mail.url())) as server:
            async with asyncio.timeout(30):
                results = await post_notifications(
                    server.url, emails, concurrency=16, acknowledgement=ACKNOWLEDGEMENT
                )
            assert sorted(results.acknowledged) == emails
            await until(mail.recorder, lambda r: r.held == CONNECTIONS)
            (first,) = delivery_pids(server)
            os.kill(first, signal.SIGKILL)
            killed_at = time.monotonic()
            await eventually(lambda: gone(first), message="the killed process reaped")
            mail.recorder.release()
            await eventually(lambda: len(delivery_pids(server)) == 2, message="restarted")
            assert time.monotonic() - killed_at < 5  # 0.5 s, and the interpreter's start
            assert f"delivery process [{first}] exited (killed by SIGKILL)" in server.output()
            await until(mail.recorder, lambda r: len({m.rcpt_tos for m in r.messages}) >= 200)
    delivered = Counter(received.rcpt_tos[0] for received in mail.recorder.messages)
    assert set(delivered) == set(emails)
    assert sum(count - 1 for count in delivered.values()) <= CONNECTIONS, delivered


@pytest.mark.slow
async def test_a_delivery_process_that_cannot_be_started_is_started_once_it_can(
    tmp_path: Path,
) -> None:
    """The delivery process dies and the interpreter is gone (an upgrade replacing it): the
    restart fails, is logged, and is tried again (later each time) until it works; then the
    new delivery process delivers what waited."""
    interpreter = tmp_path / "venv"  # the test's environment under a name that can vanish
    interpreter.symlink_to(Path(sys.prefix), target_is_directory=True)
    python = str(interpreter / "bin" / Path(sys.executable).name)
    emails = ["before@example.com", "after@example.com"]
    with smtp_server() as mail:
        async with (
            notify_service(tmp_path, delivery_settings(mail.url()), python=python) as server,
            http_client(server.url) as client,
        ):
            response = await client.post(f"/send-notification/{emails[0]}")
            assert response.status_code == 200
            await eventually(
                lambda: (
                    [row[1] for row in outbox_rows(tmp_path / "log.txt.outbox")] == ["delivered"]
                ),
                message="the first delivered, and so recorded",
            )
            interpreter.unlink()
            (first,) = delivery_pids(server)
            os.kill(first, signal.SIGKILL)
            await server.wait_for_output("cannot start the delivery process")
            response = await client.post(f"/send-notification/{emails[1]}")
            assert response.status_code == 200  # the API goes on, the outbox holds it
            await server.wait_for_output("starting the delivery process again in")
            interpreter.symlink_to(Path(sys.prefix), target_is_directory=True)
            await eventually(lambda: len(delivery_pids(server)) == 2, message="restarted")
            await until(mail.recorder, lambda r: len(r.messages) == 2)
    assert [m.rcpt_tos[0] for m in mail.recorder.messages] == emails
    assert "No such file or directory" in server.output()


@pytest.mark.slow
async def test_sigterm_stops_api_and_delivery_and_the_rest_waits_in_the_outbox(
    tmp_path: Path,
) -> None:
    """SIGTERM to notify-service with sends in flight and more pending: it and its delivery
    process have both exited within the grace period; the next start delivers every
    notification accepted, a repeat only for what was in flight."""
    emails = [f"t{number:03d}@example.com" for number in range(100)]
    settings = delivery_settings("", NOTIFY_SHUTDOWN_TIMEOUT="2", NOTIFY_GRACEFUL_TIMEOUT="1")
    with smtp_server() as mail:
        settings["NOTIFY_SMTP_URL"] = mail.url()
        mail.recorder.hold_data = True
        async with notify_service(tmp_path, settings) as server:
            async with asyncio.timeout(30):
                results = await post_notifications(
                    server.url, emails, concurrency=16, acknowledgement=ACKNOWLEDGEMENT
                )
            assert sorted(results.acknowledged) == emails
            await until(mail.recorder, lambda r: r.held == CONNECTIONS)
            (deliverer,) = delivery_pids(server)
            server.send_signal(signal.SIGTERM)
            stopping_at = time.monotonic()
            async with asyncio.timeout(20):
                returncode = await server.wait_exit()
            # The API's 1 s, its writers' drain, then the delivery process's 2 s for the sends
            # in flight (held: they do not end) and its closing.
            assert time.monotonic() - stopping_at < 10
        assert returncode == 0, server.output()
        assert gone(deliverer)
        assert f"delivery process [{deliverer}] stopped" in server.output()
        pending = [row for row in outbox_rows(tmp_path / "log.txt.outbox") if row[1] == "queued"]
        assert len(pending) >= len(emails) - CONNECTIONS
        mail.recorder.release()
        async with notify_service(tmp_path, settings, output_name="second-output.txt"):
            await until(mail.recorder, lambda r: len({m.rcpt_tos for m in r.messages}) >= 100)
    delivered = Counter(received.rcpt_tos[0] for received in mail.recorder.messages)
    assert set(delivered) == set(emails)
    assert sum(count - 1 for count in delivered.values()) <= CONNECTIONS, delivered


def exited(pid: int) -> bool:
    """Whether ``pid`` has exited: gone, or a zombie no one has reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


@pytest.mark.slow
async def test_a_delivery_process_whose_notify_service_is_killed_stops(tmp_path: Path) -> None:
    """SIGKILL of notify-service alone: its delivery process, in a process group of its own,
    sees its parent gone and stops by itself (drained: its last line says so)."""
    # A killed notify-service cannot remove the private metrics directory it would make:
    # this one is the test's.
    metrics = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    with smtp_server() as mail:
        async with notify_service(tmp_path, delivery_settings(mail.url(), **metrics)) as server:
            (deliverer,) = delivery_pids(server)
            server.send_signal(signal.SIGKILL)
            assert await server.wait_exit() == -signal.SIGKILL
            await eventually(lambda: exited(deliverer), message="the orphan stopped")
    assert f"delivery process [{deliverer}] stopped" in server.output()


def test_the_delivery_process_runs_on_uvloop_as_uvicorn_does() -> None:
    """uvloop comes with uvicorn[standard] (in the lock file): the delivery process (and the
    Redis worker: ``run_main``) uses it."""
    import uvloop

    from service.tasks import event_loop_factory

    factory = event_loop_factory()
    assert factory is not None
    loop = factory()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


@pytest.mark.slow
async def test_a_url_disabled_by_a_410_is_shown_and_enabled_from_the_api(tmp_path: Path) -> None:
    """notify-service with a webhook URL that answers 410: its delivery process disables it
    in the outbox, so the API's /readyz shows it and what comes next is dead without a
    request; the API's POST /webhooks/enable reaches the delivery process, woken by the
    outbox's change (its own look is once a minute here), which delivers the next one."""
    with webhook_receiver(SECRET) as hooks:
        settings = {
            "NOTIFY_WEBHOOK_URL": hooks.url(),
            "NOTIFY_WEBHOOK_SECRET": SECRET,
            "NOTIFY_RETRY_INITIAL": "0.02",
            "NOTIFY_FILE_CHECK_INTERVAL": "60",
        }
        async with (
            notify_service(tmp_path, settings) as server,
            http_client(server.url) as client,
        ):
            await disabled_and_enabled_from_the_api(client, hooks, server.output)


def metric(text: str, sample: str) -> float | None:
    """The value of ``sample`` (a name with its labels, as exposed) in ``/metrics``'s text."""
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    return None


@pytest.mark.slow
async def test_notify_service_shows_its_delivery_processs_metrics_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without PROMETHEUS_MULTIPROC_DIR, notify-service gives the API and its delivery process
    a private one, in the temporary directory: the API's /metrics shows the delivery
    process's deliveries and window beside the API's own counts; a SIGKILLed delivery
    process's window is dropped when it is replaced (its counts stay); the directory is gone
    once notify-service has exited."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    emails = [f"m{number}@example.com" for number in range(10)]
    window = 'notify_channel_concurrency{channel="email"}'
    delivered = 'notify_deliveries_total{channel="email",outcome="delivered"}'
    with smtp_server() as mail:
        settings = delivery_settings(mail.url(), TMPDIR=str(temporary))
        async with notify_service(tmp_path, settings) as server, http_client(server.url) as client:
            async with asyncio.timeout(30):
                await post_notifications(
                    server.url, emails, concurrency=4, acknowledgement=ACKNOWLEDGEMENT
                )
            await until(mail.recorder, lambda r: len(r.messages) >= len(emails))

            async def scraped() -> str:
                text = (await client.get("/metrics")).text
                assert metric(text, delivered) == len(emails), "not all recorded yet"
                return text

            text = await eventually(scraped, message="the deliveries in the API's /metrics")
            [private] = temporary.iterdir()
            assert private.name.startswith("notify-service-metrics-")
            assert metric(text, window) == CONNECTIONS
            assert metric(text, "notify_notifications_accepted_total") == len(emails)
            (first,) = delivery_pids(server)
            os.kill(first, signal.SIGKILL)
            await eventually(lambda: len(delivery_pids(server)) == 2, message="restarted")
            text = (await client.get("/metrics")).text
            assert metric(text, window) == CONNECTIONS  # the new process's alone
            assert metric(text, delivered) == len(emails)
        assert server.returncode == 0
    assert list(temporary.iterdir()) == []


@pytest.mark.slow
async def test_notify_service_empties_and_keeps_the_operators_multiprocess_dir(
    tmp_path: Path,
) -> None:
    """PROMETHEUS_MULTIPROC_DIR set: notify-service empties it first (a file an earlier run
    left is gone), the API and the delivery process share it, and it stays after the exit."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_999999.db").write_bytes(b"left by an earlier run")
    delivered = 'notify_deliveries_total{channel="email",outcome="delivered"}'
    with smtp_server() as mail:
        settings = delivery_settings(mail.url(), PROMETHEUS_MULTIPROC_DIR=str(directory))
        async with notify_service(tmp_path, settings) as server, http_client(server.url) as client:
            assert not (directory / "counter_999999.db").exists()
            response = await client.post("/send-notification/kept@example.com")
            assert response.status_code == 200

            async def scraped() -> bool:
                text = (await client.get("/metrics")).text
                return metric(text, delivered) == 1

            await eventually(scraped, message="the delivery in the API's /metrics")
    assert server.returncode == 0
    assert {path.name.partition("_")[0] for path in directory.iterdir()} >= {"counter"}


@pytest.mark.slow
async def test_with_reload_a_code_change_restarts_the_delivery_process(tmp_path: Path) -> None:
    """``notify-service --reload`` (``make run``): a Python file changing in its working
    directory restarts the delivery process as well as the API; the new one delivers."""
    with smtp_server() as mail:
        async with notify_service(
            tmp_path, delivery_settings(mail.url()), options=["--reload"]
        ) as server:
            (first,) = delivery_pids(server)
            changes = 0

            def changed_and_restarted() -> bool:
                nonlocal changes
                if set(delivery_pids(server)) - {first}:  # a new one (the first may be gone)
                    return True
                changes += 1  # until the watcher has started, a change may go unseen
                (tmp_path / "edited.py").write_text(f"VERSION = {changes}\n")
                return False

            await eventually(changed_and_restarted, interval=0.5, message="restarted")
            assert "edited.py changed: restarting the delivery process" in server.output()
            await eventually(lambda: gone(first), message="the first one reaped")
            assert f"delivery process [{first}] stopped" in server.output()
            async with http_client(server.url) as client:

                async def posted() -> bool:  # the API reloads too: it may not answer at once
                    with contextlib.suppress(httpx.TransportError):
                        response = await client.post("/send-notification/new@example.com")
                        return response.status_code == 200
                    return False

                await eventually(posted, message="the reloaded API answers")
            await until(
                mail.recorder, lambda r: ("new@example.com",) in {m.rcpt_tos for m in r.messages}
            )
        assert server.returncode == 0
