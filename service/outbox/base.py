"""What an outbox holds and does, whichever store keeps it: SQLite (``sqlite.SqliteOutbox``, one
machine) or Redis (``redis.RedisOutbox``, shared by the API processes and workers)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = ["Delivery", "DeliveryState", "DeliveryStatus", "NewDelivery", "Outbox"]

DeliveryStatus = Literal["queued", "retrying", "delivered", "dead"]
NewDelivery = tuple[str, str, str, str, float]
"""``(notification id, channel, recipient, message, accepted_at)``."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """A claimed delivery: send it, then report what happened."""

    id: str
    channel: str
    recipient: str
    message: str
    accepted_at: float
    attempts: int


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


class Outbox(Protocol):
    """Pending deliveries: added in batches, claimed with a lease, finished once."""

    @property
    def path(self) -> object:
        """What errors and ``/readyz`` call it."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def add(self, rows: Sequence[NewDelivery]) -> None: ...

    async def claim(self, channel: str, limit: int) -> list[Delivery]: ...

    async def delivered(self, delivery: Delivery) -> None: ...

    async def retry_at(self, delivery: Delivery, error: str, at: float) -> None: ...

    async def dead(self, delivery: Delivery, error: str) -> None: ...

    async def bury(self, channel: str, error: str) -> int: ...

    async def states(self, notification_id: str) -> list[DeliveryState]: ...

    async def listed(
        self, status: DeliveryStatus, *, limit: int, after: str | None
    ) -> list[DeliveryState]: ...

    async def retry_dead(self, notification_id: str) -> int: ...

    async def pending(self) -> int: ...

    async def next_due(self, channel: str) -> float | None: ...

    async def forget_finished(self, older_than: float) -> None:
        """Drop what was delivered before ``older_than``."""
