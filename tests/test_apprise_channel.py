"""The Apprise channel's pieces, with the real Apprise library: its settings, what Apprise
accepts at startup and how each URL is shown, the outcomes of sends to a real local receiver
(Apprise's generic ``json://`` scheme), and the channel's own threads."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from asgi_lifespan import LifespanManager

from config import Settings
from config.settings import SettingsError, load_settings
from service.channels.apprise import FAILURES_TO_PAUSE, AppriseChannel, from_settings
from service.channels.base import Channel, ChannelDown, Dead, Delivery, Retry
from service.channels.registry import build_channels
from service.main import create_app
from service.runtime import StartupError
from tests.conftest import make_settings
from tests.support.apprise import FAKE_SECRETS, FAKE_URLS, SHOWN
from tests.support.server import service_env
from tests.support.webhooks import Answer, ReceiverServer, until, webhook_receiver


def _settings(**values: Any) -> Settings:
    return Settings(_env_file=None, log_path=Path("log.txt"), **values)


def _delivery(message: str = "hello", subject: str | None = None) -> Delivery:
    now = time.time()
    return Delivery("n-1", "ops", "ada@example.com", message, None, now, now, 0, subject)


@asynccontextmanager
async def channel_to(
    hooks: ReceiverServer, path: str = "/hook", **settings: Any
) -> AsyncIterator[Channel]:
    """The Apprise channel ``ops`` of ``json://`` to ``hooks`` at ``path``, closed after."""
    url = hooks.url(path).replace("http://", "json://", 1)
    [channel] = from_settings(_settings(apprise_urls=f"ops={url}", **settings))
    try:
        yield channel
    finally:
        await channel.aclose()


# -- settings ----------------------------------------------------------------------------------


def test_settings_read_named_urls_and_leave_a_urls_own_commas_in_it() -> None:
    """Entries are split at a comma followed by ``name=``; a comma inside a URL (Apprise's
    lists: ``?to=a,b``) stays in it."""
    settings = _settings(
        apprise_urls=" ops = json://h.example/x , alerts=ntfy://h.example/t,"
        "mail=mailto://u:p@h.example?to=a@example.com,b@example.com&cc=c@example.com,"
    )
    assert settings.apprise_targets == (
        ("ops", "json://h.example/x"),
        ("alerts", "ntfy://h.example/t"),
        ("mail", "mailto://u:p@h.example?to=a@example.com,b@example.com&cc=c@example.com"),
    )
    assert _settings().apprise_targets == ()
    assert (_settings().apprise_connections, _settings().apprise_connections_min) == (32, 1)
    assert _settings().apprise_timeout == 30.0


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"NOTIFY_APPRISE_URLS": "json://h.example/s3cret-path"}, "entry 1 of 1 has no name"),
        (  # an unnamed second URL is not glued to the first (its receiver would get it)
            {"NOTIFY_APPRISE_URLS": "ops=json://h.example/a, json://u:s3cret@x.example/b"},
            "entry 2 of 2 has no name",
        ),
        (
            {"NOTIFY_APPRISE_URLS": "ops=json://h.example/s3cret-path, Ops2=json://x.example/"},
            "entry 2 of 2 has a name that is not",
        ),
        (
            {"NOTIFY_APPRISE_URLS": "email=json://h.example/s3cret-path"},
            "entry 1 of 1 has a name kept for another channel",
        ),
        (
            {"NOTIFY_APPRISE_URLS": "webhook-a=json://h.example/s3cret-path"},
            "a name kept for another channel",
        ),
        (
            {"NOTIFY_APPRISE_URLS": "ops=s3cret-path-without-scheme"},
            "entry 1 of 1 is not an Apprise URL (scheme://...)",
        ),
        (
            {"NOTIFY_APPRISE_URLS": "a=json://h.example/s3cret-path,a=json://y.example/s3cret"},
            "entry 2 of 2 (a) has the name of entry 1",
        ),
        (
            {
                "NOTIFY_APPRISE_URLS": "a=json://h.example/s3cret-path,b=json://h.example/s3cret-path"
            },
            "entry 2 of 2 (b) is the URL of entry 1",
        ),
        ({"NOTIFY_APPRISE_URLS": " , "}, "names no URL"),
        (
            {
                "NOTIFY_APPRISE_URLS": "billing=json://h.example/s3cret-path",
                "NOTIFY_WEBHOOK_URL": "billing=https://h.example/hook",
                "NOTIFY_WEBHOOK_SECRET": "whsec_aGVsbG8gd29ybGQ=",
            },
            "NOTIFY_APPRISE_URLS entry 1 (billing) has the name of a NOTIFY_WEBHOOK_URL",
        ),
    ],
)
def test_bad_apprise_settings_are_one_line_hiding_the_urls(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], expected: str
) -> None:
    """Each problem is one line naming the entry by position (and name), never its URL."""
    monkeypatch.chdir(Path(__file__).parent)  # no .env here
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message
    assert expected in message
    assert "s3cret" not in message


