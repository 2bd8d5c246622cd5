"""One timer for every request that waits for its write (``NOTIFY_ACK=write``)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any

__all__ = ["Deadlines", "wait_all"]


class Deadlines:
    """Cancels the futures not done ``timeout`` seconds after they were added.

    What ``asyncio.timeout`` around each wait would do, for less: the timeout is the same for
    every wait, so deadlines come in the order they are added and one timer, at the earliest
    deadline, serves them all. ``asyncio.timeout`` costs a context manager, a ``TimerHandle``
    pushed on the loop's heap and a cancellation per request. Waits done in time are dropped
    from the front as new ones come (they finish about in order), so what is kept is about
    what is in flight, not ``timeout`` seconds of requests.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._pending: deque[tuple[float, Sequence[asyncio.Future[Any]]]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        """How many waits are kept (until done and dropped, or cancelled)."""
        return len(self._pending)

    def add(self, futures: Sequence[asyncio.Future[Any]]) -> None:
        """Cancel those of ``futures`` (of the running loop) still pending in ``timeout`` s."""
        pending = self._pending
        while pending and _all_done(pending[0][1]):
            pending.popleft()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        pending.append((deadline, futures))
        if self._timer is None or loop is not self._loop:  # (a timer of a closed loop is dead)
            self._loop = loop
            self._timer = loop.call_at(deadline, self._expire, loop)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        pending, now = self._pending, loop.time()
        while pending:
            deadline, futures = pending[0]
            if deadline > now and not _all_done(futures):
                break
            pending.popleft()
            for future in futures:
                future.cancel()  # nothing for a future already done
        self._timer = loop.call_at(pending[0][0], self._expire, loop) if pending else None


def _all_done(futures: Sequence[asyncio.Future[Any]]) -> bool:
    return all(future.done() for future in futures)


async def wait_all(futures: Sequence[asyncio.Future[Any]]) -> None:
    """``await asyncio.gather(*futures)``, without its cost for the usual single future."""
    if len(futures) == 1:
        await futures[0]
    else:
        await asyncio.gather(*futures)
