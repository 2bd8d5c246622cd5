"""The API's side of the Redis backend: a ``Target`` that publishes each batch to the stream.

Only the talking to Redis lives here; batching, retries, admission (refused while Redis is
down: ``POST`` gets 503, never a 200 for a line that may be lost), the shutdown deadline and
the spool are the delivery core's (``service.sinks.core``). Each batch first records its lines
as ``queued`` in the ledger, then goes out as one taskiq message (one ``XADD``), with an id
that stays the same on every retry. While idle the target pings Redis, so readiness follows
Redis without traffic.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError
from taskiq.exceptions import SendTaskError
from taskiq.kicker import AsyncKicker

from service.ids import new_id
from service.redis.broker import (
    TASK_NAME,
    NotificationBroker,
    describe_redis_error,
    public_redis_error,
)
from service.sinks.core import Batch, BatchOptions, BatchSink, TargetError
from service.sinks.spool import JSON_RECORDS, Spool
from service.wire import WireRecord

__all__ = ["StreamPublisher", "stream_sink"]

QueuedRecorder = Callable[[Sequence[WireRecord]], Awaitable[None]]


class StreamPublisher:
    """Publishes batches of records to the broker's stream."""

    is_open = True

    def __init__(self, broker: NotificationBroker, on_queued: QueuedRecorder) -> None:
        self._broker = broker
        self._on_queued = on_queued
        self.name = self.description = f"redis stream {broker.queue_name}"
        self._batch_id: tuple[Batch, str] | None = None

    async def open(self) -> None:
        """Nothing to open: the first ``check`` tells whether Redis answers."""

    async def send(self, batch: Batch) -> None:
        records = batch.records()
        kicker: AsyncKicker[Any, None] = AsyncKicker(
            TASK_NAME, self._broker, {"ack_type": "manual"}
        )
        try:
            await self._on_queued(records)
            await kicker.with_task_id(self._id_of(batch)).kiq(records)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from None
        except SendTaskError as exc:  # taskiq wraps whatever the XADD raised
            raise _unavailable(exc.__cause__ or exc) from None
        self._batch_id = None

    async def check(self) -> bool:
        try:
            async with self._broker.redis() as redis:
                await redis.ping()
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from None
        return True

    def unsent(self, batch: Batch) -> list[WireRecord]:
        return batch.records()

    async def close(self) -> list[WireRecord]:
        return []

    def _id_of(self, batch: Batch) -> str:
        """One message id per batch, the same on every retry of it."""
        current = self._batch_id
        if current is None or current[0] is not batch:
            current = self._batch_id = (batch, new_id())
        return current[1]


def _unavailable(exc: BaseException) -> TargetError:
    """Redis's error for a 503 (no address) and, in full, for the service's log."""
    return TargetError(public_redis_error(exc), detail=describe_redis_error(exc))


def stream_sink(
    broker: NotificationBroker, on_queued: QueuedRecorder, options: BatchOptions, spool: Path
) -> BatchSink:
    """The API's one sink with the Redis backend, for both kinds of line (so a request's
    ``found query`` line always travels before, or with, its notification)."""
    publisher = StreamPublisher(broker, on_queued)
    # Lines are refused while Redis is down: the API does not hold what may never be handed over.
    options = replace(options, refuse_while_failing=True)
    return BatchSink(publisher, options, spool=Spool(spool, JSON_RECORDS))
