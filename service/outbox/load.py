"""Whether requests have the event loop saturated, so that deliveries step back meanwhile.

With the local backend the dispatchers send on the event loop that answers the API, and an
email costs that loop about 0.3 ms (building the message, four SMTP round trips, recording the
outcome). During a burst of requests, a dispatcher sending as fast as it can took about 8 % of
the API's throughput; the outbox, which holds every pending delivery durably, does not need the
loop then. So while the loop is saturated *and* notifications are coming in, each dispatcher
sends one message at a time, a few a second (``dispatcher.BUSY_RATE``), and on all its
connections again as soon as either stops. Sending never stops: the trickle goes on through
the longest burst.

Saturation is measured as Node's toobusy does: how late a short timer fires (the event loop's
lag), smoothed. Under a saturating burst a 10 ms timer fired 6-15 ms late here; at 500
requests a second with email on (``python -m bench.email``'s latency part, which a "busy" taken
for saturation would slow to 20 emails a second) the p99 from acknowledgement to delivery
stayed at 63 ms. A loop that only delivers is not "busy" by this measure, because no
notification came in lately: the catch-up after a burst uses every connection. The timer runs
only while notifications come in: an idle service does not wake for it.

Notifications "come in" while the intake holds some on their way into the outbox
(``arriving``), or a batch of them went in within ``window``. A batch waits for the outbox's
thread, which waits for Python's GIL: under a saturating burst they went in 60-150 ms apart (the
loop 20-40 ms late), and with the window alone "busy" lapsed between them for up to a quarter
of a burst, the dispatchers sending on every connection meanwhile (up to 75 emails a second
instead of 20; the rounds where it happened were the slowest, down to 0.69x log-only).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from service.tasks import stop

__all__ = ["LoopLoad"]


class LoopLoad:
    """``busy``: the loop's smoothed lag is over ``lag_limit`` seconds and notifications are
    coming in: ``arriving`` says some are on their way, or a batch went in within the last
    ``window`` seconds (``took_in``)."""

    def __init__(
        self,
        *,
        interval: float = 0.01,
        lag_limit: float = 0.005,
        window: float = 0.1,
        arriving: Callable[[], bool] = lambda: False,
    ) -> None:
        self._arriving = arriving
        self._interval = interval
        self._lag_limit = lag_limit
        self._window = window
        self._lag = 0.0
        self._took_in_at = -float("inf")
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def lag(self) -> float:
        """The smoothed lag, in seconds (0 while nothing comes in)."""
        return self._lag if self._recent() else 0.0

    @property
    def busy(self) -> bool:
        return self.lag > self._lag_limit

    def took_in(self) -> None:
        """Notifications came in (the outbox's intake added a batch)."""
        self._took_in_at = time.monotonic()
        self._arrived.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._measure(), name="event loop lag")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        await stop(task)

    def _recent(self) -> bool:
        return self._arriving() or time.monotonic() - self._took_in_at < self._window

    async def _measure(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._recent():  # quiet: forget the lag, and sleep until work comes
                self._lag = 0.0
                self._arrived.clear()
                await self._arrived.wait()
            started = loop.time()
            await asyncio.sleep(self._interval)
            late = max(0.0, loop.time() - started - self._interval)
            self._lag += 0.3 * (late - self._lag)
