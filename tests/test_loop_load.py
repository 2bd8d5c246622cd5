"""``LoopLoad`` on a real event loop: busy while notifications come in and the loop is late,
not busy once either stops."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from service.outbox.load import LoopLoad
from tests.support.waiting import eventually


def _hold_the_loop() -> None:
    """Keep the event loop from running anything for 20 ms, as a burst of requests does."""
    time.sleep(0.02)


async def test_busy_needs_a_late_loop_and_notifications_coming_in() -> None:
    load = LoopLoad(interval=0.01, lag_limit=0.005, window=0.1)
    await load.start()
    try:
        assert not load.busy  # nothing came in yet

        # Each wait below checks, then acts once, then lets the loop run (``interval``).
        def until(done: Callable[[], bool], act: Callable[[], None]) -> Callable[[], bool]:
            def check() -> bool:
                if done():
                    return True
                act()
                return False

            return check

        def coming_in_while_held() -> None:
            load.took_in()
            _hold_the_loop()

        # Notifications coming in while the loop is held 20 ms at a time (as a burst of
        # requests holds it): busy.
        await eventually(until(lambda: load.busy, coming_in_while_held), interval=0)
        # Still coming in, with the loop free again: the lag fades, not busy.
        await eventually(until(lambda: not load.busy, load.took_in), interval=0.01)
        # The loop held again, by something else (the deliveries catching up), with no
        # notification coming in: busy again, then not once the last one is old enough.
        await eventually(until(lambda: load.busy, coming_in_while_held), interval=0)
        await eventually(until(lambda: not load.busy, _hold_the_loop), interval=0)
        assert load.lag == 0.0  # quiet: the measurement stopped
    finally:
        await load.aclose()


async def test_busy_lasts_while_notifications_are_on_their_way() -> None:
    """While the intake holds notifications on their way (``arriving``), "busy" does not
    lapse in a gap between batches longer than the window (under a saturating burst they
    went in 60-150 ms apart, each waiting for the outbox's thread); once none are on their
    way it lapses, the last batch being older than the window."""
    on_their_way = True
    load = LoopLoad(interval=0.01, lag_limit=0.005, window=0.1, arriving=lambda: on_their_way)
    await load.start()
    try:
        load.took_in()
        while not load.busy:
            _hold_the_loop()
            await asyncio.sleep(0)  # the measurement's timer, late, runs
        last_batch = time.monotonic()
        while time.monotonic() - last_batch < 0.15:  # no batch for longer than the window
            _hold_the_loop()
            await asyncio.sleep(0)
            assert load.busy
        on_their_way = False  # and the last batch is older than the window
        assert not load.busy
    finally:
        await load.aclose()
