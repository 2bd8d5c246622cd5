"""The webhook channel's pieces: signatures (checked against ``standardwebhooks``), the answers'
meaning, Retry-After, how URLs are named and shown, and the settings."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest
import trustme
from standardwebhooks.webhooks import Webhook

from config import Settings
from config.settings import SettingsError, load_settings
from service.channels.base import ChannelDown, Dead, Delivery, Gone, Retry
from service.channels.webhook import (
    WebhookChannel,
    _judge,
    channel_name,
    payload,
    retry_after,
    shown_url,
    signature,
)
from service.channels.webhook import (
    from_settings as webhook_channels,
)
from service.outbox.base import notification_line
from service.outbox.sqlite import SqliteOutbox
from service.outbox.writer import OutboxWriter
from service.sinks.core import Batch
from tests.support.webhooks import webhook_receiver

KEY_A = b"0123456789abcdef0123456789abcdef"
KEY_B = b"fedcba9876543210fedcba9876543210"
SECRET_A = "whsec_" + base64.b64encode(KEY_A).decode()
SECRET_B = "whsec_" + base64.b64encode(KEY_B).decode()


def test_the_signature_is_the_reference_librarys() -> None:
    body = payload("id-1", "ada@example.com", "héllo\n", None, 1_700_000_000.25, "S").encode()
    timestamp = 1_700_000_123
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    ours = signature([KEY_A, KEY_B], "id-1", timestamp, body)
    theirs = [Webhook(s).sign("id-1", moment, body.decode()) for s in (SECRET_A, SECRET_B)]
    assert ours == " ".join(theirs)


def test_the_payload_is_the_documented_json() -> None:
    assert payload("n1", "a@example.com", "m", "q1", 0.5, "Sübject") == (
        '{"type":"notification","id":"n1","time":"1970-01-01T00:00:00.500Z",'
        '"email":"a@example.com","message":"m","q":"q1","subject":"Sübject"}'
    )


def _answer(status: int, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers)


@pytest.mark.parametrize(
    ("status", "raised"),
    [
        (408, Retry),
        (500, Retry),
        (501, Retry),
        (429, ChannelDown),
        (502, ChannelDown),
        (503, ChannelDown),
        (504, ChannelDown),
        (410, Gone),
        (301, Dead),
        (307, Dead),
        (400, Dead),
        (404, Dead),
    ],
)
def test_what_each_answer_means(status: int, raised: type[Exception]) -> None:
    with pytest.raises(raised) as caught:
        _judge(_answer(status))
    assert type(caught.value) is raised
    assert str(status) in str(caught.value)


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_delivered(status: int) -> None:
    _judge(_answer(status))


def test_retry_after_is_carried_by_the_error() -> None:
    with pytest.raises(ChannelDown) as paused:
        _judge(_answer(429, **{"Retry-After": "7"}))
    assert paused.value.after == 7.0
    with pytest.raises(Retry) as backed_off:
        _judge(_answer(500, **{"Retry-After": "3"}))
    assert backed_off.value.after == 3.0


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = 1_700_000_000.0
    later = format_datetime(datetime.fromtimestamp(now + 90, tz=UTC), usegmt=True)
    assert retry_after("120", now) == 120.0
    assert retry_after(later, now) == 90.0
    assert retry_after(format_datetime(datetime.fromtimestamp(now - 5, tz=UTC)), now) == 0.0
    assert retry_after(None) is None
    assert retry_after("soon") is None
    assert retry_after("-3") is None
    assert retry_after("\u00b2") is None  # a digit to str.isdigit, not to HTTP
    assert retry_after("9" * 400) is None  # no infinite wait
    assert retry_after("01 Jan 99999999999999999999 00:00:00 GMT") is None  # no OverflowError
    assert retry_after("1 Jan 2020 00:00:00 +99999999999999999999") is None


def test_channel_names_are_stable_and_urls_shown_without_secrets() -> None:
    url = "https://user:pa55@hooks.example.com:8443/in/abc?token=t0k"
    assert channel_name(url) == channel_name(url)
    assert channel_name(url) != channel_name(url + "x")
    assert channel_name(url).startswith("webhook-")
    assert len(channel_name(url)) == len("webhook-") + 8
    assert shown_url(url) == "https://hooks.example.com:8443/in/abc?…"
    assert shown_url("http://[::1]/h") == "http://[::1]/h"


def _settings(**values: str) -> Settings:
    return Settings(_env_file=None, log_path=Path("log.txt"), **values)  # type: ignore[arg-type]


def test_settings_read_urls_and_secrets() -> None:
    settings = _settings(
        webhook_url=" http://a.example/h , https://b.example/h ",
        webhook_secret=f"{SECRET_A}, {SECRET_B}",
    )
    assert settings.webhook_urls == ("http://a.example/h", "https://b.example/h")
    assert settings.webhook_keys == (KEY_A, KEY_B)
    assert settings.webhook_timeout == 15.0
    assert _settings().webhook_urls == ()


async def test_a_webhook_url_may_be_named_and_its_channel_takes_the_name() -> None:
    """``name=url`` names a URL's channel; an unnamed one keeps ``webhook-<8 hex>``; a URL's
    own ``=`` (its query) is not a name."""
    settings = _settings(
        webhook_url="billing=https://b.example/h?token=x=y, https://c.example/h?a=b",
        webhook_secret=SECRET_A,
    )
    assert settings.webhook_targets == (
        ("billing", "https://b.example/h?token=x=y"),
        (None, "https://c.example/h?a=b"),
    )
    assert settings.webhook_urls == ("https://b.example/h?token=x=y", "https://c.example/h?a=b")
    channels = webhook_channels(settings)
    try:
        names = [channel.name for channel in channels]
        assert names == ["billing", channel_name("https://c.example/h?a=b")]
    finally:
        for channel in channels:
            await channel.aclose()


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"NOTIFY_WEBHOOK_URL": "ftp://x.example/h"}, "must start with http:// or https://"),
        ({"NOTIFY_WEBHOOK_URL": "Billing=https://x.example/h"}, "URL 1 of 1 has a name that is"),
        ({"NOTIFY_WEBHOOK_URL": "email=https://x.example/h"}, "a name kept for another channel"),
        (
            {"NOTIFY_WEBHOOK_URL": "a=https://x.example/h,a=https://y.example/h"},
            "gives two URLs the same name",
        ),
        ({"NOTIFY_WEBHOOK_URL": "http:///h"}, "names no host"),
        ({"NOTIFY_WEBHOOK_URL": "http://xn--zz.invalid/h"}, "URL 1 of 1 cannot be sent to"),
        ({"NOTIFY_WEBHOOK_URL": "http://ex\xadample.example/h"}, "cannot be sent to"),
        ({"NOTIFY_WEBHOOK_URL": "http://a.example/h?x=\x7f"}, "cannot be sent to"),
        ({"NOTIFY_WEBHOOK_URL": "http://a.example/h,http://a.example/h"}, "the same URL twice"),
        ({"NOTIFY_WEBHOOK_URL": "http://a.example/h"}, "NOTIFY_WEBHOOK_SECRET must be set"),
        (
            {"NOTIFY_WEBHOOK_URL": "http://a.example/h", "NOTIFY_WEBHOOK_SECRET": "hunter2-secret"},
            "secret 1 of 1 is not whsec_ followed by base64",
        ),
        (
            {"NOTIFY_WEBHOOK_URL": "http://a.example/h", "NOTIFY_WEBHOOK_SECRET": "whsec_!!!"},
            "is not whsec_ followed by base64",
        ),
    ],
)
def test_bad_webhook_settings_are_one_line_hiding_the_values(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], expected: str
) -> None:
    monkeypatch.chdir(Path(__file__).parent)  # no .env here
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message
    assert expected in message
    for value in variables.values():
        assert value not in message


async def test_the_intake_makes_one_row_per_channel_and_reads_old_spools(tmp_path: Path) -> None:
    """One record per notification becomes a row per channel in one transaction; records
    spooled by earlier versions (``[email, message]``, ``[email, message, q]``) still go in,
    with the record's id and time."""
    outbox = SqliteOutbox(tmp_path / "outbox.db", lease_seconds=60)
    await outbox.open()
    try:
        names = ["webhook-aaaaaaaa", "webhook-bbbbbbbb"]
        writer = OutboxWriter(outbox, ["email", *names], added=lambda beyond: None)
        lines = [
            notification_line("n1", "a@example.com", "hi", "q1", 1.0),
            '["b@example.com","old"]\n',
            '["c@example.com", "older", "q3"]\n',
        ]
        ids, times = ["n1", "n2", "n3"], [9.0, 2.0, 3.0]
        await writer.send(Batch(ids, ["notification"] * 3, lines, times, [None] * 3))
        states = [s for i in ids for s in await outbox.states(i)]
        assert sorted((s.id, s.channel) for s in states) == [
            (i, c) for i in ids for c in ["email", *names]
        ]
        claimed = await outbox.settle("webhook-aaaaaaaa", [], 10)
        assert [(d.id, d.recipient, d.message, d.q, d.accepted_at) for d in claimed] == [
            ("n1", "a@example.com", "hi", "q1", 1.0),  # the line's own time
            ("n2", "b@example.com", "old", None, 2.0),
            ("n3", "c@example.com", "older", "q3", 3.0),
        ]
        bodies = {
            d.id: json.loads(payload(d.id, d.recipient, d.message, d.q, d.accepted_at, "S"))
            for d in claimed
        }
        assert bodies["n1"]["q"] == "q1"
        assert bodies["n2"] == {
            "type": "notification",
            "id": "n2",
            "time": "1970-01-01T00:00:02.000Z",
            "email": "b@example.com",
            "message": "old",
            "q": None,
            "subject": "S",
        }
        [email, *_] = await outbox.settle("email", [], 3)
        assert (email.recipient, email.message) == ("a@example.com", "hi")
    finally:
        await outbox.close()


