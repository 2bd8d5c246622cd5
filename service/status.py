"""Statuses and Idempotency-Keys: what they are, the ``Ledger`` protocol that claims keys and
reads statuses, and ``StatusStore``, one process's memory of the statuses it recorded.

A ``StatusStore`` is bounded in size and time: entries expire after a TTL and the oldest go
first when the bound is reached. It is one process's: what every process shares is a ledger,
``service.ledger.sqlite.SqliteLedger`` (the local backend, one machine) or
``service.redis.ledger.RedisLedger`` (Redis); each keeps a ``StatusStore`` for what its own
process accepted and has not yet shared.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from service.outbox.base import DeliveryState
from service.records import Kind

__all__ = [
    "LOG_STATUSES",
    "ActivityEntry",
    "ActivityQuery",
    "ActivityStatus",
    "BadCursor",
    "Fingerprint",
    "IdempotencyConflict",
    "Ledger",
    "NotificationStatus",
    "StatusStore",
    "Statuses",
    "key_holder",
    "key_value",
]

State = Literal["queued", "written", "failed"]
ActivityStatus = Literal["queued", "written", "failed", "retrying", "delivered", "dead"]
"""What the activity log filters by: a log status, or a delivery's."""
LOG_STATUSES: tuple[State, ...] = ("queued", "written", "failed")
Fingerprint = tuple[str | tuple[str, ...] | None, ...]
"""What makes two requests with one Idempotency-Key the same: (email, message, q), and the
request's subject and channels when it gave either."""


def key_value(fingerprint: Fingerprint, notification_id: str) -> str:
    """What an Idempotency-Key keeps, here and in Redis: ``<SHA-256 of the request> <id>``."""
    digest = hashlib.sha256(json.dumps(fingerprint).encode()).hexdigest()
    return f"{digest} {notification_id}"


def key_holder(held: str, claimed: str) -> str:
    """The id in ``held``, a key's kept value, when ``claimed`` (``key_value``) is for the same
    request; raises ``IdempotencyConflict`` when the key was used for a different one."""
    held_digest, _, held_id = held.partition(" ")
    if held_digest != claimed.partition(" ")[0]:
        raise IdempotencyConflict("this Idempotency-Key was already used with a different request")
    return held_id


@dataclass(slots=True)
class NotificationStatus:
    """What ``GET /notifications/{id}`` reports."""

    id: str
    status: State
    accepted_at: float
    written_at: float | None = None
    attempts: int = 0
    error: str | None = None
    email: str = ""
    channels: tuple[str, ...] | None = None
    """The delivery channels its request named (``()``: the log only), kept by the ledgers
    with the status; None: its request named none, so every channel."""


class _Outcome:
    """What happened to one batch's lines (shared by all of them): written, or failed."""

    __slots__ = ("at", "attempts", "error", "status")

    def __init__(self, status: State, at: float | None, attempts: int, error: str | None) -> None:
        self.status, self.at, self.attempts, self.error = status, at, attempts, error


