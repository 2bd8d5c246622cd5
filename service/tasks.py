"""The background tasks a lifespan run owns (the outbox's upkeep, a dispatcher's loop, the
event loop's lag): how one is stopped; and the event loop a process of ours runs on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["event_loop_factory", "run_main", "stop"]


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (it comes with ``uvicorn[standard]``), as
    uvicorn picks for the API (``--loop auto``): its transports are C, and a delivery is mostly
    socket reads and writes (about an eighth less CPU per email, ad hoc); else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - installed with uvicorn[standard]
        return None
    return uvloop.new_event_loop


def run_main(main: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run(main)`` on ``event_loop_factory``'s loop: how ``notify-deliver`` and
    ``notify-worker`` run."""
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(main)


async def stop(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has ended."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