@asynccontextmanager
async def _scripted_receiver(
    answer: bytes, tls: ssl.SSLContext | None = None
) -> AsyncIterator[str]:
    """A receiver on loopback (over TLS with ``tls``) that reads a request's head, writes
    ``answer`` and then says nothing more (the connection stays open): its URL."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        await reader.read()  # until the client closes
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}/hook"
    finally:
        server.close()


def _delivery(notification_id: str = "n1") -> Delivery:
    return Delivery(notification_id, "webhook", "a@example.com", "hi", None, 1.0, 1.0, 0)


@pytest.mark.parametrize(
    ("status", "outcome"), [(b"200 OK", None), (b"410 Gone", Gone), (b"400 Bad Request", Dead)]
)
async def test_a_status_that_came_is_the_answer_even_if_its_body_stalls(
    status: bytes, outcome: type[Exception] | None
) -> None:
    """The receiver sends its status and headers, then not the body it announced: the status
    is the answer (a 200 delivered, not sent again; a 410 disables the URL), not "no
    answer"."""
    answer = b"HTTP/1.1 " + status + b"\r\ncontent-length: 100\r\n\r\npartial"
    async with _scripted_receiver(answer) as url:
        channel = WebhookChannel(url, [KEY_A], connections=1, timeout=0.5)
        try:
            if outcome is None:
                await channel.send(_delivery())
            else:
                with pytest.raises(outcome):
                    await channel.send(_delivery())
        finally:
            await channel.aclose()


