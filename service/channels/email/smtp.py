"""The email channel's I/O: SMTP (``session``), through a small pool of connections.

``SmtpPool.send(mail)`` delivers one message (``message.Mail``) and returns ``Delivered``, or
raises an ``SmtpFailure``, which is one of the channel outcomes (``service.channels.base``)
with the server's reply code and the step that failed:

- ``PermanentFailure`` (``Dead``): the server refused this message for good (5xx, e.g. 550
  unknown mailbox), or it cannot go to this server at all (a non-ASCII local part and no
  SMTPUTF8). Do not retry it.
- ``TemporaryFailure`` (``Retry``): the server deferred this message (4xx other than 421).
  Retry this message later; the others need not wait.
- ``ServerUnavailable`` (``ChannelDown``): the server, not the message: it cannot be reached,
  refused the connection, timed out, lost the connection, throttles (421), fails TLS or
  authentication. Pause the whole channel, then probe.
- ``UnknownOutcome`` (a ``ServerUnavailable``): the connection was lost, or timed out, after
  the ``DATA`` command: the server may have taken the message. Retry it (the receiver can drop
  a repeat by its Message-ID).

The pool keeps at most ``connections`` connections open and reuses them for message after
message (never one connection per message); at most ``connections`` sends are in flight, the
others wait their turn in ``send``. A connection that is lost or broken is closed and a new one
is opened by the next send. A reused connection that turns out to have been closed by the
server while idle (lost before ``MAIL FROM`` was answered: nothing of the message was taken)
is replaced at once, and the message sent on the new one. With a server that offers
PIPELINING, a message takes two round trips (``session``).

TLS: ``smtps://`` is TLS from the first byte; ``smtp://`` upgrades with STARTTLS whenever the
server offers it, and with ``require_tls`` refuses a server that does not. Credentials
(``smtp://user:password@host``) are only ever sent over TLS. The password lives in a pydantic
``SecretStr`` and appears in no exception, log line or ``repr``.

A delivery loop calls ``send`` once per message, as many at once as it likes: the pool bounds
what is in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from types import TracebackType
from typing import ClassVar, Literal

from config.settings import SmtpServer
from service.channels.base import ChannelDown, Dead, Retry, Undelivered
from service.channels.email.message import Mail
from service.channels.email.session import (
    ReplyError,
    SmtpSession,
    TransactionFailed,
    path,
)

__all__ = [
    "Delivered",
    "PermanentFailure",
    "ServerUnavailable",
    "SmtpFailure",
    "SmtpOptions",
    "SmtpPool",
    "SmtpServer",
    "TemporaryFailure",
    "UnknownOutcome",
]

logger = logging.getLogger("service.channels.email")

Stage = Literal["connect", "mail", "rcpt", "data"]


# -- outcomes -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivered:
    """The server accepted the message (2xx after the data): ``code`` and its ``reply``."""

    code: int
    reply: str


class SmtpFailure(Undelivered):
    """A message was not (known to be) delivered. ``str()`` is one line: the reason, with the
    server's reply when there was one; never the password.

    ``code`` is the server's reply code, if any; ``stage`` the step that failed: ``connect``
    (including TLS and authentication), ``mail`` (MAIL FROM), ``rcpt`` (RCPT TO) or ``data``."""

    kind: ClassVar[str] = "error"
    """``permanent``, ``temporary``, ``channel`` or ``unknown``."""

    def __init__(self, reason: str, *, code: int | None = None, stage: Stage = "connect") -> None:
        super().__init__(reason)
        self.code = code
        self.stage: Stage = stage


class PermanentFailure(SmtpFailure, Dead):
    """Refused for good (5xx, or impossible on this server): do not retry this message."""

    kind = "permanent"


class TemporaryFailure(SmtpFailure, Retry):
    """Deferred (4xx other than 421): retry this message later, alone."""

    kind = "temporary"


class ServerUnavailable(SmtpFailure, ChannelDown):
    """The server cannot take mail now (unreachable, refused, timed out, connection lost, 421,
    TLS or authentication failed): pause the whole channel, then probe."""

    kind = "channel"


class UnknownOutcome(ServerUnavailable):
    """The connection was lost (or timed out) after ``DATA``: the message may have been
    delivered. Retry it; its Message-ID lets the receiver drop a repeat."""

    kind = "unknown"


# -- configuration --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SmtpOptions:
    """How the channel talks to its server (from ``Settings``)."""

    connections: int = 4
    """Connections kept open, and sends in flight, at most."""
    timeout: float = 30.0
    """Seconds for connecting (TCP, TLS, EHLO, AUTH together) and for each step of a send
    (MAIL, RCPT, or DATA with the message: its two replies)."""
    require_tls: bool = False
    """With ``smtp://``: refuse a server that does not offer STARTTLS."""
    tls_context: ssl.SSLContext | None = None
    """Trust and verification; None: the system's CAs, with the host name checked."""
    local_hostname: str | None = None
    """The name sent with EHLO; None: this machine's fully qualified name."""
    idle_timeout: float = 60.0
    """Seconds a connection may sit unused before it is closed rather than reused (servers
    drop idle clients, RFC 5321 suggests after 5 minutes)."""

    def __post_init__(self) -> None:
        if self.connections < 1:
            raise ValueError("connections must be at least 1")
        if self.timeout <= 0 or self.idle_timeout <= 0:
            raise ValueError("timeouts must be positive")


