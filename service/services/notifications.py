"""What happens to an accepted notification: build a record, render its line, hand it over."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from service.records import Entry, Record, render_text
from service.sinks.base import Sink, SinkUnavailable

__all__ = ["NotificationService"]

Renderer = Callable[[Record], str]


class NotificationService:
    """Turns requests into log lines on the notification and query sinks.

    The router calls ``admit`` while it handles the request, so a full or failing sink is
    refused before the 200; ``notify`` and ``log_query`` are what it schedules as background
    tasks, and they only capture this long-lived object and plain values.
    """

    def __init__(
        self,
        notifications: Sink,
        queries: Sink,
        render: Renderer = render_text,
        *,
        ack_timeout: float = 5.0,
    ) -> None:
        self._notifications = notifications
        self._queries = queries
        self._render = render
        self._ack_timeout = ack_timeout

    def admit(self, *, query: bool) -> None:
        """Reserve room for one request's lines, or raise ``SinkUnavailable`` (nothing held)."""
        self._notifications.admit()
        if query:
            try:
                self._queries.admit()
            except SinkUnavailable:
                self._notifications.release()
                raise

    async def notify(self, email: str, message: str) -> None:
        """Log ``notification for {email}: {message}``."""
        record = Record("notification", email=email, message=message)
        await self._submit(self._notifications, record)

    async def log_query(self, q: str) -> None:
        """Log ``found query: {q}``."""
        await self._submit(self._queries, Record("query", q=q))

    async def notify_written(self, email: str, message: str, q: str | None) -> None:
        """Admit, hand over and wait until written: the query line (if any), then the
        notification. Raises ``SinkUnavailable`` when refused, or when the write is not done
        within ``ack_timeout`` (the lines stay queued: "not confirmed", not "dropped")."""
        self.admit(query=q is not None)
        loop = asyncio.get_running_loop()
        waits = []
        if q is not None:
            waits.append(loop.create_future())
            await self._submit(self._queries, Record("query", q=q), waits[-1])
        waits.append(loop.create_future())
        record = Record("notification", email=email, message=message)
        await self._submit(self._notifications, record, waits[-1])
        try:
            async with asyncio.timeout(self._ack_timeout):
                await asyncio.gather(*waits)
        except TimeoutError:
            raise SinkUnavailable(
                f"the log did not confirm the write within {self._ack_timeout:g} s "
                "(the line stays queued and may still be written)"
            ) from None

    async def _submit(
        self, sink: Sink, record: Record, done: asyncio.Future[None] | None = None
    ) -> None:
        await sink.submit(Entry(record.id, self._render(record), done))
