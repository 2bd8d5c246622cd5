"""Request and response models."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from config.settings import ENCODED_WORD
from service.emails import Email
from service.outbox.base import Attempt, DeliveryState
from service.records import rfc3339
from service.status import NotificationStatus

__all__ = [
    "ACKNOWLEDGEMENT",
    "DEFAULT_BODY",
    "DEFAULT_MESSAGE",
    "MANY_ACCEPTED",
    "MAX_SUBJECT_LENGTH",
    "Acknowledgement",
    "ActivityOut",
    "AttemptOut",
    "ChannelState",
    "ChannelStatusOut",
    "EnabledOut",
    "ErrorBody",
    "Health",
    "ManyAccepted",
    "ManyNotificationsBody",
    "NotificationBody",
    "NotificationStatusOut",
    "Readiness",
    "RetriedOut",
    "SinkState",
    "ValidationErrors",
]

DEFAULT_MESSAGE = "some notification"
MAX_SUBJECT_LENGTH = 200
"""The longest ``subject`` a request may give, in characters."""


class NotificationBody(BaseModel):
    """The optional JSON body of ``POST /send-notification/{email}``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"message": "Your order has shipped"},
                {
                    "message": "Your order has shipped",
                    "subject": "Order 1042",
                    "channels": ["email"],
                },
            ]
        },
    )

    message: str = Field(default=DEFAULT_MESSAGE, description="The text to log.")
    subject: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_SUBJECT_LENGTH,
        description="The email's Subject, the Apprise title and the webhook payload's "
        "`subject` (default: NOTIFY_EMAIL_SUBJECT). Line breaks and other unprintable "
        "characters are escaped (`\\n`): it stays one line. No RFC 2047 encoded word "
        "(`=?utf-8?q?…?=`).",
    )
    channels: list[Annotated[str, StringConstraints(min_length=1, max_length=64)]] | None = Field(
        default=None,
        min_length=1,
        description="The delivery channels to use, by name (`email`, a webhook's or an Apprise "
        "URL's name; `GET /readyz` lists them); default: every configured channel. `log` "
        "alone: the log line only. The log line is always written.",
    )

    @field_validator("subject")
    @classmethod
    def _no_encoded_word(cls, subject: str | None) -> str | None:
        """422 for an RFC 2047 encoded word: mail readers would decode it (a line break in it
        could start another header), so the subject would not be the text given."""
        if subject is not None and ENCODED_WORD.search(subject):
            raise ValueError(
                "must not hold an RFC 2047 encoded word (=?charset?q?…?=): mail readers "
                "would decode it"
            )
        return subject

    @property
    def shaped(self) -> bool:
        """Whether the body gave a subject or channels."""
        return self.subject is not None or self.channels is not None


DEFAULT_BODY = NotificationBody()
"""The body of a request that sent none."""


class ManyNotificationsBody(NotificationBody):
    """The JSON body of ``POST /notifications``: one notification to each of ``to``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "to": ["ada@example.com", "grace@example.com"],
                    "message": "The build is green again",
                    "subject": "CI",
                    "channels": ["email"],
                }
            ]
        },
    )

    to: list[Email] = Field(
        min_length=1,
        description="The recipients (at most NOTIFY_MAX_RECIPIENTS). An address given twice "
        "gets one notification (`duplicates` in the answer says which entries repeated).",
    )


class ManyAccepted(BaseModel):
    """``POST /notifications``: every recipient accepted."""

    message: str = Field(examples=["Notifications sent in the background"])
    ids: list[str] = Field(
        description="One per entry of `to`, in order: the notification's id "
        "(`GET /notifications/{id}`); a repeated address has its first entry's."
    )
    duplicates: list[int] = Field(
        description="Indexes of the entries of `to` that repeat an earlier address (after "
        "normalization): kept once."
    )


MANY_ACCEPTED = "Notifications sent in the background"


class Acknowledgement(BaseModel):
    """The guide's response body, unchanged."""

    message: str = Field(examples=["Notification sent in the background"])


ACKNOWLEDGEMENT = "Notification sent in the background"
"""The guide's answer to ``POST``, in its ``message`` field."""


class ErrorBody(BaseModel):
    """An error that is not a validation error."""

    detail: str


class ValidationProblem(BaseModel):
    """One problem of a refused request, as FastAPI reports validation errors."""

    type: str
    loc: list[str | int] = Field(description="Where: `body`, then the field and index.")
    msg: str
    input: Any = None


class ValidationErrors(BaseModel):
    """A 422: every problem found."""

    detail: list[ValidationProblem]