class StatusStore:
    """Statuses by id; a sink listener (``written``/``failed``) keeps them current.

    Every request adds a status, and it is kept for the TTL, so a request must not leave an
    object the garbage collector tracks: one such object per request (a list, a dataclass)
    kept CPython's young-generation counter climbing, and under load it then collected every
    ~70 requests (300 collections, 60 ms, in 20,000 requests) instead of never. So a request
    stores only its acceptance time, a float, in ``_accepted``; a batch makes one ``_Outcome``
    that ``_outcomes`` points its lines at. Entries are in acceptance order, which is expiry
    order: the oldest go first, once per batch rather than once per request.
    """

    def __init__(self, limit: int, ttl: float, clock: Callable[[], float] = time.time) -> None:
        self._accepted: OrderedDict[str, float] = OrderedDict()
        self._emails: dict[str, str] = {}
        self._channels: dict[str, tuple[str, ...]] = {}
        """The channels of requests that named them (most do not: no entry)."""
        self._outcomes: dict[str, _Outcome] = {}
        self._limit, self._ttl, self._clock = limit, ttl, clock

    def accepted(
        self,
        notification_id: str,
        at: float,
        email: str = "",
        channels: tuple[str, ...] | None = None,
    ) -> None:
        """``notification_id`` (to ``email``, through ``channels`` when its request named
        them) was accepted at ``at``."""
        accepted = self._accepted
        accepted[notification_id] = at
        self._emails[notification_id] = email
        if channels is not None:
            self._channels[notification_id] = channels
        if len(accepted) > self._limit:
            oldest = accepted.popitem(last=False)[0]
            self._outcomes.pop(oldest, None)
            self._emails.pop(oldest, None)
            self._channels.pop(oldest, None)

    def get(self, notification_id: str) -> NotificationStatus | None:
        accepted_at = self._accepted.get(notification_id)
        if accepted_at is None or accepted_at + self._ttl <= self._clock():
            return None
        outcome = self._outcomes.get(notification_id)
        email = self._emails.get(notification_id, "")
        channels = self._channels.get(notification_id)
        if outcome is None:
            return NotificationStatus(
                notification_id, "queued", accepted_at, email=email, channels=channels
            )
        return NotificationStatus(
            notification_id,
            outcome.status,
            accepted_at,
            outcome.at,
            outcome.attempts,
            outcome.error,
            email,
            channels,
        )

    def written(
        self,
        ids: Iterable[str],
        attempts: int,
        seconds: float = 0.0,
        kinds: Sequence[Kind] = (),
    ) -> None:
        self.written_at(ids, attempts, self._clock())

    def written_at(self, ids: Iterable[str], attempts: int, now: float) -> None:
        """``written``, at ``now`` (``time.time()``)."""
        self._record(ids, _Outcome("written", now, attempts, None))
        self._expire(now)

    def failed(self, ids: Iterable[str], error: str, attempts: int) -> None:
        self._record(ids, _Outcome("failed", None, attempts, error))

    def withdrawn(self, notification_id: str, reason: str) -> None:
        """Its request gave up waiting for the write (ack=write): it is not being written."""
        if notification_id in self._accepted:
            earlier = self._outcomes.get(notification_id)
            if earlier is not None and earlier.status == "written":  # too late: it was
                return
            attempts = earlier.attempts if earlier is not None else 0
            self._outcomes[notification_id] = _Outcome("failed", None, attempts, reason)

    def _record(self, ids: Iterable[str], outcome: _Outcome) -> None:
        accepted, outcomes = self._accepted, self._outcomes
        for record_id in ids:
            if record_id in accepted:
                outcomes[record_id] = outcome

    def _expire(self, now: float) -> None:
        accepted, horizon = self._accepted, now - self._ttl
        while accepted:
            oldest = next(iter(accepted))
            if accepted[oldest] > horizon:
                break
            del accepted[oldest]
            self._outcomes.pop(oldest, None)
            self._emails.pop(oldest, None)
            self._channels.pop(oldest, None)


class Statuses(Protocol):
    """Where the service records what happens to the notifications it accepts: this
    process's ``StatusStore``, or the ledger every local process shares (which keeps one)."""

    def accepted(
        self,
        notification_id: str,
        at: float,
        email: str = "",
        channels: tuple[str, ...] | None = None,
    ) -> None: ...

    def withdrawn(self, notification_id: str, reason: str) -> None: ...


class IdempotencyConflict(Exception):
    """The key was used with a different request."""


@dataclass(frozen=True, slots=True)
class ActivityQuery:
    """``GET /notifications``: which notifications, newest first, a page at a time."""

    email: str | None = None
    """Only those to this (normalized) address."""
    status: ActivityStatus | None = None
    """Only those whose log status or any delivery's (``channel``'s, when given) is this."""
    channel: str | None = None
    """``log``, or a delivery channel: only those with a delivery on it (in ``status``)."""
    since: float | None = None
    """Only those accepted at or after this (``time.time()``)."""
    limit: int = 100
    after: str | None = None
    """The ``next`` of the page before (opaque)."""


@dataclass(frozen=True, slots=True)
class ActivityEntry:
    """One notification of the activity log: its log status (None when only its deliveries
    are still kept) and its deliveries, each with its history."""

    id: str
    status: NotificationStatus | None
    deliveries: list[DeliveryState]


class BadCursor(ValueError):
    """An ``after`` that is not a ``next`` this listing gave."""


class Ledger(Protocol):
    """Where Idempotency-Keys are claimed and statuses read: SQLite (every process of one
    machine) or Redis."""

    async def claim(self, key: str, fingerprint: Fingerprint, notification_id: str) -> str | None:
        """Claim ``key`` for ``notification_id``: ``None`` if it was free, else the id that
        holds it for the same request. Raises ``IdempotencyConflict`` for another request."""

    async def forget(self, key: str, notification_id: str) -> None:
        """Free ``key`` if ``notification_id`` holds it (its request was not acknowledged)."""

    async def status(self, notification_id: str) -> NotificationStatus | None:
        """The status of ``notification_id``, or ``None`` if unknown or expired."""

    async def activity(self, query: ActivityQuery) -> tuple[list[ActivityEntry], str | None]:
        """The page of notifications ``query`` asks for, newest first, and the ``after`` of
        the next page (None: this is the last). ``BadCursor`` for a malformed ``after``."""
