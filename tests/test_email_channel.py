"""The email channel's SMTP pool (service/channels/email/smtp.py) against a real SMTP server
(aiosmtpd, tests/support/smtp.py): the pool, the classification of outcomes, TLS, AUTH,
SMTPUTF8, and a password that never shows. Also the email settings (config/settings.py)."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pytest
import trustme

from config import Settings, SettingsError, load_settings
from config.settings import SmtpServer
from service.channels.email.message import Mail, build_mail
from service.channels.email.smtp import (
    Delivered,
    PermanentFailure,
    ServerUnavailable,
    SmtpFailure,
    SmtpOptions,
    SmtpPool,
    TemporaryFailure,
    UnknownOutcome,
)
from tests.support.server import HOST, free_port
from tests.support.smtp import Recorder, SmtpTestServer, smtp_server
from tests.test_mail import HEADERS, as_read

SENDER = "notify@example.com"
USER = "mailer"
PASSWORD = "s3cr3t p@ss:w/rd%"  # needs percent-encoding in a URL
WHEN = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)


def mail(email: str = "ada@example.com", message: str = "hi", number: int = 1) -> Mail:
    return build_mail(
        f"00000000-0000-4000-8000-{number:012d}",
        email,
        message,
        sender=SENDER,
        subject="Notification",
        date=WHEN,
    )


@asynccontextmanager
async def channel(url: str, **options: Any) -> AsyncIterator[SmtpPool]:
    """A channel to ``url`` (EHLO as client.test, 5 s timeout unless overridden), closed after."""
    values: dict[str, Any] = {"timeout": 5.0, "local_hostname": "client.test"}
    values.update(options)
    async with SmtpPool(SmtpServer.from_url(url), SmtpOptions(**values)) as opened:
        yield opened


async def wait_for(server: SmtpTestServer, condition: Callable[[Recorder], bool]) -> None:
    """Wait, without blocking this loop, until the server's recorder satisfies ``condition``."""
    assert await asyncio.to_thread(server.recorder.wait_for, condition)


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST, "localhost").configure_cert(context)
    return context


@pytest.fixture(scope="session")
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture(params=[False, True], ids=["one command at a time", "pipelining"])
def smtp(request: pytest.FixtureRequest) -> Iterator[SmtpTestServer]:
    """The server, with and without PIPELINING: every test of it holds both ways."""
    with smtp_server(pipelining=request.param) as server:
        yield server


# -- the pool -------------------------------------------------------------------------------


@pytest.mark.slow
async def test_messages_reuse_one_connection(smtp: SmtpTestServer) -> None:
    async with channel(smtp.url()) as email:
        outcomes = [await email.send(mail(number=n)) for n in range(5)]
        assert email.connections == 1
    assert all(isinstance(o, Delivered) and o.code == 250 for o in outcomes)
    received = smtp.recorder.messages
    assert smtp.recorder.connections == 1
    assert [r.connection for r in received] == [1] * 5
    assert [str(r.parsed()["X-Notification-Id"]) for r in received] == [
        f"00000000-0000-4000-8000-{n:012d}" for n in range(5)
    ]
    assert {(r.mail_from, r.rcpt_tos) for r in received} == {(SENDER, ("ada@example.com",))}


@pytest.mark.slow
async def test_at_most_n_sends_in_flight_on_at_most_n_connections(smtp: SmtpTestServer) -> None:
    smtp.recorder.hold_data = True
    async with channel(smtp.url(), connections=2) as email:
        sends = [asyncio.create_task(email.send(mail(number=n))) for n in range(6)]
        await wait_for(smtp, lambda recorder: recorder.held == 2)
        assert email.in_flight == 2
        assert smtp.recorder.held == 2
        smtp.recorder.release()
        outcomes = await asyncio.gather(*sends)
        assert email.connections == 2
    assert all(isinstance(o, Delivered) for o in outcomes)
    assert smtp.recorder.most_held == 2
    assert smtp.recorder.connections == 2
    assert len(smtp.recorder.messages) == 6


@pytest.mark.slow
async def test_a_connection_closed_by_the_server_is_replaced(smtp: SmtpTestServer) -> None:
    """The server closes the idle connection and the client has had time to see it."""
    async with channel(smtp.url()) as email:
        await email.send(mail(number=1))
        await asyncio.to_thread(smtp.recorder.drop_connections)
        assert isinstance(await email.send(mail(number=2)), Delivered)
    assert smtp.recorder.connections == 2
    assert [r.connection for r in smtp.recorder.messages] == [1, 2]


