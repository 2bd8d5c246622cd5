"""Request and response models."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.records import rfc3339
from service.status import NotificationStatus

__all__ = [
    "ACKNOWLEDGEMENT",
    "DEFAULT_MESSAGE",
    "Acknowledgement",
    "ErrorBody",
    "Health",
    "NotificationBody",
    "NotificationStatusOut",
    "Readiness",
    "SinkState",
]

DEFAULT_MESSAGE = "some notification"


class NotificationBody(BaseModel):
    """The optional JSON body of ``POST /send-notification/{email}``."""

    model_config = ConfigDict(extra="forbid")

    message: str = Field(default=DEFAULT_MESSAGE, description="The text to log.")


class Acknowledgement(BaseModel):
    """The guide's response body, unchanged."""

    message: str = Field(examples=["Notification sent in the background"])


ACKNOWLEDGEMENT = "Notification sent in the background"
"""The guide's answer to ``POST``, in its ``message`` field."""


class ErrorBody(BaseModel):
    """An error that is not a validation error."""

    detail: str


class NotificationStatusOut(BaseModel):
    """``GET /notifications/{id}``: what happened to one accepted notification."""

    id: str
    status: Literal["queued", "written", "failed"] = Field(
        description="queued: waiting for its write; written: in the log; failed: its last "
        "write failed and it is kept and retried (error says why)."
    )
    accepted_at: str = Field(description="RFC 3339, UTC.")
    written_at: str | None = Field(description="RFC 3339, UTC; null until written.")
    attempts: int = Field(description="Writes tried so far.")
    error: str | None

    @classmethod
    def of(cls, status: NotificationStatus) -> NotificationStatusOut:
        return cls(
            id=status.id,
            status=status.status,
            accepted_at=rfc3339(status.accepted_at),
            written_at=None if status.written_at is None else rfc3339(status.written_at),
            attempts=status.attempts,
            error=status.error,
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
