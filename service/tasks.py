"""The background tasks a lifespan run owns (the outbox's upkeep, a dispatcher's loop, the
event loop's lag): how one is stopped."""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["stop"]


async def stop(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has ended."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
