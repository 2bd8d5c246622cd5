"""The email channel: each notification as one message, over SMTP, to its recipient.

``message`` builds the message (pure, the standard library's ``email``); ``smtp`` sends it
through a pool of kept-open connections and says how each send ended, as the channel outcomes
(``service.channels.base``) the dispatcher acts on. This module joins the two.
"""

from __future__ import annotations

from datetime import UTC, datetime

from config import Settings
from service.channels.base import Channel, Dead, Delivery
from service.channels.email.message import build_mail
from service.channels.email.smtp import SmtpOptions, SmtpPool

__all__ = ["EmailChannel", "from_settings"]


class EmailChannel(Channel):
    """The ``email`` channel: a delivery's message built and sent through ``pool``."""

    name = "email"

    def __init__(
        self,
        pool: SmtpPool,
        *,
        sender: str,
        subject: str,
        rate: float | None = None,
        min_concurrency: int = 1,
    ) -> None:
        self.pool = pool
        self.target = str(pool.server)
        # Connecting, then MAIL, RCPT and DATA, each within the timeout; a stale idle
        # connection found out costs one more step and one more connect.
        self.attempt_timeout = 6 * pool.options.timeout
        self.concurrency = pool.options.connections
        self.min_concurrency = min(min_concurrency, self.concurrency)
        self.rate = rate
        self._sender = sender
        self._subject = subject

    async def send(self, delivery: Delivery) -> None:
        try:
            mail = build_mail(
                delivery.id,
                delivery.recipient,
                delivery.message,
                sender=self._sender,
                subject=delivery.subject or self._subject,
                date=datetime.fromtimestamp(delivery.accepted_at, tz=UTC),
            )
        except ValueError as exc:
            raise Dead(f"cannot build the message: {exc}") from None
        await self.pool.send(mail)

    async def aclose(self) -> None:
        await self.pool.close()


def from_settings(settings: Settings) -> list[Channel]:
    """The email channel of ``settings`` (``NOTIFY_SMTP_*``), if email is on."""
    server = settings.smtp_server
    if server is None or settings.smtp_from is None:
        return []
    pool = SmtpPool(
        server,
        SmtpOptions(
            connections=settings.smtp_connections,
            timeout=settings.smtp_timeout,
            require_tls=settings.smtp_require_tls,
        ),
    )
    return [
        EmailChannel(
            pool,
            sender=settings.smtp_from,
            subject=settings.email_subject,
            rate=settings.smtp_rate,
            min_concurrency=settings.smtp_connections_min,
        )
    ]
