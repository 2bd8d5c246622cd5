"""The SMTP client session (service/channels/email/session.py) where aiosmtpd cannot show it:
against servers scripted here, line by line, on the test's own event loop (PIPELINING's
round trips, a server that breaks the protocol, data slipped in before TLS); and the two pure
functions that keep request input off the command lines and inside the data."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trustme

from service.channels.email.session import data_block, path
from service.channels.email.smtp import Delivered, PermanentFailure, ServerUnavailable
from tests.support.server import HOST
from tests.test_email_channel import SENDER, channel, mail

PASSWORD = "hunter2secret"


ENVELOPE = [f"MAIL FROM:<{SENDER}>", "RCPT TO:<ada@example.com>", "DATA"]


class Conversation:
    """The server's side of one connection: reads commands (kept in ``seen``), answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.seen: list[str] = []
        self.hung_up = False

    async def command(self) -> str:
        line = (await self._reader.readline()).decode()
        assert line.endswith("\r\n"), f"a command line ends with CRLF: {line!r}"
        self.seen.append(line[:-2])
        return line[:-2]

    async def data(self) -> bytes:
        """The message after 354, up to the line holding a lone dot (kept as ``<data>``)."""
        lines = []
        while (line := await self._reader.readline()) != b".\r\n":
            assert line.endswith(b"\r\n"), f"a data line ends with CRLF: {line!r}"
            lines.append(line)
        self.seen.append("<data>")
        return b"".join(lines) + b".\r\n"

    async def take_message(self, reply: str) -> bytes:
        """Take one pipelined message: the whole envelope (asserted) before any reply, then
        its acceptance and the data, answered with ``reply``; the data."""
        assert [await self.command() for _ in range(3)] == ENVELOPE
        await self.say("250 sender ok", "250 recipient ok", "354 go ahead")
        data = await self.data()
        await self.say(reply)
        return data

    async def ended(self) -> bytes:
        """Wait until the client closes the connection (the script then ends); what it sent
        meanwhile."""
        sent = b""
        with contextlib.suppress(ConnectionError):
            while chunk := await self._reader.read(4096):
                sent += chunk
        self.hung_up = True
        return sent

    def hang_up(self) -> None:
        """Close the connection from the server's side (the script then ends)."""
        self.hung_up = True
        self._writer.close()

    async def say(self, *replies: str) -> None:
        self._writer.write("".join(f"{reply}\r\n" for reply in replies).encode())
        await self._writer.drain()

    async def greet(self, *extensions: str) -> None:
        """Greet, and answer EHLO offering ``extensions``."""
        await self.say("220 scripted.test ESMTP")
        assert (await self.command()).startswith("EHLO ")
        offered = ["scripted.test", *extensions]
        await self.say(*(f"250-{x}" for x in offered[:-1]), f"250 {offered[-1]}")


Script = Callable[[Conversation], Awaitable[None]]


