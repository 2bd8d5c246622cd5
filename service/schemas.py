"""Request and response models."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ACKNOWLEDGEMENT",
    "DEFAULT_MESSAGE",
    "Acknowledgement",
    "ErrorBody",
    "Health",
    "NotificationBody",
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


ACKNOWLEDGEMENT = b'{"message":"Notification sent in the background"}'


class ErrorBody(BaseModel):
    """An error that is not a validation error."""

    detail: str


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