# -- what Apprise accepts, and how it is shown --------------------------------------------------


def test_the_five_schemes_are_accepted_and_shown_without_their_secrets(
    root_log: list[str],
) -> None:
    """slack://, discord://, tgram://, mailto:// and pover:// URLs are channels named as
    given, each shown as its scheme and service, with none of its secrets, in no log line."""
    urls = ", ".join(f"{scheme}-ops={url}" for scheme, url in FAKE_URLS.items())
    channels = build_channels(_settings(apprise_urls=urls))
    shown = {channel.name: channel.target for channel in channels}
    assert shown == {f"{scheme}-ops": target for scheme, target in SHOWN.items()}
    for channel in channels:
        for secret in FAKE_SECRETS:
            assert secret not in repr(channel)
    for secret in FAKE_SECRETS:
        assert all(secret not in line for line in root_log)


def test_the_generic_schemes_show_their_host_and_port_only() -> None:
    """``json://``, ``form://``: the receiver's host and port, not its user, password, path or
    query; ``ntfy://`` (whose host may be a topic) its scheme alone."""
    channels = build_channels(
        _settings(
            apprise_urls="a=json://us3r:p4ss@hooks.example:8080/p4th/t0ken?x=q7ery, "
            "b=forms://[::1]/p4th, c=ntfy://t0pic-s3cret, d=ntfy://ntfy.example/t0pic"
        )
    )
    assert [channel.target for channel in channels] == [
        "json://hooks.example:8080 (JSON)",
        "forms://[::1] (Form)",
        "ntfy:// (ntfy)",
        "ntfy:// (ntfy)",
    ]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("foo://S3CRET-token@host.example/x", "Apprise does not know the scheme 'foo'"),
        ("tgram://S3CRET-token", "Apprise cannot read this URL"),
        ("slack://S3CRET-token", "Apprise cannot read this URL"),
    ],
)
async def test_an_url_apprise_cannot_use_stops_startup_naming_the_entry(
    tmp_path: Path,
    root_log: list[str],
    caplog: pytest.LogCaptureFixture,
    url: str,
    expected: str,
) -> None:
    """An unknown scheme, or a URL Apprise cannot read, stops the app's startup with one line
    naming the entry by position and name; its URL is in no error and no log line (Apprise's
    own logger, which does not propagate, may say more)."""
    caplog.set_level(logging.DEBUG)
    settings = make_settings(tmp_path, apprise_urls=f"first=json://127.0.0.1:9/h, ops={url}")
    with pytest.raises(StartupError) as caught:
        async with LifespanManager(create_app(settings)):
            pass
    message = str(caught.value)
    assert message == f"cannot start: NOTIFY_APPRISE_URLS entry 2 of 2 (ops): {expected}"
    assert root_log, "nothing was logged at all"
    assert all("S3CRET" not in line for line in root_log)
    assert all("S3CRET" not in r.getMessage() for r in caplog.records if r.name != "apprise")


