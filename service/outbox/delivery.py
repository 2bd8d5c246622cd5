"""Delivering the outbox, the same way wherever it runs (the API process with the local
backend, each worker with Redis): ``dispatchers`` makes a ``Dispatcher`` per channel
(``service.channels.registry.build_channels``) over the outbox; ``OutboxDepth`` is the outbox's
upkeep in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Sequence

from config import Settings
from service.channels.base import Channel
from service.outbox.base import Outbox
from service.outbox.dispatcher import DeliveryListener, Dispatcher, DispatchOptions
from service.retry import Backoff
from service.tasks import stop

__all__ = ["OutboxDepth", "close_dispatchers", "dispatch_options", "dispatchers"]


_FORGET_INTERVAL = 60.0
"""Seconds between drops of what was delivered long enough ago."""


def dispatch_options(settings: Settings) -> DispatchOptions:
    return DispatchOptions(
        retry=Backoff(settings.retry_initial, settings.delivery_retry_max),
        pause=Backoff(settings.retry_initial, settings.channel_pause_max),
        max_age=settings.delivery_max_age,
        poll_interval=settings.file_check_interval,
        drain_timeout=settings.shutdown_timeout,
    )


def dispatchers(
    settings: Settings,
    outbox: Outbox,
    channels: Sequence[Channel],
    listener: DeliveryListener,
    api_busy: Callable[[], bool] | None = None,
) -> list[Dispatcher]:
    """A dispatcher over ``outbox`` for each of ``channels``; each sends one message at a
    time, ``dispatcher.BUSY_RATE`` a second, while ``api_busy`` says so (in the API's
    process). ``outbox`` is the SQLite outbox or the Redis one (the same operations)."""
    options = dispatch_options(settings)
    return [
        Dispatcher(outbox, channel, options, listener=listener, api_busy=api_busy)
        for channel in channels
    ]


async def close_dispatchers(started: Sequence[Dispatcher]) -> None:
    """Every dispatcher at once: each claims nothing more and lets its sends in flight finish
    within ``NOTIFY_SHUTDOWN_TIMEOUT``, so the whole drain takes that long at most, whatever
    the number of channels."""
    await asyncio.gather(*(dispatcher.aclose() for dispatcher in started))


class OutboxDepth:
    """The outbox's upkeep in one process: its pending deliveries counted every ``interval``
    seconds (``depth``: the intake's size limit, the metric), and, once a minute, what was
    delivered more than ``keep_delivered`` seconds ago dropped (Redis lets it expire)."""

    def __init__(self, outbox: Outbox, interval: float, *, keep_delivered: float) -> None:
        self._outbox = outbox
        self._interval = interval
        self._keep_delivered = keep_delivered
        self._forgot_at = -math.inf
        self.depth = 0
        self._task: asyncio.Task[None] | None = None

    async def count(self) -> None:
        self.depth = await self._outbox.pending()
        now = time.monotonic()
        if now - self._forgot_at >= _FORGET_INTERVAL:
            self._forgot_at = now
            await self._outbox.forget_finished(time.time() - self._keep_delivered)

    async def start(self) -> None:
        with contextlib.suppress(Exception):  # Redis not reachable yet: counted when it is
            await self.count()
        self._task = asyncio.create_task(self._run(), name="outbox depth")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        await stop(task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            with contextlib.suppress(Exception):  # a failing outbox: the 503s say so
                await self.count()