async def test_a_receivers_garbage_is_cut_short_in_the_error() -> None:
    """A status line of 90 KB of garbage: the channel's error (the outbox's history, logs,
    ``/readyz``) is one line of at most 200 characters."""
    async with _scripted_receiver(b"HTTP/1.1 " + b"x" * 90_000 + b"\r\n\r\n") as url:
        channel = WebhookChannel(url, [KEY_A], connections=1, timeout=5)
        try:
            with pytest.raises(ChannelDown) as down:
                await channel.send(_delivery())
        finally:
            await channel.aclose()
    assert len(down.value.reason) <= 200
    assert "\n" not in down.value.reason


async def test_every_connection_of_an_uneven_count_carries_a_request() -> None:
    """Nine connections (two clients): nine requests at once are all at the receiver
    together; none waits in a client's pool while the other has a connection free."""
    with webhook_receiver() as hooks:
        hooks.receiver.hold_all = True
        channel = WebhookChannel(hooks.url(), [KEY_A], connections=9, timeout=30)
        try:
            sends = [asyncio.create_task(channel.send(_delivery(f"n{n}"))) for n in range(9)]
            held = await asyncio.to_thread(hooks.receiver.wait_for, lambda r: r.held == 9)
            hooks.receiver.release()
            await asyncio.gather(*sends)
        finally:
            await channel.aclose()
    assert held


async def test_a_receiver_behind_a_private_ca_is_trusted_through_ssl_cert_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An https receiver whose certificate a private CA issued: trusted once OpenSSL's
    ``SSL_CERT_FILE`` names that CA (as for email), and not without it."""
    ca = trustme.CA()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(tls)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    answer = b"HTTP/1.1 204 No Content\r\n\r\n"
    async with _scripted_receiver(answer, tls) as url:
        untrusted = WebhookChannel(url, [KEY_A], connections=1, timeout=5)
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
        trusted = WebhookChannel(url, [KEY_A], connections=1, timeout=5)
        try:
            with pytest.raises(ChannelDown, match="CERTIFICATE_VERIFY_FAILED"):
                await untrusted.send(_delivery())
            await trusted.send(_delivery())
        finally:
            await untrusted.aclose()
            await trusted.aclose()


async def test_a_payload_that_is_not_valid_unicode_is_dead_not_a_channel_bug() -> None:
    """A message holding a lone surrogate (no request can give one; a store edited by hand
    could): that delivery is dead at once, nothing sent, instead of pausing the URL's channel
    as a bug for every attempt until its max age."""
    channel = WebhookChannel("http://127.0.0.1:9/hook", [KEY_A], connections=1, timeout=1)
    broken = Delivery("n1", "webhook", "a@example.com", "hi \ud800", None, 1.0, 1.0, 0)
    try:
        with pytest.raises(Dead, match="not valid Unicode"):
            await channel.send(broken)
    finally:
        await channel.aclose()
