"""The Redis backend's worker takeover, as the delivery tests stage it: an API, notifications
acknowledged, a worker SIGKILLed with deliveries in flight, then the next worker."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.server import (
    ServerProcess,
    post_notifications,
    running_worker,
    uvicorn_server,
)

__all__ = ["Takeover", "worker_killed_mid_delivery"]

ACKNOWLEDGEMENT = b'{"message":"Notification sent in the background"}'


@dataclass(frozen=True)
class Takeover:
    api: ServerProcess
    killed_at: float
    """``time.monotonic()`` when the first worker was dead."""


@asynccontextmanager
async def worker_killed_mid_delivery(
    workdir: Path,
    settings: Mapping[str, str],
    emails: Sequence[str],
    *,
    in_flight: Callable[[], Awaitable[None]],
    release: Callable[[], None],
) -> AsyncIterator[Takeover]:
    """Post ``emails`` (every one acknowledged) to an API; start a worker; once
    ``in_flight()`` returns (the receiver holds what the worker sends), SIGKILL the worker's
    process group; ``release()`` the receiver; start the next worker, and yield while it runs."""
    async with uvicorn_server(workdir, settings) as api:
        async with asyncio.timeout(30):
            results = await post_notifications(
                api.url, emails, concurrency=16, acknowledgement=ACKNOWLEDGEMENT
            )
        assert sorted(results.acknowledged) == sorted(emails)
        async with running_worker(workdir, settings, output_name="first.txt") as first:
            await in_flight()
            os.killpg(first.pid, signal.SIGKILL)
            await first.wait_exit()
        release()
        killed_at = time.monotonic()
        async with running_worker(workdir, settings, output_name="second.txt"):
            yield Takeover(api, killed_at)