@pytest.mark.slow
async def test_a_stale_idle_connection_is_replaced_without_an_error(
    smtp: SmtpTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The server closed the idle connection and the next send goes out on it before the
    client could notice (the drop blocks this loop): nothing of the message was taken, so
    it is sent again at once on a new connection, and the caller sees only the delivery."""
    caplog.set_level(logging.DEBUG, logger="service.channels.email")
    async with channel(smtp.url()) as email:
        await email.send(mail(number=1))
        smtp.recorder.drop_connections()  # blocks this loop until the server has closed it
        assert isinstance(await email.send(mail(number=2)), Delivered)
    assert "an idle connection was closed by the server" in caplog.text
    assert smtp.recorder.connections == 2
    assert [r.connection for r in smtp.recorder.messages] == [1, 2]


async def test_a_connection_idle_too_long_is_not_reused(smtp: SmtpTestServer) -> None:
    """A connection idle for longer than ``idle_timeout`` is closed, not used again."""
    async with channel(smtp.url(), idle_timeout=1e-9) as email:
        await email.send(mail(number=1))
        await email.send(mail(number=2))
        assert email.connections == 1
    assert [r.connection for r in smtp.recorder.messages] == [1, 2]


@pytest.mark.slow
async def test_check_replaces_a_stale_idle_connection(smtp: SmtpTestServer) -> None:
    async with channel(smtp.url()) as email:
        await email.check()
        assert email.connections == 1
        smtp.recorder.drop_connections()
        await email.check()  # NOOP on the dead one fails; a new one answers
        assert email.connections == 1
    assert smtp.recorder.connections == 2


@pytest.mark.slow
async def test_close_quits_and_later_sends_are_refused(smtp: SmtpTestServer) -> None:
    async with channel(smtp.url()) as email:
        await email.send(mail())
        await email.check()
    assert email.connections == 0
    with pytest.raises(ServerUnavailable, match="closed"):
        await email.send(mail())


# -- outcomes -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("where", "reply", "outcome", "code"),
    [
        ("rcpt", "550 5.1.1 <nobody@example.com>: no such user", PermanentFailure, 550),
        ("rcpt", "451 4.7.1 greylisted, try again later", TemporaryFailure, 451),
        ("rcpt", "452 4.2.2 mailbox full", TemporaryFailure, 452),
        ("data", "451 4.3.0 try again later", TemporaryFailure, 451),
        ("data", "554 5.6.0 message refused", PermanentFailure, 554),
    ],
)
async def test_a_refusal_of_one_message_keeps_the_connection(
    smtp: SmtpTestServer, where: str, reply: str, outcome: type[SmtpFailure], code: int
) -> None:
    if where == "rcpt":
        smtp.recorder.rcpt_replies["nobody@example.com"] = reply
    else:
        smtp.recorder.data_reply = reply
    async with channel(smtp.url()) as email:
        with pytest.raises(outcome) as caught:
            await email.send(mail("nobody@example.com"))
        assert type(caught.value) is outcome  # not a channel-level failure
        assert (caught.value.code, caught.value.stage) == (code, where)
        assert reply in str(caught.value)
        smtp.recorder.data_reply = None
        assert isinstance(await email.send(mail("ada@example.com")), Delivered)
    assert smtp.recorder.connections == 1
    assert [r.rcpt_tos for r in smtp.recorder.messages] == [("ada@example.com",)]


@pytest.mark.slow
async def test_421_pauses_the_channel_and_its_connection_is_replaced(
    smtp: SmtpTestServer,
) -> None:
    smtp.recorder.rcpt_replies["ada@example.com"] = "421 4.7.0 too many messages, slow down"
    async with channel(smtp.url()) as email:
        with pytest.raises(ServerUnavailable) as caught:
            await email.send(mail())
        assert not isinstance(caught.value, UnknownOutcome)
        assert (caught.value.code, caught.value.kind) == (421, "channel")
        assert email.connections == 0
        smtp.recorder.rcpt_replies.clear()
        assert isinstance(await email.send(mail()), Delivered)
    assert smtp.recorder.connections == 2


@pytest.mark.slow
async def test_connection_lost_after_data_is_an_unknown_outcome(smtp: SmtpTestServer) -> None:
    smtp.recorder.drop_after_data = True
    async with channel(smtp.url()) as email:
        with pytest.raises(UnknownOutcome) as caught:
            await email.send(mail(number=1))
        assert (caught.value.stage, caught.value.kind) == ("data", "unknown")
        assert isinstance(caught.value, ServerUnavailable)  # retried, the channel paused
        assert "outcome is unknown" in str(caught.value)
        assert email.connections == 0
        smtp.recorder.drop_after_data = False
        assert isinstance(await email.send(mail(number=2)), Delivered)
    # The server did take the first one: the reason a repeat carries the same Message-ID.
    assert len(smtp.recorder.messages) == 2
    assert smtp.recorder.connections == 2


@pytest.mark.slow
async def test_no_reply_after_data_within_the_timeout_is_an_unknown_outcome(
    smtp: SmtpTestServer,
) -> None:
    smtp.recorder.hold_data = True
    async with channel(smtp.url(), timeout=0.3) as email:
        with pytest.raises(UnknownOutcome, match="timed out"):
            await email.send(mail())
        assert email.connections == 0


async def test_a_refused_connection_is_channel_level() -> None:
    async with channel(f"smtp://{HOST}:{free_port()}") as email:
        with pytest.raises(ServerUnavailable, match="cannot connect") as caught:
            await email.send(mail())
        assert caught.value.stage == "connect"
        with pytest.raises(ServerUnavailable):
            await email.check()


async def test_a_server_that_never_greets_times_out() -> None:
    writers: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)

    silent = await asyncio.start_server(accept, HOST, 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        async with channel(f"smtp://{HOST}:{port}", timeout=0.3) as email:
            with pytest.raises(ServerUnavailable, match="timed out"):
                await email.send(mail())
    finally:
        for writer in writers:
            writer.close()
        silent.close()
        await silent.wait_closed()


# -- addresses ------------------------------------------------------------------------------


@pytest.mark.slow
async def test_an_internationalised_domain_goes_as_idna(smtp: SmtpTestServer) -> None:
    async with channel(smtp.url()) as email:
        await email.send(mail("a@bücher.de"))
    (received,) = smtp.recorder.messages
    assert received.rcpt_tos == ("a@xn--bcher-kva.de",)
    assert "SMTPUTF8" not in received.mail_options
    assert str(received.parsed()["To"]) == "a@xn--bcher-kva.de"


@pytest.mark.slow
async def test_a_non_ascii_local_part_goes_with_smtputf8(smtp: SmtpTestServer) -> None:
    async with channel(smtp.url()) as email:
        await email.send(mail("jörg@bücher.de", "grüße"))
    (received,) = smtp.recorder.messages
    assert received.rcpt_tos == ("jörg@xn--bcher-kva.de",)
    assert "SMTPUTF8" in received.mail_options
    parsed = received.parsed()
    assert [a.addr_spec for a in parsed["To"].addresses] == ["jörg@xn--bcher-kva.de"]
    assert parsed.get_content().replace("\r\n", "\n") == "grüße\n"


@pytest.mark.slow
async def test_a_non_ascii_local_part_fails_permanently_without_smtputf8() -> None:
    with smtp_server(smtputf8=False) as server:
        async with channel(server.url()) as email:
            with pytest.raises(PermanentFailure, match="SMTPUTF8") as caught:
                await email.send(mail("jörg@example.com"))
            assert "jörg@example.com" in str(caught.value)
            assert isinstance(await email.send(mail("ada@example.com")), Delivered)
        assert server.recorder.connections == 1  # the refusal cost no connection
        assert [r.rcpt_tos for r in server.recorder.messages] == [("ada@example.com",)]


async def test_an_envelope_address_that_would_add_a_command_is_refused(
    smtp: SmtpTestServer,
) -> None:
    """A recipient (or sender) holding a line break never reaches the server's command line:
    the message is refused for good, and the connection carries the next one."""
    good = mail()
    forged = Mail(
        good.notification_id, SENDER, "ada@example.com>\r\nRCPT TO:<eve@x.test", good.data
    )
    async with channel(smtp.url()) as email:
        with pytest.raises(PermanentFailure, match="not an address for an SMTP command"):
            await email.send(forged)
        assert isinstance(await email.send(good), Delivered)
    assert [r.rcpt_tos for r in smtp.recorder.messages] == [("ada@example.com",)]


@pytest.mark.slow
@pytest.mark.parametrize(
    "message",
    [
        "x\r\nBcc: x@evil\r\n\r\nbody",
        "Subject: forged\r\nX-Notification-Id: forged\r\n\r\n",
        "\n.\n..\n.hidden\n.",
        ".\r\nQUIT\r\n",
        "nul\x00, NEL\x85, LS\u2028, ünïcödé",
        "y" * 3000,
    ],
)
async def test_the_message_arrives_as_built(smtp: SmtpTestServer, message: str) -> None:
    """Through a real server (SMTP's dot-stuffing included): the same headers, one
    recipient, the same body."""
    async with channel(smtp.url()) as email:
        await email.send(mail(message=message))
    (received,) = smtp.recorder.messages
    parsed = received.parsed()
    assert received.rcpt_tos == ("ada@example.com",)
    assert parsed.keys() == HEADERS
    assert parsed.get_all("Bcc") is None
    assert parsed.get_content().replace("\r\n", "\n") == as_read(message)


# -- TLS and AUTH ---------------------------------------------------------------------------


@pytest.mark.slow
async def test_starttls_when_the_server_offers_it(
    server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    with smtp_server(starttls=server_tls) as server:
        async with channel(server.url(), tls_context=client_tls, require_tls=True) as email:
            assert isinstance(await email.send(mail()), Delivered)
    assert [r.tls for r in server.recorder.messages] == [True]


@pytest.mark.slow
async def test_implicit_tls_for_smtps(
    server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    with smtp_server(implicit_tls=server_tls) as server:
        assert server.url().startswith("smtps://")
        async with channel(server.url(), tls_context=client_tls) as email:
            assert isinstance(await email.send(mail()), Delivered)
    assert [r.tls for r in server.recorder.messages] == [True]


@pytest.mark.slow
async def test_require_tls_refuses_a_server_without_starttls(smtp: SmtpTestServer) -> None:
    async with channel(smtp.url(), require_tls=True) as email:
        with pytest.raises(ServerUnavailable, match="does not offer STARTTLS"):
            await email.send(mail())
    assert smtp.recorder.messages == []


@pytest.mark.slow
async def test_an_untrusted_certificate_is_refused(server_tls: ssl.SSLContext) -> None:
    with smtp_server(starttls=server_tls) as server:
        async with channel(server.url(), tls_context=ssl.create_default_context()) as email:
            with pytest.raises(ServerUnavailable, match="cannot connect"):
                await email.send(mail())
    assert server.recorder.messages == []


@pytest.mark.slow
async def test_auth_with_the_credentials_of_the_url(
    server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    with smtp_server(starttls=server_tls, auth=(USER, PASSWORD)) as server:
        async with channel(server.url(USER, PASSWORD), tls_context=client_tls) as email:
            assert isinstance(await email.send(mail(number=1)), Delivered)
            assert isinstance(await email.send(mail(number=2)), Delivered)
    assert [(r.authenticated, r.tls, r.connection) for r in server.recorder.messages] == [
        (True, True, 1),
        (True, True, 1),
    ]


@pytest.mark.slow
async def test_a_server_that_wants_auth_without_credentials_pauses_the_channel(
    server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    with smtp_server(starttls=server_tls, auth=(USER, PASSWORD)) as server:
        async with channel(server.url(), tls_context=client_tls) as email:
            with pytest.raises(ServerUnavailable) as caught:
                await email.send(mail())
    assert (caught.value.code, caught.value.stage) == (530, "mail")


@pytest.mark.slow
async def test_the_password_is_never_shown(
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
    smtp: SmtpTestServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Not in the errors of a wrong password, of a server without TLS, of a refused
    connection; not in a repr, a str, a name; not in this service's log lines."""
    caplog.set_level(logging.DEBUG)
    errors: list[SmtpFailure] = []
    with smtp_server(starttls=server_tls, auth=(USER, "the right one")) as server:
        async with channel(server.url(USER, PASSWORD), tls_context=client_tls) as email:
            with pytest.raises(ServerUnavailable, match="authentication") as wrong:
                await email.send(mail())
            assert wrong.value.code == 535
            errors.append(wrong.value)
            shown = [repr(email), str(email.server), repr(email.server), email.name]
            shown.append(email.description)
    async with channel(smtp.url(USER, PASSWORD)) as email:
        with pytest.raises(ServerUnavailable, match="not sent in clear") as clear:
            await email.send(mail())
        errors.append(clear.value)
    refusing = f"smtp://{USER}:{quote(PASSWORD, safe='')}@{HOST}:{free_port()}"
    async with channel(refusing) as email:
        with pytest.raises(ServerUnavailable) as refused:
            await email.send(mail())
        errors.append(refused.value)
    assert smtp.recorder.messages == []
    texts = shown + [text for e in errors for text in (str(e), repr(e), repr(e.args))]
    ours = [r.getMessage() for r in caplog.records if not r.name.startswith("mail.log")]
    assert ours, "the channel logs its connections at debug level"
    for text in texts + ours:
        assert PASSWORD not in text
        assert "s3cr3t" not in text


# -- the URL and the settings ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://mail.example.com", ("mail.example.com", 25, False, None, None)),
        ("smtps://mail.example.com", ("mail.example.com", 465, True, None, None)),
        ("SMTP://Mail.Example.com:587/", ("mail.example.com", 587, False, None, None)),
        ("smtp://u%40x:p%3Aw%2F@[::1]:2525", ("::1", 2525, False, "u@x", "p:w/")),
        ("smtps://user:pw@127.0.0.1:1465", ("127.0.0.1", 1465, True, "user", "pw")),
        ("smtp://user@mail.example.com", ("mail.example.com", 25, False, "user", None)),
    ],
)
def test_smtp_urls(url: str, expected: tuple[object, ...]) -> None:
    server = SmtpServer.from_url(url)
    password = server.password.get_secret_value() if server.password is not None else None
    assert (server.host, server.port, server.implicit_tls, server.username, password) == expected
    settings = Settings(_env_file=None, smtp_url=url, smtp_from=SENDER)
    assert settings.smtp_url is not None