@asynccontextmanager
async def scripted(
    script: Script, *, tls: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[str, list[Conversation]]]:
    """A server on a free loopback port that runs ``script`` for each connection (TLS from
    the first byte with ``tls``); its URL and the conversations so far. A script's failed
    assertion is raised when the block ends (the client meanwhile sees the connection
    closed)."""
    conversations: list[Conversation] = []
    tasks: list[asyncio.Future[None]] = []
    failures: list[AssertionError] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conversation = Conversation(reader, writer)
        conversations.append(conversation)
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)
        try:
            await script(conversation)
            while not conversation.hung_up and await reader.readline():  # QUIT, then close
                await conversation.say("221 bye")
        except AssertionError as failure:
            failures.append(failure)
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(accept, HOST, 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"{'smtp' if tls is None else 'smtps'}://{HOST}:{port}", conversations
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
    if failures:
        raise failures[0]


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server's TLS context (a certificate for the loopback address) and a client's that
    trusts it."""
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST).configure_cert(server_tls)
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)
    return server_tls, client_tls


async def test_with_pipelining_the_envelope_goes_without_waiting_for_replies() -> None:
    """A server that offers PIPELINING and answers nothing until MAIL, RCPT and DATA have
    all arrived gets the message: the client sent the three at once."""

    async def script(talk: Conversation) -> None:
        await talk.greet("PIPELINING")
        envelope = [await talk.command() for _ in range(3)]  # no reply meanwhile
        assert envelope == ENVELOPE
        await talk.say("250 sender ok", "250 recipient ok", "354 go ahead")
        await talk.data()
        await talk.say("250 2.0.0 queued as 1")

    async with scripted(script) as (url, talks), channel(url, timeout=5.0) as email:
        assert await email.send(mail()) == Delivered(250, "2.0.0 queued as 1")
    assert talks[0].seen[1:5] == [*ENVELOPE, "<data>"]


async def test_without_pipelining_a_refused_sender_ends_the_envelope() -> None:
    """To a server that does not offer PIPELINING the client sends one command at a time:
    after MAIL FROM is refused it sends no RCPT TO and no DATA, only RSET."""

    async def script(talk: Conversation) -> None:
        await talk.greet("8BITMIME")
        assert await talk.command() == ENVELOPE[0]
        await talk.say("550 5.7.1 sender refused")
        assert await talk.command() == "RSET"
        await talk.say("250 reset")

    async with scripted(script) as (url, talks), channel(url) as email:
        with pytest.raises(PermanentFailure) as refused:
            await email.send(mail())
    assert (refused.value.code, refused.value.stage) == (550, "mail")
    assert talks[0].seen[1:3] == [ENVELOPE[0], "RSET"]


async def test_pipelined_replies_are_each_checked_and_the_session_goes_on() -> None:
    """Pipelined, a refused recipient is the outcome even when the server then takes DATA:
    the client ends that empty message with a lone dot, resets, and sends the next message
    on the same connection."""

    async def script(talk: Conversation) -> None:
        await talk.greet("PIPELINING")
        assert [await talk.command() for _ in range(3)] == ENVELOPE
        await talk.say("250 sender ok", "550 5.1.1 no such user", "354 go ahead")
        assert await talk.data() == b".\r\n"  # nothing of the message
        await talk.say("554 5.5.1 no valid recipients")
        assert await talk.command() == "RSET"
        await talk.say("250 reset")
        assert b"Subject: Notification" in await talk.take_message("250 queued")

    async with scripted(script) as (url, talks), channel(url) as email:
        with pytest.raises(PermanentFailure) as refused:
            await email.send(mail())
        assert (refused.value.code, refused.value.stage) == (550, "rcpt")
        assert "no such user" in str(refused.value)
        assert await email.send(mail()) == Delivered(250, "queued")
    assert len(talks) == 1


async def test_a_pipelined_refusal_stays_the_outcome_when_the_server_then_hangs_up() -> None:
    """Pipelined, a recipient refused for good is the outcome even if the server closes the
    connection instead of answering DATA: the message is dead, not an unknown outcome sent
    again."""

    async def script(talk: Conversation) -> None:
        await talk.greet("PIPELINING")
        assert [await talk.command() for _ in range(3)] == ENVELOPE
        await talk.say("250 sender ok", "550 5.1.1 no such user")
        talk.hang_up()  # no reply to DATA

    async with scripted(script) as (url, _), channel(url) as email:
        with pytest.raises(PermanentFailure) as refused:
            await email.send(mail())
    assert (refused.value.code, refused.value.stage) == (550, "rcpt")


async def test_auth_login_offered_the_old_way_is_used(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """A server that offers only ``AUTH=LOGIN`` (the form before RFC 4954) gets the user and
    the password, each base64 on its own line, over TLS."""
    server_tls, client_tls = tls

    async def script(talk: Conversation) -> None:
        await talk.greet("AUTH=LOGIN", "PIPELINING")
        assert await talk.command() == "AUTH LOGIN"
        await talk.say("334 VXNlcm5hbWU6")
        assert base64.b64decode(await talk.command()) == b"mailer"
        await talk.say("334 UGFzc3dvcmQ6")
        assert base64.b64decode(await talk.command()) == b"pa ss"
        await talk.say("235 2.7.0 authenticated")
        await talk.take_message("250 queued")

    async with scripted(script, tls=server_tls) as (url, _):
        authenticated = url.replace("://", "://mailer:pa%20ss@")
        async with channel(authenticated, tls_context=client_tls) as email:
            assert await email.send(mail()) == Delivered(250, "queued")


async def test_a_reply_to_no_command_ends_the_session() -> None:
    """A reply that comes while the client asked nothing (a refusal, between two messages) is
    not taken as the next command's: that session ends, and the next message goes on a new
    connection, whole."""
    dropped = asyncio.Event()
    connections = 0

    async def script(talk: Conversation) -> None:
        nonlocal connections
        connections += 1
        await talk.greet("PIPELINING")
        await talk.take_message(f"250 queued {connections}")
        if connections == 1:
            await talk.say("550 5.7.1 a reply to nothing")
            await talk.ended()
            dropped.set()

    async with scripted(script) as (url, talks), channel(url) as email:
        assert await email.send(mail()) == Delivered(250, "queued 1")
        await dropped.wait()
        assert await email.send(mail()) == Delivered(250, "queued 2")
    assert len(talks) == 2
    assert talks[0].seen[-1] == "<data>"  # nothing was sent on it after the stray reply


async def test_a_reply_of_endless_lines_is_refused() -> None:
    """A server that goes on with one reply's lines ("220-...") is cut off, not held."""

    async def script(talk: Conversation) -> None:
        await talk.say(*["220-and more"] * 150, "220 ok")

    async with scripted(script) as (url, _), channel(url) as email:
        with pytest.raises(ServerUnavailable, match="a reply of more than 100 lines"):
            await email.send(mail())


async def test_a_timeout_after_a_pipelined_refusal_ends_the_session() -> None:
    """Pipelined, a refused recipient is the outcome even when DATA's reply does not come in
    time; that reply may still come, so the session is not reset and used again: the next
    message goes on a new connection."""
    connections = 0

    async def script(talk: Conversation) -> None:
        nonlocal connections
        connections += 1
        await talk.greet("PIPELINING")
        if connections == 2:
            await talk.take_message("250 queued")
            return
        assert [await talk.command() for _ in range(3)] == ENVELOPE
        await talk.say("250 sender ok", "550 5.1.1 no such user")  # DATA: no reply
        assert await talk.ended() == b""  # (no RSET)

    async with scripted(script) as (url, talks), channel(url, timeout=0.5) as email:
        with pytest.raises(PermanentFailure) as refused:
            await email.send(mail())
        assert (refused.value.code, refused.value.stage) == (550, "rcpt")
        assert await email.send(mail()) == Delivered(250, "queued")
    assert len(talks) == 2


def _plain_token() -> str:
    return base64.b64encode(f"\0mailer\0{PASSWORD}".encode()).decode()


@pytest.mark.parametrize(
    ("offered", "echo"),
    [
        ("PLAIN", lambda line: line),  # the command line, whole
        ("PLAIN", lambda line: line[:24]),  # its first characters
        ("LOGIN", lambda line: line),  # LOGIN's password line
    ],
)
async def test_a_server_that_echoes_the_credentials_does_not_put_them_in_errors(
    offered: str, echo: Callable[[str], str], tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    """A server that quotes the AUTH command in its refusal: the channel's error keeps the
    server's words but neither the password nor any part of the base64 it went in."""
    server_tls, client_tls = tls

    async def script(talk: Conversation) -> None:
        await talk.greet(f"AUTH {offered}")
        line = await talk.command()
        if offered == "LOGIN":
            await talk.say("334 VXNlcm5hbWU6")
            await talk.command()
            await talk.say("334 UGFzc3dvcmQ6")
            line = await talk.command()
        await talk.say(f"535 5.7.8 refused: {echo(line)}")

    async with scripted(script, tls=server_tls) as (url, _):
        authenticated = url.replace("://", f"://mailer:{PASSWORD}@")
        async with channel(authenticated, tls_context=client_tls) as email:
            with pytest.raises(ServerUnavailable) as refused:
                await email.send(mail())
    error = str(refused.value)
    assert "535 5.7.8 refused: " in error
    secrets = [PASSWORD, _plain_token(), base64.b64encode(PASSWORD.encode()).decode()]
    assert not any(secret[:12] in error for secret in secrets), error


async def test_bytes_before_the_tls_handshake_are_refused() -> None:
    """A reply slipped in after STARTTLS's 220 (to be read as if it came over TLS) ends the
    connection: the channel is unavailable, and no message goes."""

    async def script(talk: Conversation) -> None:
        await talk.greet("STARTTLS")
        assert await talk.command() == "STARTTLS"
        await talk.say("220 go ahead", "250-injected", "250 AUTH PLAIN")

    async with scripted(script) as (url, talks), channel(url) as email:
        with pytest.raises(ServerUnavailable, match="more after its STARTTLS reply"):
            await email.send(mail())
    assert not any(line.startswith("MAIL") for talk in talks for line in talk.seen)


async def test_a_server_that_does_not_speak_smtp_is_unavailable() -> None:
    """A greeting that is not an SMTP reply: the channel is unavailable, and says why."""

    async def script(talk: Conversation) -> None:
        await talk.say("HTTP/1.1 400 Bad Request")

    async with scripted(script) as (url, _), channel(url) as email:
        with pytest.raises(ServerUnavailable, match="not an SMTP reply"):
            await email.send(mail())


@pytest.mark.parametrize(
    ("data", "sent"),
    [
        (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
        (b".one\r\n.\r\nx\r\n", b"..one\r\n..\r\nx\r\n.\r\n"),
        (b"a\n.\nb", b"a\r\n..\r\nb\r\n.\r\n"),  # lone LFs cannot end the data early
        (b"a\r.\rb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"no break at the end", b"no break at the end\r\n.\r\n"),
    ],
)
def test_the_data_is_crlf_dot_stuffed_and_ends_once(data: bytes, sent: bytes) -> None:
    """Every line break goes as CRLF, a line that starts with a dot gets another, and the
    only end of data is the one the client adds."""
    assert data_block(data) == sent


@pytest.mark.parametrize(
    "address",
    ["a@b.c\r\nRCPT TO:<x@y.z>", "a@b.c>", "<a@b.c", "a b@c.d", "a@b.c\x00", "a\u2028@b.c", ""],
)
def test_an_address_that_could_change_a_command_is_refused(address: str) -> None:
    with pytest.raises(ValueError, match="not an address"):
        path(address, utf8=True)


def test_a_non_ascii_address_needs_smtputf8() -> None:
    assert path("jörg@example.com", utf8=True) == "jörg@example.com".encode()
    with pytest.raises(ValueError, match="not an ASCII address"):
        path("jörg@example.com", utf8=False)
