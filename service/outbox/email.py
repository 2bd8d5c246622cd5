"""Email as an outbox channel: a claimed delivery becomes one message, sent through the SMTP
pool; the pool's outcomes become the dispatcher's."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from service.mail import build_mail
from service.outbox.base import Delivery
from service.outbox.dispatcher import ChannelFailure, PermanentError, TemporaryError
from service.sinks.email import (
    ChannelUnavailable,
    EmailChannel,
    PermanentFailure,
    TemporaryFailure,
)

__all__ = ["email_sender"]


def email_sender(
    channel: EmailChannel, *, sender: str, subject: str
) -> Callable[[Delivery], Awaitable[None]]:
    """``send`` for the email dispatcher: build the message of ``delivery`` and send it."""

    async def send(delivery: Delivery) -> None:
        try:
            mail = build_mail(
                delivery.id,
                delivery.recipient,
                delivery.message,
                sender=sender,
                subject=subject,
                date=datetime.fromtimestamp(delivery.accepted_at, tz=UTC),
            )
        except ValueError as exc:
            raise PermanentError(f"cannot build the message: {exc}") from None
        try:
            await channel.send(mail)
        except ChannelUnavailable as exc:  # unreachable, 421, or an unknown outcome
            raise ChannelFailure(str(exc)) from None
        except TemporaryFailure as exc:
            raise TemporaryError(str(exc)) from None
        except PermanentFailure as exc:
            raise PermanentError(str(exc)) from None

    return send