@pytest.mark.parametrize(
    "url",
    [
        "http://user:hunter2@mail.example.com",
        "user:hunter2@mail.example.com",
        "mail.example.com:25",
        "smtp://user:hunter2@",
        "smtp://user:hunter2@mail.example.com:port",
        "smtp://user:hunter2@mail.example.com:70000",
        "smtp://user:hunter2@mail.example.com:0",
        "smtp://user:hunter2@mail.example.com/path",
        "smtp://user:hunter2@mail.example.com?x=1",
        "smtp://:hunter2@mail.example.com",
    ],
)
def test_a_bad_smtp_url_is_refused_without_repeating_it(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="SMTP URL") as caught:
        SmtpServer.from_url(url)
    assert "hunter2" not in str(caught.value)
    monkeypatch.setenv("NOTIFY_SMTP_URL", url)
    monkeypatch.setenv("NOTIFY_SMTP_FROM", SENDER)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    message = str(refused.value)
    assert message.startswith("invalid setting NOTIFY_SMTP_URL=<hidden>: ")
    assert "hunter2" not in message
    assert "\n" not in message


def test_email_settings_defaults_and_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(_env_file=None)
    assert settings.smtp_url is None  # no email, as before
    assert (settings.smtp_from, settings.email_subject) == (None, "Notification")
    assert (settings.smtp_require_tls, settings.smtp_connections) == (False, 64)
    assert settings.smtp_connections_min == 4
    assert settings.smtp_timeout == 30.0

    monkeypatch.setenv("NOTIFY_SMTP_URL", "smtps://user:hunter2@mail.example.com")
    with pytest.raises(SettingsError, match="NOTIFY_SMTP_FROM must be set") as missing:
        load_settings()
    assert "hunter2" not in str(missing.value)
    monkeypatch.setenv("NOTIFY_SMTP_FROM", SENDER)
    monkeypatch.setenv("NOTIFY_SMTP_CONNECTIONS", "2")
    monkeypatch.setenv("NOTIFY_SMTP_REQUIRE_TLS", "true")
    loaded = load_settings()
    assert loaded.smtp_url is not None
    assert "hunter2" not in repr(loaded)
    assert (loaded.smtp_connections, loaded.smtp_require_tls) == (2, True)

    for variable, value in [
        ("NOTIFY_SMTP_FROM", "not an address"),
        ("NOTIFY_SMTP_FROM", "jörg@example.com"),
        ("NOTIFY_EMAIL_SUBJECT", "two\nlines"),
        ("NOTIFY_SMTP_CONNECTIONS", "0"),
        ("NOTIFY_SMTP_TIMEOUT", "0"),
    ]:
        with monkeypatch.context() as patched:
            patched.setenv(variable, value)
            with pytest.raises(SettingsError, match=variable):
                load_settings()
