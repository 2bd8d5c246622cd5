"""The email channel's own I/O: SMTP with ``aiosmtplib``, through a small pool of connections.

``EmailChannel.send(mail)`` delivers one message (``service.mail.Mail``) and returns
``Delivered``, or raises a ``DeliveryError`` that says what to do next:

- ``PermanentFailure``: the server refused this message for good (5xx, e.g. 550 unknown
  mailbox), or it cannot go to this server at all (a non-ASCII local part and no SMTPUTF8).
  Do not retry it.
- ``TemporaryFailure``: the server deferred this message (4xx other than 421). Retry this
  message later; the others need not wait.
- ``ChannelUnavailable`` (a ``TemporaryFailure``): the server, not the message: it cannot be
  reached, refused the connection, timed out, lost the connection, throttles (421), fails TLS
  or authentication. Pause the whole channel, then retry.
- ``UnknownOutcome`` (a ``ChannelUnavailable``): the connection was lost, or timed out, after
  the ``DATA`` command: the server may have taken the message. Retry it (the receiver can drop
  a repeat by its Message-ID).

The pool keeps at most ``connections`` connections open and reuses them for message after
message (never one connection per message); at most ``connections`` sends are in flight, the
others wait their turn in ``send``. A connection that is lost or broken is closed and a new one
is opened by the next send. A reused connection that turns out to have been closed by the
server while idle (lost before ``MAIL FROM`` was answered: nothing of the message was taken)
is replaced at once, and the message sent on the new one.

TLS: ``smtps://`` is TLS from the first byte; ``smtp://`` upgrades with STARTTLS whenever the
server offers it, and with ``require_tls`` refuses a server that does not. Credentials
(``smtp://user:password@host``) are only ever sent over TLS. The password lives in a pydantic
``SecretStr`` and appears in no exception, log line or ``repr``.

This channel does not implement ``service.sinks.core.Target``: that protocol delivers batches
and has one outcome per batch, while each email has its own. A delivery loop calls ``send``
once per message, as many at once as it likes: the pool bounds what is in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from dataclasses import dataclass
from types import TracebackType
from typing import ClassVar, Literal
from urllib.parse import unquote, urlsplit

import aiosmtplib
from pydantic import SecretStr

from service.mail import Mail

__all__ = [
    "ChannelUnavailable",
    "Delivered",
    "DeliveryError",
    "EmailChannel",
    "PermanentFailure",
    "SmtpOptions",
    "SmtpServer",
    "TemporaryFailure",
    "UnknownOutcome",
]

logger = logging.getLogger("service.sinks.email")

_DEFAULT_PORTS = {"smtp": 25, "smtps": 465}
_URL_SHAPE = "smtp://[user:password@]host[:port] or smtps://[user:password@]host[:port]"

Stage = Literal["connect", "mail", "rcpt", "data"]


# -- outcomes -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivered:
    """The server accepted the message (2xx after the data): ``code`` and its ``reply``."""

    code: int
    reply: str


class DeliveryError(Exception):
    """A message was not (known to be) delivered. ``str()`` is one line: the reason, with the
    server's reply when there was one; never the password.

    ``code`` is the server's reply code, if any; ``stage`` the step that failed: ``connect``
    (including TLS and authentication), ``mail`` (MAIL FROM), ``rcpt`` (RCPT TO) or ``data``."""

    kind: ClassVar[str] = "error"
    """For statuses and metrics: ``permanent``, ``temporary``, ``channel`` or ``unknown``."""

    def __init__(self, reason: str, *, code: int | None = None, stage: Stage = "connect") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.stage: Stage = stage


class PermanentFailure(DeliveryError):
    """Refused for good (5xx, or impossible on this server): do not retry this message."""

    kind = "permanent"


class TemporaryFailure(DeliveryError):
    """Deferred (4xx other than 421): retry this message later, alone."""

    kind = "temporary"


class ChannelUnavailable(TemporaryFailure):
    """The server cannot take mail now (unreachable, refused, timed out, connection lost, 421,
    TLS or authentication failed): pause the whole channel, then retry."""

    kind = "channel"


class UnknownOutcome(ChannelUnavailable):
    """The connection was lost (or timed out) after ``DATA``: the message may have been
    delivered. Retry it; its Message-ID lets the receiver drop a repeat."""

    kind = "unknown"


# -- configuration --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SmtpServer:
    """Where mail goes, from ``NOTIFY_SMTP_URL``. ``str()`` and ``repr()`` show no password
    (and ``str()`` no user)."""

    host: str
    port: int
    implicit_tls: bool = False
    username: str | None = None
    password: SecretStr | None = None

    @classmethod
    def from_url(cls, url: str | SecretStr) -> SmtpServer:
        """Parse ``smtp://[user:password@]host[:port]`` (port 25) or ``smtps://…`` (465).
        User and password are percent-decoded. ``ValueError`` names what is wrong, never
        repeating the URL."""
        raw = url.get_secret_value() if isinstance(url, SecretStr) else url
        try:
            parts = urlsplit(raw.strip())
            port = parts.port
        except ValueError:
            raise ValueError(f"the SMTP URL is not of the form {_URL_SHAPE}") from None
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            raise ValueError(f"the SMTP URL must start with smtp:// or smtps:// ({_URL_SHAPE})")
        if not parts.hostname:
            raise ValueError(f"the SMTP URL names no host ({_URL_SHAPE})")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"the SMTP URL has something after the host and port ({_URL_SHAPE})")
        if port == 0:
            raise ValueError("the SMTP URL's port must be 1 to 65535")
        username = unquote(parts.username) if parts.username else None
        password = SecretStr(unquote(parts.password)) if parts.password else None
        if password is not None and username is None:
            raise ValueError("the SMTP URL has a password but no user")
        return cls(
            host=parts.hostname,
            port=port or _DEFAULT_PORTS[scheme],
            implicit_tls=scheme == "smtps",
            username=username,
            password=password,
        )

    def __str__(self) -> str:
        scheme = "smtps" if self.implicit_tls else "smtp"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


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

    def __init__(self, client: aiosmtplib.SMTP) -> None:
        self.client = client
        self.idle_since = time.monotonic()


class _LostBeforeData(ChannelUnavailable):
    """The connection was lost before the server answered MAIL FROM: nothing was taken."""


class EmailChannel:
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

    def __repr__(self) -> str:
        return f"<EmailChannel {self.server} connections={len(self._open)}>"

    @property
    def connections(self) -> int:
        """Connections open now (idle or sending)."""
        return len(self._open)

    @property
    def in_flight(self) -> int:
        """Sends holding a connection now (at most ``options.connections``)."""
        return self._in_flight

    async def __aenter__(self) -> EmailChannel:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def send(self, mail: Mail) -> Delivered:
        """Deliver ``mail``: ``Delivered``, or a ``DeliveryError`` (see the module's doc).
        Waits for a free connection when ``options.connections`` sends are in flight."""
        async with self._slots:
            if self._closed:
                raise ChannelUnavailable(f"{self.description}: the channel is closed")
            self._in_flight += 1
            try:
                return await self._send(mail)
            finally:
                self._in_flight -= 1

    async def check(self) -> None:
        """Whether the server answers now: NOOP on an idle connection, or a new connection
        (kept for the next send). Raises ``ChannelUnavailable`` if not."""
        async with self._slots:
            if self._closed:
                raise ChannelUnavailable(f"{self.description}: the channel is closed")
            idle = self._take_idle()
            if idle is not None and await self._answers(idle):
                return
            fresh = await self._connect()
            if not await self._answers(fresh):
                raise ChannelUnavailable(f"{self.description}: no answer to NOOP")

    async def _answers(self, connection: _Connection) -> bool:
        """NOOP on ``connection``: True (and back to the pool) if answered, else closed."""
        try:
            await connection.client.noop()
        except (aiosmtplib.SMTPException, OSError):
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
            raise ChannelUnavailable(exc.reason, stage=exc.stage) from None

    async def _on(self, connection: _Connection, mail: Mail) -> Delivered:
        """One transaction on ``connection``, which goes back to the pool if it is still
        usable, and is closed otherwise."""
        try:
            delivered = await self._transaction(connection.client, mail)
        except DeliveryError:
            self._release(connection)
            raise
        except BaseException:  # cancelled, or a bug: the session's state is unknown
            self._discard(connection)
            raise
        self._release(connection)
        return delivered

    async def _transaction(self, client: aiosmtplib.SMTP, mail: Mail) -> Delivered:
        if mail.smtputf8 and not client.supports_extension("smtputf8"):
            raise PermanentFailure(
                f"{mail.recipient}: the local part is not ASCII and {self.description} does "
                "not offer SMTPUTF8",
                stage="mail",
            )
        data = mail.as_bytes()
        encoding = "utf-8" if mail.smtputf8 else "ascii"
        options = []
        if mail.smtputf8:
            # RFC 6531: the headers are UTF-8 (the body is 7-bit quoted-printable).
            options.append("SMTPUTF8")
            if client.supports_extension("8bitmime"):
                options.append("BODY=8BITMIME")
        if client.supports_extension("size"):
            options.insert(0, f"SIZE={len(data)}")
        stage: Stage = "mail"
        # Each step's replies within the timeout: one deadline moved on at each step, rather
        # than aiosmtplib's timer per reply (``timeout=None``), a tenth of a send's cost.
        within = self.options.timeout
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(within) as deadline:
                await client.mail(mail.sender, options=options, encoding=encoding, timeout=None)
                stage = "rcpt"
                deadline.reschedule(loop.time() + within)
                # One recipient: its refusal is raised here (``sendmail`` would return a
                # refusal of some recipients in a dict, and raise only when all are refused).
                await client.rcpt(mail.recipient, encoding=encoding, timeout=None)
                stage = "data"
                deadline.reschedule(loop.time() + within)
                response = await client.data(data, timeout=None)
        except aiosmtplib.SMTPResponseException as exc:
            await self._reset(client)
            raise self._refused(exc, stage, mail) from None
        except ValueError as exc:  # an address aiosmtplib will not put on a command line
            await self._reset(client)
            raise PermanentFailure(
                f"{self.description}: cannot send to {mail.recipient}: {_one_line(str(exc))}",
                stage=stage,
            ) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            client.close()
            lost = "no reply in time" if isinstance(exc, TimeoutError) else "connection lost"
            if stage == "data":
                raise UnknownOutcome(
                    self._reason(f"{lost} after DATA, the outcome is unknown", exc), stage=stage
                ) from None
            if stage == "mail" and not isinstance(exc, TimeoutError):
                raise _LostBeforeData(self._reason(lost, exc), stage=stage) from None
            raise ChannelUnavailable(self._reason(lost, exc), stage=stage) from None
        return Delivered(response.code, _one_line(response.message))

    def _refused(
        self, exc: aiosmtplib.SMTPResponseException, stage: Stage, mail: Mail
    ) -> DeliveryError:
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
            return ChannelUnavailable(reason, code=code, stage=stage)
        if 400 <= code < 500:
            return TemporaryFailure(reason, code=code, stage=stage)
        if 500 <= code < 600:
            return PermanentFailure(reason, code=code, stage=stage)
        if stage == "data":  # not a reply at all: the session is out of step
            return UnknownOutcome(reason, code=code, stage=stage)
        return ChannelUnavailable(reason, code=code, stage=stage)

    async def _reset(self, client: aiosmtplib.SMTP) -> None:
        """RSET after a refusal, so the session can carry the next message; a session that
        cannot be reset is closed."""
        if not client.is_connected:
            return
        try:
            await client.rset()
        except (aiosmtplib.SMTPException, OSError):
            client.close()

    # -- connections ----------------------------------------------------------------------

    async def _connect(self) -> _Connection:
        """A new connection: TCP (TLS for smtps), EHLO, STARTTLS, EHLO, AUTH, within
        ``options.timeout`` in all; ``ChannelUnavailable`` if any step fails."""
        server, options = self.server, self.options
        client = aiosmtplib.SMTP(
            hostname=server.host,
            port=server.port,
            use_tls=server.implicit_tls,
            start_tls=False,
            tls_context=options.tls_context,
            local_hostname=options.local_hostname,
            timeout=options.timeout,
        )
        try:
            async with asyncio.timeout(options.timeout):
                await client.connect()
                await self._secure(client)
                await self._authenticate(client)
        except ChannelUnavailable:
            client.close()
            raise
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            # TimeoutError (asyncio.timeout's) is an OSError.
            client.close()
            raise ChannelUnavailable(self._reason("cannot connect", exc)) from None
        except BaseException:
            client.close()
            raise
        connection = _Connection(client)
        self._open.add(connection)
        logger.debug("%s: connection opened (%d open)", self.description, len(self._open))
        return connection

    async def _secure(self, client: aiosmtplib.SMTP) -> None:
        try:
            await client.ehlo()
        except aiosmtplib.SMTPHeloError:
            await client.helo()  # an SMTP (not ESMTP) server: no STARTTLS, AUTH, SMTPUTF8
        if self.server.implicit_tls:
            return
        if client.supports_extension("starttls"):
            await client.starttls()
            await client.ehlo()  # RFC 3207: forget what was said before TLS
        elif self.options.require_tls:
            raise ChannelUnavailable(
                f"{self.description} does not offer STARTTLS, and TLS is required"
            )

    async def _authenticate(self, client: aiosmtplib.SMTP) -> None:
        server = self.server
        if server.username is None:
            return
        if client.get_transport_info("sslcontext") is None:
            raise ChannelUnavailable(
                f"{self.description} offers no TLS: the password is not sent in clear"
            )
        try:
            await client.login(
                server.username,
                server.password.get_secret_value() if server.password is not None else "",
            )
        except aiosmtplib.SMTPResponseException as exc:
            raise ChannelUnavailable(
                self._redact(
                    f"{self.description}: authentication as {server.username!r} failed: "
                    f"{exc.code} {_one_line(exc.message)}"
                ),
                code=exc.code,
            ) from None

    def _take_idle(self) -> _Connection | None:
        """The most recently used idle connection; those the server closed, or idle too
        long, are closed on the way."""
        now, limit = time.monotonic(), self.options.idle_timeout
        usable = []
        for connection in self._idle:
            if connection.client.is_connected and now - connection.idle_since < limit:
                usable.append(connection)
            else:
                self._discard(connection)
        self._idle = usable
        return usable.pop() if usable else None

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
        with contextlib.suppress(aiosmtplib.SMTPException, OSError):
            await connection.client.quit(timeout=min(self.options.timeout, 5.0))
        self._discard(connection)

    # -- reasons --------------------------------------------------------------------------

    def _reason(self, what: str, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError):
            detail = f"timed out after {self.options.timeout:g} s"
        elif isinstance(exc, aiosmtplib.SMTPResponseException):
            detail = f"{exc.code} {exc.message}"
        elif isinstance(exc, aiosmtplib.SMTPException):
            detail = exc.message
        else:
            detail = str(exc) or type(exc).__name__
        return self._redact(f"{self.description}: {what}: {_one_line(detail)}")

    def _redact(self, text: str) -> str:
        """``text`` without the password, whatever a server or library put in it."""
        password = self.server.password
        secret = password.get_secret_value() if password is not None else ""
        return text.replace(secret, "**********") if secret else text


def _one_line(text: str) -> str:
    return " ".join(text.split())
