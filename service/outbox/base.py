"""What an outbox holds and does, whichever store keeps it: SQLite (``sqlite.SqliteOutbox``, one
machine) or Redis (``redis.RedisOutbox``, shared by the API processes and workers)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

__all__ = [
    "HISTORY",
    "Attempt",
    "Delivery",
    "DeliveryState",
    "DeliveryStatus",
    "NotificationFields",
    "Outbox",
    "Outcome",
    "Pause",
    "for_channel",
    "group_members",
    "group_size",
    "history_of",
    "is_group",
    "notification_fields",
    "notification_group",
    "notification_line",
    "notification_rows",
]

DeliveryStatus = Literal["queued", "retrying", "delivered", "dead"]
_ENCODER = json.JSONEncoder()
"""``json.dumps``'s defaults (ASCII, one line), its encoder made once."""

NotificationFields = tuple[float, str, str, str, str | None, str | None, tuple[str, ...] | None]
"""``(accepted_at, notification id, email, message, q, subject, channels)``: what every
channel's delivery of one notification is made of (``q``, the request's ``?q=``, is in the
webhooks' payload; ``subject`` None is the configured one; ``channels`` None is every
configured channel)."""


def notification_line(
    notification_id: str,
    email: str,
    message: str,
    q: str | None,
    accepted_at: float,
    subject: str | None = None,
    channels: Sequence[str] | None = None,
) -> str:
    """How a notification goes into the outbox: ``[accepted_at, id, email, message, q]`` as
    ASCII JSON, on one line (the intake's record line, spooled as it is), followed by
    ``subject, channels`` when the request gave either. Each string is encoded on its own
    (0.6 µs; encoding the list makes an encoder each time: 1.6 µs)."""
    text = _ENCODER.encode
    query = "null" if q is None else text(q)
    head = f"[{accepted_at!r},{text(notification_id)},{text(email)},{text(message)},{query}"
    if subject is None and channels is None:
        return head + "]\n"
    shaped = "null" if subject is None else text(subject)
    named = "null" if channels is None else text(list(channels))
    return f"{head},{shaped},{named}]\n"


def notification_fields(line: str) -> NotificationFields:
    """The fields of a ``notification_line`` (one of an earlier version, without ``subject``
    and ``channels``, too)."""
    accepted_at, notification_id, email, message, q, *shaped = json.loads(line)
    subject, channels = shaped if shaped else (None, None)
    return (
        float(accepted_at),
        notification_id,
        email,
        message,
        q,
        subject,
        None if channels is None else tuple(channels),
    )


def notification_group(lines: Sequence[str]) -> str:
    """Notifications that enter the outbox together, in one transaction (one request's
    recipients): their ``notification_line``s as one line, a JSON array of them followed by
    their number (what ``group_size`` reads without decoding them)."""
    return "[" + ",".join(line[:-1] for line in lines) + f",{len(lines)}]\n"


def is_group(line: str) -> bool:
    """Whether ``line`` is a ``notification_group``."""
    return line.startswith("[[")


def group_members(line: str) -> str:
    """The notification lines of a group, as the JSON text between its brackets (without its
    number)."""
    return line[1 : line.rindex(",")]


def group_size(line: str) -> int:
    """How many notifications ``line`` holds: a group's number, else 1."""
    return int(line[line.rindex(",") + 1 : -2]) if is_group(line) else 1


def notification_rows(line: str) -> list[NotificationFields]:
    """The fields of each notification of ``line``: a ``notification_line`` or a group."""
    if not is_group(line):
        return [notification_fields(line)]
    members = json.loads(line)[:-1]
    return [notification_fields(json.dumps(member)) for member in members]


def for_channel(fields: NotificationFields, channel: str) -> bool:
    """Whether the notification of ``fields`` goes to ``channel``."""
    channels = fields[6]
    return channels is None or channel in channels


@dataclass(frozen=True, slots=True)
class Delivery:
    """A claimed delivery: send it, then report what happened."""

    id: str
    channel: str
    recipient: str
    message: str
    q: str | None
    accepted_at: float
    """When the notification was accepted (never changes)."""
    since: float
    """When this delivery's time (``NOTIFY_DELIVERY_MAX_AGE``) began: ``accepted_at``, or
    when an operator last retried it."""
    attempts: int
    subject: str | None = None
    """The notification's own subject (``"subject"`` in its request), or None for the
    configured default (``NOTIFY_EMAIL_SUBJECT``)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an attempt at a claimed delivery came to, for ``Outbox.settle`` to record."""

    delivery: Delivery
    status: Literal["delivered", "retrying", "dead"]
    error: str | None = None
    next_attempt_at: float | None = None
    """When a ``retrying`` delivery is due again."""
    at: float = field(default_factory=time.time)
    """When it was decided (for ``delivered``: when the receiver took it)."""


