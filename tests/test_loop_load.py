"""``LoopLoad`` on a real event loop: busy while notifications come in and the loop is late,
not busy once either stops."""

from __future__ import annotations

import asyncio
import time

from service.outbox.load import LoopLoad


def _hold_the_loop() -> None:
    """Keep the event loop from running anything for 20 ms, as a burst of requests does."""
    time.sleep(0.02)


async def test_busy_needs_a_late_loop_and_notifications_coming_in() -> None:
    load = LoopLoad(interval=0.01, lag_limit=0.005, window=0.1)
    await load.start()
    try:
        assert not load.busy  # nothing came in yet
        async with asyncio.timeout(10):
            # Notifications coming in while the loop is held 20 ms at a time (as a burst of
            # requests holds it): busy.
            while not load.busy:
                load.took_in()
                _hold_the_loop()
                await asyncio.sleep(0)
            # Still coming in, with the loop free again: the lag fades, not busy.
            while load.busy:
                load.took_in()
                await asyncio.sleep(0.01)
            # The loop held again, by something else (the deliveries catching up), with no
            # notification coming in: busy again, then not once the last one is old enough.
            while not load.busy:
                load.took_in()
                _hold_the_loop()
                await asyncio.sleep(0)
            while load.busy:
                _hold_the_loop()
                await asyncio.sleep(0)
        assert load.lag == 0.0  # quiet: the measurement stopped
    finally:
        await load.aclose()
