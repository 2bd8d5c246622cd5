"""A real SMTP server for the tests: ``aiosmtpd``'s ``Controller`` (its own thread and event
loop) on a free loopback port, with a handler that records every message and can be told what
to answer: a reply to RCPT TO for one address (``451``, ``550``, ``421``…), a reply to the
data, to hold the data until released, or to drop the connection once the data is in.

TLS with a certificate made by ``trustme`` for 127.0.0.1: STARTTLS (``starttls=``) or TLS from
the first byte (``implicit_tls=``); AUTH (LOGIN, PLAIN) with ``auth=(user, password)``, which
aiosmtpd offers only over TLS. ``pipelining=True`` offers PIPELINING (RFC 2920) in the EHLO
reply: aiosmtpd reads commands one line at a time whether they come together or not.

Nothing here sleeps: the tests wait for what the server saw (``wait_for``), with a deadline.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, message_from_string, policy
from email.message import EmailMessage
from typing import Any, cast
from urllib.parse import quote

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.support.server import HOST, free_port

__all__ = ["Received", "Recorder", "SmtpTestServer", "smtp_server"]

_WAIT_S = 5.0


@dataclass(frozen=True)
class Received:
    """One message the server accepted (or took before it dropped the connection)."""

    connection: int
    """Which connection brought it: 1 for the first that said EHLO, 2 for the next…"""
    mail_from: str
    rcpt_tos: tuple[str, ...]
    mail_options: tuple[str, ...]
    content: bytes
    tls: bool
    authenticated: bool

    def parsed(self) -> EmailMessage:
        """The message as a reader gets it (headers in UTF-8 when it came with SMTPUTF8)."""
        if "SMTPUTF8" in self.mail_options:
            return message_from_string(self.content.decode(), policy=policy.default)
        return message_from_bytes(self.content, policy=policy.default)


class Recorder:
    """The server's handler: records, and answers as told (set the attributes before a send;
    the server's thread reads them)."""

    def __init__(self, *, pipelining: bool = False) -> None:
        self.pipelining = pipelining
        """Offer PIPELINING in the EHLO reply."""
        self.rcpt_replies: dict[str, str] = {}
        """RCPT TO ``address`` gets this reply instead of 250 (e.g. ``550 5.1.1 unknown``)."""
        self.data_reply: str | None = None
        """The reply to the data instead of 250 (e.g. ``451 4.3.0 try again later``)."""
        self.drop_after_data = False
        """Record the message, then drop the connection without a reply."""
        self.hold_data = False
        """Wait, before replying to the data, until ``release`` is called."""
        self.messages: list[Received] = []
        self.held = 0
        self.most_held = 0
        self._connections: dict[SMTP, int] = {}
        self._changed = threading.Condition()
        self._release = asyncio.Event()  # used on the server's loop only
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def connections(self) -> int:
        """Connections that said EHLO (the controller's own start-up probe does not)."""
        with self._changed:
            return len(self._connections)

    def wait_for(self, condition: Callable[[Recorder], bool], timeout: float = _WAIT_S) -> bool:
        """Block (up to ``timeout`` s) until ``condition(self)``; call through
        ``asyncio.to_thread``."""
        with self._changed:
            return self._changed.wait_for(lambda: condition(self), timeout=timeout)

    def release(self) -> None:
        """Let held data through (and all data after it)."""
        self.hold_data = False
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._release.set)

    def drop_connections(self) -> None:
        """Close every connection from the server's side; returns once they are closed.

        Called straight from a test's coroutine it blocks that loop meanwhile, so the
        client cannot have seen the close when its next send begins."""
        assert self.loop is not None
        asyncio.run_coroutine_threadsafe(self._drop(), self.loop).result(timeout=_WAIT_S)

    async def _drop(self) -> None:
        servers = [server for server in self._connections if server.transport is not None]
        for server in servers:
            assert server.transport is not None
            server.transport.close()
        # aiosmtpd sets ``transport`` to None in connection_lost: wait for that, one loop
        # turn at a time (the closes are already scheduled).
        for _ in range(100_000):
            if all(server.transport is None for server in servers):
                return
            await asyncio.sleep(0)
        raise RuntimeError("the SMTP server's connections did not close")

    # -- aiosmtpd hooks (on the server's thread) ------------------------------------------

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: Any
    ) -> Any:
        session.host_name = hostname  # what aiosmtpd does itself when there is no hook
        with self._changed:
            self._connections.setdefault(server, len(self._connections) + 1)
            self._changed.notify_all()
        if self.pipelining:  # before the last line ("250 HELP"), which ends the reply
            responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = self.rcpt_replies.get(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.hold_data:
            with self._changed:
                self.held += 1
                self.most_held = max(self.most_held, self.held)
                self._changed.notify_all()
            try:
                await self._release.wait()
            finally:
                with self._changed:
                    self.held -= 1
        if self.data_reply is not None:
            return self.data_reply
        content = envelope.original_content or b""
        with self._changed:
            self.messages.append(
                Received(
                    connection=self._connections.get(server, 0),
                    mail_from=envelope.mail_from or "",
                    rcpt_tos=tuple(envelope.rcpt_tos),
                    mail_options=tuple(envelope.mail_options),
                    content=content,
                    tls=server.transport is not None
                    and server.transport.get_extra_info("sslcontext") is not None,
                    authenticated=bool(session.authenticated),
                )
            )
            self._changed.notify_all()
        if self.drop_after_data:
            cast(asyncio.Transport, server.transport).abort()
            await asyncio.Event().wait()  # cancelled by aiosmtpd when the connection is lost
        return "250 2.0.0 OK queued"


@dataclass
class SmtpTestServer:
    controller: Controller
    recorder: Recorder
    port: int
    scheme: str = "smtp"
    credentials: tuple[str, str] | None = field(default=None)

    def url(self, user: str | None = None, password: str | None = None) -> str:
        """The server's URL, with these credentials (percent-encoded) if given."""
        userinfo = ""
        if user is not None:
            userinfo = quote(user, safe="")
            if password is not None:
                userinfo += ":" + quote(password, safe="")
            userinfo += "@"
        return f"{self.scheme}://{userinfo}{HOST}:{self.port}"


def _authenticator(
    user: str, password: str
) -> Callable[[SMTP, Session, Envelope, str, Any], AuthResult]:
    expected = LoginPassword(user.encode(), password.encode())

    def authenticate(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = mechanism in ("LOGIN", "PLAIN") and data == expected
        return AuthResult(success=ok, handled=False)

    return authenticate


@contextmanager
def smtp_server(
    *,
    smtputf8: bool = True,
    starttls: ssl.SSLContext | None = None,
    implicit_tls: ssl.SSLContext | None = None,
    auth: tuple[str, str] | None = None,
    port: int | None = None,
    pipelining: bool = False,
) -> Iterator[SmtpTestServer]:
    """A running SMTP server on a free loopback port (or on ``port``), stopped at the end of
    the block."""
    recorder = Recorder(pipelining=pipelining)
    options: dict[str, Any] = {"enable_SMTPUTF8": smtputf8}
    if starttls is not None:
        options["tls_context"] = starttls
    if auth is not None:
        options["authenticator"] = _authenticator(*auth)
        options["auth_required"] = True
    controller: Controller | None = None
    for _ in range(5):  # the port was free a moment ago; another process may take it
        candidate = Controller(
            recorder,
            hostname=HOST,
            port=port or free_port(),
            ssl_context=implicit_tls,
            server_hostname="mail.test",
            ready_timeout=_WAIT_S,
            **options,
        )
        try:
            candidate.start()
        except OSError:
            continue
        controller = candidate
        break
    assert controller is not None, "no free port for the SMTP server"
    recorder.loop = controller.loop
    try:
        yield SmtpTestServer(
            controller,
            recorder,
            controller.port,
            scheme="smtps" if implicit_tls is not None else "smtp",
            credentials=auth,
        )
    finally:
        recorder.release()
        controller.stop()
