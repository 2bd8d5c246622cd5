"""taskiq over Redis Streams (``NOTIFY_BACKEND=redis``): the broker the API and workers share.

The API publishes each batch of lines as one taskiq message (``TASK_NAME``) on the stream
``NOTIFY_REDIS_STREAM``; worker processes (``service.redis.worker``) read it in the consumer group
``writers`` and acknowledge a message only after its lines are in the log.

``NotificationBroker`` is taskiq-redis's ``RedisStreamBroker`` with the behaviours that would
lose or stall notifications changed (each measured against taskiq-redis 1.2.4):

- **Reclaim runs on a timer.** Upstream looks for messages left pending by a dead worker only
  after a read that returned new messages, so on a quiet stream they wait for ever. Here every
  worker runs ``XAUTOCLAIM`` every ``NOTIFY_REDIS_RECLAIM_INTERVAL`` seconds, whatever it read.
- **No lock around reclaim.** Upstream takes a Redis lock with no timeout around
  ``XAUTOCLAIM``; a worker killed while holding it blocks reclaim for good. ``XAUTOCLAIM`` is
  atomic on its own (a claimed message's idle time restarts, so no two workers get it).
- **Acknowledged messages are deleted** (``XACK`` and ``XDEL`` in one transaction), so the
  stream holds only what is not yet written. Upstream never trims unless ``maxlen`` is set, and
  ``maxlen`` trims the oldest entries whether they were acknowledged or not (a backlog longer
  than ``maxlen`` would be lost).
- **Redis going away is survived**: reads back off and retry, and a consumer group lost with
  Redis's data is declared again.

A message delivered to a worker that runs longer than ``NOTIFY_REDIS_IDLE_TIMEOUT`` is
delivered again; workers give up on a batch after half that time (see ``DeliveryService``),
and skip lines already written, so redelivery does not duplicate lines.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError
from taskiq import AckableMessage
from taskiq_redis import RedisStreamBroker

from config import Settings
from service.retry import Backoff, Episode

__all__ = [
    "GROUP",
    "TASK_NAME",
    "NotificationBroker",
    "build_broker",
    "describe_redis_error",
    "public_redis_error",
]

logger = logging.getLogger("service.broker")

TASK_NAME = "notify.write_lines"
GROUP = "writers"


def describe_redis_error(exc: BaseException) -> str:
    """One line for an error talking to Redis, for the service's own log (it may name
    Redis's address)."""
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text


_ADDRESS = re.compile(r"(?:[a-z]+://)?(?:[\w.-]+|\[[0-9a-fA-F:]+\]):\d+(?:/\d+)?")


def public_redis_error(exc: BaseException) -> str:
    """The same line without Redis's address, for a 503 and ``/readyz``: clients learn that
    Redis is unavailable (and the kind of error), not where it lives."""
    return _ADDRESS.sub("Redis", describe_redis_error(exc))


class NotificationBroker(RedisStreamBroker):
    """``RedisStreamBroker`` that reclaims on a timer and deletes what it acknowledged."""

    def __init__(self, settings: Settings) -> None:
        timeout = settings.redis_timeout
        super().__init__(
            settings.redis_url,
            queue_name=settings.redis_stream,
            consumer_group_name=GROUP,
            consumer_id="0",  # a group made after the API published still reads everything
            # A blocked read must return well before the socket timeout would cut it.
            xread_block=max(1, int(min(settings.redis_reclaim_interval, timeout / 2) * 1000)),
            idle_timeout=int(settings.redis_idle_timeout * 1000),
            unacknowledged_batch_size=100,
            xread_count=100,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry_on_timeout=False,
        )
        self.reclaim_interval = settings.redis_reclaim_interval
        self.read_backoff = Backoff(initial=0.05, maximum=settings.retry_max)
        """The wait between failed reads of the stream (Redis away)."""

    def redis(self) -> Redis:
        """A client on the broker's connection pool."""
        return Redis(connection_pool=self.connection_pool)

    async def _declare_consumer_group(self) -> None:
        try:
            await super()._declare_consumer_group()
        except (RedisError, OSError) as exc:  # Redis down at start: listen() declares it later
            logger.warning("redis: cannot declare the consumer group yet: %s", exc)

    async def _declare_group(self, redis: Redis) -> None:
        try:
            await redis.xgroup_create(self.queue_name, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _ack_generator(self, id: str, queue_name: str) -> Callable[[], Awaitable[None]]:
        async def ack() -> None:
            async with self.redis() as redis, redis.pipeline(transaction=True) as pipe:
                pipe.xack(queue_name, GROUP, id)
                pipe.xdel(queue_name, id)
                await pipe.execute()

        return ack

    async def listen(self) -> AsyncGenerator[AckableMessage, None]:
        """New messages as they come, and every ``reclaim_interval`` seconds the messages
        that a worker took and did not acknowledge within the idle timeout."""
        loop = asyncio.get_running_loop()
        next_reclaim = loop.time()
        reading = Episode(
            logger,
            "redis",
            failing="cannot read the stream: {error}; retrying",
            recovered="reading the stream again after {seconds:.1f} s",
        )
        failures = 0
        async with self.redis() as redis:
            while True:
                try:
                    messages = await self._read(redis)
                    if loop.time() >= next_reclaim:
                        next_reclaim = loop.time() + self.reclaim_interval
                        messages += await self._reclaim(redis)
                except (RedisError, OSError) as exc:
                    if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                        await self._declare_group(redis)  # Redis lost its data: start again
                        continue
                    reading.fail(str(exc))
                    await asyncio.sleep(self.read_backoff.delay(failures))
                    failures += 1
                    continue
                if reading.recover() is not None:
                    failures = 0
                for message in messages:
                    yield message

    async def _read(self, redis: Redis) -> list[AckableMessage]:
        fetched: Any = await redis.xreadgroup(
            GROUP, self.consumer_name, {self.queue_name: ">"}, block=self.block, count=self.count
        )
        entries = [entry for _, stream_entries in fetched or [] for entry in stream_entries]
        return await self._messages(redis, entries)

    async def _reclaim(self, redis: Redis) -> list[AckableMessage]:
        claimed: Any = await redis.xautoclaim(
            self.queue_name,
            GROUP,
            self.consumer_name,
            min_idle_time=self.idle_timeout,
            count=self.unacknowledged_batch_size,
        )
        # An entry deleted while pending comes back without fields: nothing to deliver.
        messages = await self._messages(redis, [entry for entry in claimed[1] if entry[1]])
        if messages:
            logger.warning(
                "redis: took over %d batches another worker did not finish", len(messages)
            )
        return messages

    async def _messages(self, redis: Redis, entries: list[Any]) -> list[AckableMessage]:
        """The stream entries as taskiq messages. An entry that is not one (no ``data`` field:
        something else wrote to the stream) is dropped at once, so it cannot block the stream
        or stop the worker; what it held is not logged."""
        messages, foreign = [], []
        for message_id, fields in entries:
            data = fields.get(b"data") if fields else None
            if data is None:
                foreign.append(message_id)
                continue
            ack = self._ack_generator(id=message_id, queue_name=self.queue_name)
            messages.append(AckableMessage(data=data, ack=ack))
        if foreign:
            logger.error("redis: dropped %d stream entries that are not batches", len(foreign))
            async with redis.pipeline(transaction=True) as pipe:
                pipe.xack(self.queue_name, GROUP, *foreign)
                pipe.xdel(self.queue_name, *foreign)
                await pipe.execute()
        return messages


def build_broker(settings: Settings) -> NotificationBroker:
    """The broker for ``settings`` (no I/O until it is used)."""
    return NotificationBroker(settings)