def test_building_the_channels_opens_no_connection(tmp_path: Path) -> None:
    """Apprise parses each URL when the channel is built: CPU only, no connection and no name
    lookup (Python's audit events, in a process of its own)."""
    urls = ", ".join(f"{scheme}-ops={url}" for scheme, url in FAKE_URLS.items())
    urls += ", j=json://hooks.example:8080/h, f=form://hooks.example/f, n=ntfy://ntfy.example/t"
    script = """
import json, sys
events = []
NETWORK = ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.sendto",
           "socket.sendmsg", "socket.gethostbyname_ex", "socket.gethostbyaddr")
from config import Settings
from service.channels.registry import build_channels
sys.addaudithook(lambda event, args: events.append(event) if event in NETWORK else None)
channels = build_channels(Settings(_env_file=None))
print(json.dumps({"channels": [c.name for c in channels], "events": events}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=service_env({"NOTIFY_APPRISE_URLS": urls}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["channels"] == [*(f"{scheme}-ops" for scheme in FAKE_URLS), "j", "f", "n"]
    assert found["events"] == []


# -- outcomes -----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_failures_retry_then_pause_the_channel_and_a_delivery_resets() -> None:
    """A receiver answering 500: ``Retry`` until ``FAILURES_TO_PAUSE`` attempts in a row have
    failed, then ``ChannelDown``; a delivery resets the count. The reasons are the channel's
    words, without the URL."""
    with webhook_receiver() as hooks:
        hooks.receiver.answer("/hook/t0ken", Answer(500))
        async with channel_to(hooks, "/hook/t0ken") as channel:
            raised: list[Exception] = []
            for _ in range(FAILURES_TO_PAUSE + 1):
                with pytest.raises((Retry, ChannelDown)) as caught:
                    await channel.send(_delivery())
                raised.append(caught.value)
            hooks.receiver.answer("/hook/t0ken", Answer(200))
            await channel.send(_delivery())
            hooks.receiver.answer("/hook/t0ken", Answer(503))
            with pytest.raises(Retry) as again:
                await channel.send(_delivery())
    kinds = [type(exc) for exc in raised]
    assert kinds == [Retry] * (FAILURES_TO_PAUSE - 1) + [ChannelDown] * 2
    assert str(raised[0]) == "Apprise: the JSON send failed"
    assert str(raised[-1]) == f"Apprise: the JSON send failed ({FAILURES_TO_PAUSE}+ in a row)"
    assert str(again.value) == "Apprise: the JSON send failed"
    assert [request.answered for request in hooks.receiver.received] == [
        *[500] * (FAILURES_TO_PAUSE + 1),
        200,
        503,
    ]


@pytest.mark.slow
async def test_an_empty_message_is_dead_without_a_send() -> None:
    """A blank message, which Apprise always refuses: dead at once, nothing sent, and it does
    not count towards pausing the channel."""
    with webhook_receiver() as hooks:
        async with channel_to(hooks) as channel:
            for _ in range(FAILURES_TO_PAUSE):
                with pytest.raises(Dead) as caught:
                    await channel.send(_delivery(" \n"))
            assert str(caught.value) == "Apprise: an empty message cannot be sent"
            hooks.receiver.answer("/hook", Answer(500))
            with pytest.raises(Retry):
                await channel.send(_delivery())
    assert len(hooks.receiver.received) == 1


@pytest.mark.slow
async def test_the_message_goes_as_plain_text_with_the_subject_as_title() -> None:
    """The body is the message as given (no Markdown, no escapes read), the title the
    notification's subject, else the configured one."""
    message = "**not bold** \\n <b>x</b>\nsecond line"
    with webhook_receiver() as hooks:
        async with channel_to(hooks, email_subject="Configured") as channel:
            await channel.send(_delivery(message))
            await channel.send(_delivery("m", subject="Its own"))
    first, second = (request.json() for request in hooks.receiver.received)
    assert (first["message"], first["title"]) == (message, "Configured")
    assert (second["message"], second["title"]) == ("m", "Its own")


@pytest.mark.slow
async def test_no_outcome_within_the_timeout_pauses_the_channel() -> None:
    """A receiver holding the request past ``NOTIFY_APPRISE_TIMEOUT``: ``ChannelDown`` at the
    timeout, the thread left to end by itself."""
    with webhook_receiver() as hooks:
        hooks.receiver.hold_all = True
        async with channel_to(hooks, apprise_timeout=0.2) as channel:
            started = time.monotonic()
            with pytest.raises(ChannelDown) as caught:
                await channel.send(_delivery())
            assert time.monotonic() - started < 2.0
            assert str(caught.value) == "Apprise: no outcome from JSON within 0.2 s"
            await until(hooks.receiver, lambda r: r.held == 1)
            hooks.receiver.release()


@pytest.mark.slow
async def test_sends_run_on_the_channels_own_threads() -> None:
    """More sends held at once by the receiver than the event loop's default executor (and
    Apprise's own shared pool, of the same size) has threads: each runs on a thread of the
    channel's own pool, and the default executor stays free meanwhile."""
    held = min(32, (os.cpu_count() or 1) + 4) + 1
    with webhook_receiver() as hooks:
        hooks.receiver.hold_all = True
        async with channel_to(
            hooks, apprise_connections=held, apprise_connections_min=held
        ) as channel:
            assert isinstance(channel, AppriseChannel)
            sends = [asyncio.create_task(channel.send(_delivery())) for _ in range(held)]
            await until(hooks.receiver, lambda r: r.held == held)
            assert await asyncio.to_thread(lambda: "the default executor answers")
            ours = [t for t in threading.enumerate() if t.name.startswith("apprise-ops_")]
            assert len(ours) == held
            hooks.receiver.release()
            await asyncio.gather(*sends)
    assert len(hooks.receiver.received) == held