# -- the channel ----------------------------------------------------------------------------


class _Connection:
    """One open SMTP session of the pool."""

    __slots__ = ("client", "idle_since")

    def __init__(self, client: SmtpSession) -> None:
        self.client = client
        self.idle_since = time.monotonic()


class _LostBeforeData(ServerUnavailable):
    """The connection was lost before the server answered MAIL FROM: nothing was taken."""


class SmtpPool:
    """SMTP delivery through at most ``options.connections`` kept-open connections."""

    def __init__(self, server: SmtpServer, options: SmtpOptions | None = None) -> None:
        self.server = server
        self.options = options if options is not None else SmtpOptions()
        self.name = f"email {server}"
        """Short, for ``/readyz`` and metrics."""
        self.description = f"SMTP server {server}"
        """For errors and the service's log."""
        self._slots = asyncio.Semaphore(self.options.connections)
        self._idle: list[_Connection] = []  # most recently used last
        self._open: set[_Connection] = set()
        self._in_flight = 0
        self._closed = False
        self._tls_context = self.options.tls_context
        self._local_hostname = self.options.local_hostname

    def __repr__(self) -> str:
        return f"<SmtpPool {self.server} connections={len(self._open)}>"

    @property
    def connections(self) -> int:
        """Connections open now (idle or sending)."""
        return len(self._open)

    @property
    def in_flight(self) -> int:
        """Sends holding a connection now (at most ``options.connections``)."""
        return self._in_flight

    async def __aenter__(self) -> SmtpPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def send(self, mail: Mail) -> Delivered:
        """Deliver ``mail``: ``Delivered``, or a ``SmtpFailure`` (see the module's doc).
        Waits for a free connection when ``options.connections`` sends are in flight."""
        async with self._slots:
            if self._closed:
                raise ServerUnavailable(f"{self.description}: the channel is closed")
            self._in_flight += 1
            try:
                return await self._send(mail)
            finally:
                self._in_flight -= 1

    async def check(self) -> None:
        """Whether the server answers now: NOOP on an idle connection, or a new connection
        (kept for the next send). Raises ``ServerUnavailable`` if not."""
        async with self._slots:
            if self._closed:
                raise ServerUnavailable(f"{self.description}: the channel is closed")
            idle = self._take_idle()
            if idle is not None and await self._answers(idle):
                return
            fresh = await self._connect()
            if not await self._answers(fresh):
                raise ServerUnavailable(f"{self.description}: no answer to NOOP")

    async def _answers(self, connection: _Connection) -> bool:
        """NOOP on ``connection``: True (and back to the pool) if answered, else closed."""
        try:
            async with asyncio.timeout(self.options.timeout):
                await connection.client.noop()
        except (ReplyError, OSError):
            self._discard(connection)
            return False
        except BaseException:
            self._discard(connection)
            raise
        self._release(connection)
        return True

    async def close(self) -> None:
        """QUIT the idle connections; those in use are closed when their send ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(self._quit(connection) for connection in idle))

    # -- one message ----------------------------------------------------------------------

    async def _send(self, mail: Mail) -> Delivered:
        connection = self._take_idle()
        if connection is not None:
            try:
                return await self._on(connection, mail)
            except _LostBeforeData:
                logger.debug("%s: an idle connection was closed by the server", self.description)
        try:
            return await self._on(await self._connect(), mail)
        except _LostBeforeData as exc:
            raise ServerUnavailable(exc.reason, stage=exc.stage) from None

    async def _on(self, connection: _Connection, mail: Mail) -> Delivered:
        """One transaction on ``connection``, which goes back to the pool if it is still
        usable, and is closed otherwise."""
        try:
            delivered = await self._transaction(connection.client, mail)
        except SmtpFailure:
            self._release(connection)
            raise
        except BaseException:  # cancelled, or a bug: the session's state is unknown
            self._discard(connection)
            raise
        self._release(connection)
        return delivered

    async def _transaction(self, client: SmtpSession, mail: Mail) -> Delivered:
        if mail.smtputf8 and not client.supports("smtputf8"):
            raise PermanentFailure(
                f"{mail.recipient}: the local part is not ASCII and {self.description} does "
                "not offer SMTPUTF8",
                stage="mail",
            )
        data = mail.as_bytes()
        options = []
        if client.supports("size"):
            options.append(f"SIZE={len(data)}")
        if mail.smtputf8:
            # RFC 6531: the headers are UTF-8 (the body is 7-bit quoted-printable).
            options.append("SMTPUTF8")
            if client.supports("8bitmime"):
                options.append("BODY=8BITMIME")
        try:
            sender = path(mail.sender, utf8=mail.smtputf8)
            recipient = path(mail.recipient, utf8=mail.smtputf8)
        except ValueError as exc:  # an address that cannot go on a command line
            raise PermanentFailure(
                f"{self.description}: cannot send: {exc}", stage="mail"
            ) from None
        try:
            # One recipient: its refusal is this message's outcome.
            reply = await client.transaction(
                sender, recipient, options, data, step=self.options.timeout
            )
        except TransactionFailed as failed:
            stage, cause = failed.stage, failed.cause
            if isinstance(cause, ReplyError):
                await self._reset(client)
                raise self._refused(cause, stage, mail) from None
            client.close()
            lost = "no reply in time" if isinstance(cause, TimeoutError) else "connection lost"
            if stage == "data":
                raise UnknownOutcome(
                    self._reason(f"{lost} after DATA, the outcome is unknown", cause),
                    stage=stage,
                ) from None
            if stage == "mail" and not isinstance(cause, TimeoutError):
                raise _LostBeforeData(self._reason(lost, cause), stage=stage) from None
            raise ServerUnavailable(self._reason(lost, cause), stage=stage) from None
        return Delivered(reply.code, _one_line(reply.message))

    def _refused(self, exc: ReplyError, stage: Stage, mail: Mail) -> SmtpFailure:
        """The outcome of a reply that is not a success."""
        code = exc.code
        what = {"mail": "MAIL FROM", "rcpt": "RCPT TO", "data": "the message"}.get(stage, stage)
        reason = self._redact(
            f"{self.description} refused {what} for {mail.recipient}: "
            f"{code} {_one_line(exc.message)}"
        )
        if code == 421 or (stage == "mail" and code == 530):
            # 421: the server closes the session (throttling, shutting down). 530 to MAIL
            # FROM: it wants authentication; no message can go until that is configured.
            return ServerUnavailable(reason, code=code, stage=stage)
        if 400 <= code < 500:
            return TemporaryFailure(reason, code=code, stage=stage)
        if 500 <= code < 600:
            return PermanentFailure(reason, code=code, stage=stage)
        if stage == "data":  # not a reply at all: the session is out of step
            return UnknownOutcome(reason, code=code, stage=stage)
        return ServerUnavailable(reason, code=code, stage=stage)

    async def _reset(self, client: SmtpSession) -> None:
        """RSET after a refusal, so the session can carry the next message; a session that
        cannot be reset (within the timeout) is closed."""
        if not client.is_connected:
            return
        try:
            async with asyncio.timeout(self.options.timeout):
                await client.rset()
        except (ReplyError, OSError):
            client.close()

    # -- connections ----------------------------------------------------------------------

    async def _connect(self) -> _Connection:
        """A new connection: TCP (TLS for smtps), EHLO, STARTTLS, EHLO, AUTH, within
        ``options.timeout`` in all; ``ServerUnavailable`` if any step fails."""
        server = self.server
        client: SmtpSession | None = None
        try:
            async with asyncio.timeout(self.options.timeout):
                tls = await self._tls() if server.implicit_tls else None
                client = await SmtpSession.open(server.host, server.port, tls=tls)
                await self._secure(client)
                await self._authenticate(client)
        except ServerUnavailable:
            if client is not None:
                client.close()
            raise
        except (ReplyError, OSError) as exc:
            # TimeoutError (asyncio.timeout's) and ssl.SSLError are OSErrors.
            if client is not None:
                client.close()
            raise ServerUnavailable(self._reason("cannot connect", exc)) from None
        except BaseException:
            if client is not None:
                client.close()
            raise
        connection = _Connection(client)
        self._open.add(connection)
        logger.debug("%s: connection opened (%d open)", self.description, len(self._open))
        return connection

    async def _tls(self) -> ssl.SSLContext:
        """``options.tls_context``, or the system's CAs with the host name checked (made once,
        off the event loop: it reads the CA files)."""
        if self._tls_context is None:
            self._tls_context = await asyncio.to_thread(ssl.create_default_context)
        return self._tls_context

    async def _hostname(self) -> str:
        """The name said with EHLO: ``options.local_hostname``, else this machine's fully
        qualified name (looked up once, off the event loop), as ``localhost`` if it is not
        a plain ASCII name."""
        if self._local_hostname is None:
            name = await asyncio.to_thread(socket.getfqdn)
            plain = name.isascii() and name.isprintable() and " " not in name and name
            self._local_hostname = name if plain else "localhost"
        return self._local_hostname

    async def _secure(self, client: SmtpSession) -> None:
        name = await self._hostname()
        try:
            await client.ehlo(name)
        except ReplyError as exc:
            if exc.code < 500:
                raise
            await client.helo(name)  # an SMTP (not ESMTP) server: no STARTTLS, AUTH, SMTPUTF8
        if self.server.implicit_tls:
            return
        if client.supports("starttls"):
            await client.starttls(await self._tls())
            await client.ehlo(name)  # RFC 3207: forget what was said before TLS
        elif self.options.require_tls:
            raise ServerUnavailable(
                f"{self.description} does not offer STARTTLS, and TLS is required"
            )

    async def _authenticate(self, client: SmtpSession) -> None:
        server = self.server
        if server.username is None:
            return
        if not client.tls:
            raise ServerUnavailable(
                f"{self.description} offers no TLS: the password is not sent in clear"
            )
        try:
            await client.login(
                server.username,
                server.password.get_secret_value() if server.password is not None else "",
            )
        except ValueError as exc:
            raise ServerUnavailable(
                f"{self.description}: cannot authenticate as {server.username!r}: {exc}"
            ) from None
        except ReplyError as exc:
            raise ServerUnavailable(
                self._redact(
                    f"{self.description}: authentication as {server.username!r} failed: "
                    f"{exc.code} {_one_line(exc.message)}"
                ),
                code=exc.code,
            ) from None

    def _take_idle(self) -> _Connection | None:
        """The most recently used idle connection that is still open; on the way, those idle
        too long (the oldest, first in the list) and those the server closed are closed."""
        idle, limit = self._idle, self.options.idle_timeout
        now = time.monotonic()
        stale = 0
        while stale < len(idle) and now - idle[stale].idle_since >= limit:
            stale += 1
        for connection in idle[:stale]:
            self._discard(connection)
        del idle[:stale]
        while idle:
            connection = idle.pop()
            if connection.client.is_connected:
                return connection
            self._discard(connection)
        return None

    def _release(self, connection: _Connection) -> None:
        """Back to the pool if usable, else closed (a new one replaces it on demand)."""
        if self._closed or not connection.client.is_connected:
            self._discard(connection)
            return
        connection.idle_since = time.monotonic()
        self._idle.append(connection)

    def _discard(self, connection: _Connection) -> None:
        connection.client.close()
        if connection in self._open:
            self._open.discard(connection)
            logger.debug("%s: connection closed (%d open)", self.description, len(self._open))

    async def _quit(self, connection: _Connection) -> None:
        with contextlib.suppress(ReplyError, OSError):
            async with asyncio.timeout(min(self.options.timeout, 5.0)):
                await connection.client.quit()
        self._discard(connection)

    # -- reasons --------------------------------------------------------------------------

    def _reason(self, what: str, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError):
            detail = f"timed out after {self.options.timeout:g} s"
        else:  # (a ReplyError's text is its code and message)
            detail = str(exc) or type(exc).__name__
        return self._redact(f"{self.description}: {what}: {_one_line(detail)}")

    def _redact(self, text: str) -> str:
        """``text`` without the password, whatever a server or library put in it."""
        password = self.server.password
        secret = password.get_secret_value() if password is not None else ""
        return text.replace(secret, "**********") if secret else text


def _one_line(text: str) -> str:
    return " ".join(text.split())
