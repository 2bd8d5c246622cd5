"""The API's side of the Redis backend: a ``Target`` that publishes each batch to the stream.

Only the talking to Redis lives here; batching, retries, admission (refused while Redis is
down: ``POST`` gets 503, never a 200 for a line that may be lost), the shutdown deadline and
the spool are the delivery core's (``service.sinks.core``). Each batch first records its lines
as ``queued`` in the ledger, then goes out as one stream entry (one ``XADD``,
``service.redis.stream``). While idle the target pings Redis, so readiness follows Redis
without traffic.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path

from redis.exceptions import RedisError

from service.redis.errors import describe_redis_error, public_redis_error
from service.redis.stream import RedisStream
from service.sinks.core import Batch, BatchOptions, BatchSink, TargetError
from service.sinks.spool import JSON_RECORDS, Spool
from service.wire import WireRecord

__all__ = ["StreamPublisher", "stream_sink"]

QueuedRecorder = Callable[[Sequence[WireRecord]], Awaitable[None]]


class StreamPublisher:
    """Publishes batches of records to the stream."""

    is_open = True

    def __init__(self, stream: RedisStream, on_queued: QueuedRecorder) -> None:
        self._stream = stream
        self._on_queued = on_queued
        self.name = self.description = f"redis stream {stream.name}"

    async def open(self) -> None:
        """Nothing to open: the first ``check`` tells whether Redis answers."""

    async def send(self, batch: Batch) -> None:
        records = batch.records()
        try:
            await self._on_queued(records)
            await self._stream.add(records)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from None

    async def check(self) -> bool:
        try:
            await self._stream.redis.ping()
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from None
        return True

    def unsent(self, batch: Batch) -> list[WireRecord]:
        return batch.records()

    async def close(self) -> list[WireRecord]:
        return []


def _unavailable(exc: BaseException) -> TargetError:
    """Redis's error for a 503 (no address) and, in full, for the service's log."""
    return TargetError(public_redis_error(exc), detail=describe_redis_error(exc))


def stream_sink(
    stream: RedisStream, on_queued: QueuedRecorder, options: BatchOptions, spool: Path
) -> BatchSink:
    """The API's one sink with the Redis backend, for both kinds of line (so a request's
    ``found query`` line always travels before, or with, its notification)."""
    publisher = StreamPublisher(stream, on_queued)
    # Lines are refused while Redis is down: the API does not hold what may never be handed over.
    options = replace(options, refuse_while_failing=True)
    return BatchSink(publisher, options, spool=Spool(spool, JSON_RECORDS))
