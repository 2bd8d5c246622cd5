"""A channel written in the tests, through the public interface only
(``service.channels.base.Channel``): it proves the interface with something other than email
and webhooks, and lets a test script each attempt's outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from service.channels.base import Channel, Delivery

__all__ = ["ScriptedChannel"]


class ScriptedChannel(Channel):
    """A channel named ``name`` whose ``send`` is ``script(delivery)``: it returns (delivered)
    or raises an outcome. Its window is fixed at ``concurrency`` unless ``min_concurrency``
    is given (then it starts there and adapts). Every attempt is recorded in ``attempts``, in
    order, and ``changed`` is set at each start and end of one."""

    def __init__(
        self,
        name: str,
        script: Callable[[Delivery], Awaitable[None]],
        *,
        concurrency: int = 4,
        min_concurrency: int | None = None,
        target: str = "in-test receiver",
    ) -> None:
        self.name = name
        self.target = target
        self.concurrency = concurrency
        self.min_concurrency = concurrency if min_concurrency is None else min_concurrency
        self.attempt_timeout = 5.0
        self._script = script
        self.attempts: list[str] = []
        """The id of each delivery attempted, in the order the attempts began."""
        self.changed = asyncio.Event()
        self.closed = False

    async def send(self, delivery: Delivery) -> None:
        self.attempts.append(delivery.id)
        self.changed.set()
        try:
            await self._script(delivery)
        finally:
            self.changed.set()

    async def aclose(self) -> None:
        self.closed = True