class NotificationStatusOut(BaseModel):
    """``GET /notifications/{id}``: what happened to one accepted notification."""

    id: str
    email: str | None = Field(description="Where it goes (null if no longer known).")
    status: Literal["queued", "written", "failed", "unknown"] = Field(
        description="queued: waiting for its write; written: in the log; failed: its last "
        "write failed and it is kept and retried (error says why); unknown: the outbox has its "
        "deliveries (under channels) but its log status is no longer kept."
    )
    accepted_at: str = Field(description="RFC 3339, UTC.")
    written_at: str | None = Field(description="RFC 3339, UTC; null until written.")
    attempts: int = Field(description="Writes tried so far.")
    error: str | None
    channels: dict[str, ChannelStatusOut] = Field(
        default_factory=dict,
        description="The state on each channel it goes to, by the channel's name: ``log``, "
        "``email``, a webhook URL's name (else ``webhook-<8 hex>``), an Apprise URL's name "
        "(/readyz lists them).",
    )

    @classmethod
    def of_deliveries(
        cls, notification_id: str, deliveries: list[DeliveryState]
    ) -> NotificationStatusOut:
        """What the outbox knows of a notification whose log status is no longer kept."""
        return cls(
            id=notification_id,
            email=deliveries[0].recipient or None,
            status="unknown",
            accepted_at=rfc3339(min(delivery.accepted_at for delivery in deliveries)),
            written_at=None,
            attempts=0,
            error=None,
            channels={delivery.channel: ChannelStatusOut.of(delivery) for delivery in deliveries},
        )

    @classmethod
    def of(
        cls,
        status: NotificationStatus,
        deliveries: list[DeliveryState] | None = None,
        channels_on: Iterable[str] = (),
    ) -> NotificationStatusOut:
        """``status`` in the log and ``deliveries`` in the outbox. Until the outbox has its
        deliveries (all of a notification's come in one transaction), each channel it goes to
        is ``queued`` (accepted, on its way into the outbox): those its request named, when
        known here, else every one of ``channels_on``."""
        channels = {
            "log": ChannelStatusOut(
                status=status.status,
                attempts=status.attempts,
                last_error=status.error,
                next_attempt_at=None,
                delivered_at=None if status.written_at is None else rfc3339(status.written_at),
            )
        }
        for delivery in deliveries or []:
            channels[delivery.channel] = ChannelStatusOut.of(delivery)
        if not deliveries:
            on_its_way = channels_on if status.channels is None else status.channels
            for channel in on_its_way:
                channels[channel] = ChannelStatusOut.on_its_way()
        return cls(
            id=status.id,
            email=status.email or None,
            status=status.status,
            accepted_at=rfc3339(status.accepted_at),
            written_at=None if status.written_at is None else rfc3339(status.written_at),
            attempts=status.attempts,
            error=status.error,
            channels=channels,
        )


class ChannelStatusOut(BaseModel):
    """One channel's delivery of a notification."""

    status: Literal["queued", "written", "failed", "retrying", "delivered", "dead"] = Field(
        description="log: queued, written or failed (as the top-level status); email and "
        "webhooks: queued, "
        "retrying (a temporary failure; next_attempt_at says when), delivered, or dead (failed "
        "for good or ran out of time; POST /notifications/{id}/retry sends it again)."
    )
    attempts: int
    last_error: str | None
    next_attempt_at: str | None = Field(description="RFC 3339, UTC; while pending.")
    delivered_at: str | None = Field(description="RFC 3339, UTC.")
    history: list[AttemptOut] = Field(
        default_factory=list,
        description="Email and webhooks: the last attempts (at most 10), oldest first.",
    )

    @classmethod
    def on_its_way(cls) -> ChannelStatusOut:
        """A delivery accepted and not yet in the outbox (its batch is being written)."""
        return cls(
            status="queued",
            attempts=0,
            last_error=None,
            next_attempt_at=None,
            delivered_at=None,
        )

    @classmethod
    def of(cls, delivery: DeliveryState) -> ChannelStatusOut:
        return cls(
            status=delivery.status,
            attempts=delivery.attempts,
            last_error=delivery.last_error,
            next_attempt_at=None
            if delivery.next_attempt_at is None
            else rfc3339(delivery.next_attempt_at),
            delivered_at=None if delivery.delivered_at is None else rfc3339(delivery.delivered_at),
            history=[AttemptOut.of(attempt) for attempt in delivery.history],
        )


class AttemptOut(BaseModel):
    """One attempt at a delivery: when it ended, how, and the error."""

    at: str = Field(description="RFC 3339, UTC.")
    outcome: Literal["delivered", "retrying", "dead"] = Field(
        description="delivered; retrying: a temporary failure; dead: failed for good."
    )
    error: str | None

    @classmethod
    def of(cls, attempt: Attempt) -> AttemptOut:
        return cls(at=rfc3339(attempt.at), outcome=attempt.outcome, error=attempt.error)


class ActivityOut(BaseModel):
    """A page of the activity log, newest first; ``next`` is the ``after`` of the next page
    (null: the last)."""

    items: list[NotificationStatusOut]
    next: str | None


class RetriedOut(BaseModel):
    id: str
    retried: int = Field(description="Deliveries made due again.")


class EnabledOut(BaseModel):
    """``POST /webhooks/enable``: the webhook channels that were disabled and now deliver."""

    enabled: list[str]


class ChannelState(BaseModel):
    """A delivery channel in ``/readyz``: failing or not (the API accepts either way)."""

    name: str
    error: str | None
    target: str | None = Field(
        default=None,
        description="Where it delivers: the SMTP server, or the webhook URL without its user, "
        "password or query.",
    )
    disabled: bool = Field(
        default=False,
        description="A webhook URL that answered 410 Gone: its deliveries are dead until "
        "POST /webhooks/enable or a restart.",
    )


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class SinkState(BaseModel):
    name: str
    running: bool
    open: bool
    queued: int
    capacity: int
    error: str | None


class Readiness(BaseModel):
    status: str = Field(examples=["ready", "unavailable"])
    reasons: list[str]
    sinks: list[SinkState]
    channels: list[ChannelState] = Field(
        default_factory=list,
        description="Delivery channels (email, webhooks); a failing or disabled one does not "
        "make the service unready: the outbox holds the deliveries.",
    )