HISTORY = 10
"""Attempts a delivery's history keeps, the latest (``Outbox.settle`` drops the oldest)."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt at a delivery, as ``Outbox.settle`` recorded it."""

    at: float
    """When it ended (``time.time()``)."""
    outcome: Literal["delivered", "retrying", "dead"]
    error: str | None


@dataclass(frozen=True, slots=True)
class DeliveryState:
    """Where one delivery stands (``GET /notifications/{id}``'s ``channels``)."""

    id: str
    channel: str
    status: DeliveryStatus
    attempts: int
    last_error: str | None
    accepted_at: float
    next_attempt_at: float | None
    delivered_at: float | None
    recipient: str = ""
    """The notification's email."""
    history: tuple[Attempt, ...] = ()
    """Its last ``HISTORY`` attempts, oldest first."""


def history_of(text: str | None) -> tuple[Attempt, ...]:
    """A history as an outbox keeps it: a JSON array of ``[at, outcome, error]``."""
    if not text:
        return ()
    return tuple(Attempt(float(at), outcome, error) for at, outcome, error in json.loads(text))


@dataclass(frozen=True, slots=True)
class Pause:
    """A channel paused by a dispatcher (``Outbox.pause``): until when, and why."""

    until: float
    error: str

    def over(self, state: DeliveryState, now: float) -> DeliveryState:
        """``state`` as it stands under this pause: a pending delivery due before the pause
        ends waits for it, ``retrying`` at its end (the probe's time), with the channel's
        error. A pause that is over changes nothing."""
        if state.status not in ("queued", "retrying") or self.until <= now:
            return state
        if state.next_attempt_at is not None and state.next_attempt_at >= self.until:
            return state
        return replace(state, status="retrying", next_attempt_at=self.until, last_error=self.error)


class Outbox(Protocol):
    """Pending deliveries: added in batches, claimed with a lease, finished once.

    ``settle`` is a dispatcher's one call per turn: it records the outcomes of the attempts
    that ended since the last turn and claims deliveries for the freed connections, in one
    transaction (SQLite) or one script (Redis)."""

    @property
    def path(self) -> object:
        """What errors and ``/readyz`` call it."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def add(self, lines: Sequence[str], channels: Sequence[str]) -> None:
        """Add one delivery per channel of ``channels`` for each notification line (see
        ``notification_line``), all in one transaction; a notification already there for a
        channel is kept as it is."""

    async def settle(
        self, channel: str, finished: Sequence[Outcome], claim: int = 0
    ) -> list[Delivery]:
        """Record ``finished`` (outcomes of this holder's deliveries of ``channel``), each also
        in its delivery's history (the last ``HISTORY``), then lease up to ``claim`` due
        deliveries of ``channel`` to this holder, oldest first."""

    async def release(self, channel: str, deliveries: Sequence[Delivery]) -> None:
        """Give back the leases of ``deliveries`` of ``channel`` (claimed by this holder, not
        attempted): due again at their time, for any holder, their attempts unchanged."""

    async def bury(self, channel: str, error: str) -> int: ...

    async def pause(self, channel: str, until: float, error: str) -> None:
        """Record that ``channel`` is paused until ``until`` (``time.time()``) for ``error``:
        ``states`` shows its pending deliveries waiting for that (see ``Pause.over``)."""

    async def resume(self, channel: str) -> None:
        """Record that ``channel`` delivers again."""

    async def pauses(self) -> dict[str, Pause]:
        """The pauses recorded now, by channel (what ``/readyz`` shows of the channels another
        process delivers)."""

    async def disable(self, channel: str, reason: str) -> None:
        """Record that ``channel`` is disabled (its receiver said it is gone) for ``reason``:
        every dispatcher of it, in any process sharing the outbox, stops delivering it, and
        ``/readyz`` shows it, until ``enable``."""

    async def enable(self, channels: Sequence[str]) -> list[str]:
        """Drop the record of those of ``channels`` that are disabled; their names."""

    async def disabled(self) -> dict[str, str]:
        """The channels disabled now, each with the reason."""

    async def states(self, notification_id: str) -> list[DeliveryState]:
        """Every channel's delivery of one notification, as it stands (pauses included), with
        its history."""

    async def listed(
        self, status: DeliveryStatus, *, limit: int, after: str | None
    ) -> list[DeliveryState]: ...

    async def retry_dead(self, notification_id: str) -> int: ...

    async def pending(self) -> int: ...

    async def next_due(self, channel: str) -> float | None: ...

    async def forget_finished(self, older_than: float) -> None:
        """Drop what was delivered before ``older_than``."""
