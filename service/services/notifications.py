"""What happens to an accepted notification: build a record, render its line, hand it over."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

from service.ids import new_id, series
from service.outbox.base import DeliveryState, Outbox, notification_group, notification_line
from service.outbox.writer import OutboxIntake
from service.records import Record, notification_renderer, render_text
from service.services.deadlines import Deadlines, wait_all
from service.sinks.base import Lines, SinkUnavailable, Wait
from service.status import (
    ActivityEntry,
    ActivityQuery,
    Fingerprint,
    Ledger,
    NotificationStatus,
    Statuses,
)

__all__ = ["Acceptance", "Channels", "ManyAcceptance", "NotificationService", "QueryLine"]

Renderer = Callable[[Record], str]
Channels = tuple[str, ...] | None
"""The delivery channels a notification goes to: None, every configured one; ``()``, none
(the log only)."""


class Acceptance(NamedTuple):
    """The id of an accepted notification; ``new`` is False for an idempotent replay."""

    id: str
    new: bool


class ManyAcceptance(NamedTuple):
    """The ids of a request of many recipients; ``new`` is False for an idempotent replay;
    ``seed`` is what the Idempotency-Key holds (the ids follow from it: ``ids.series``)."""

    ids: list[str]
    new: bool
    seed: str


class QueryLine:
    """A request's ``?q=``, and whether its ``found query`` line is to be written: only once
    the request is accepted as a new notification (not for a refused one, nor a replay)."""

    __slots__ = ("q", "wanted")

    def __init__(self, q: str) -> None:
        self.q = q
        self.wanted = False


class NotificationService:
    """Turns requests into log lines on the notification and query sinks.

    The router calls ``accept`` while it handles the request, so a full or failing sink is
    refused before the 200; ``notify`` and ``log_query`` are what it schedules as background
    tasks, and they only capture this long-lived object and plain values. ``on_accept`` is told
    once per notification answered 200: after admission with ``NOTIFY_ACK=background``, once
    written with ``write``, never for one answered 503.
    """

    def __init__(
        self,
        notifications: Lines,
        queries: Lines,
        *,
        statuses: Statuses,
        ledger: Ledger,
        render: Renderer = render_text,
        ack_timeout: float = 5.0,
        on_accept: Callable[[], object] = lambda: None,
        deliveries: OutboxIntake | None = None,
        outbox: Outbox | None = None,
        channels: Sequence[str] = (),
        on_retry: Callable[[], None] | None = None,
    ) -> None:
        self._deliveries = deliveries
        self._outbox = outbox
        self.channels = tuple(channels)
        """The delivery channels each notification goes to (``email``, ``webhook-…``)."""
        self._on_retry = on_retry
        self._on_accept = on_accept
        self._notifications = notifications
        self._queries = queries
        outbox_lines = () if deliveries is None else (deliveries,)
        self._wanted = {  # what a request reserves, all or none: by ?q= and its deliveries
            (False, False): (notifications,),
            (True, False): (notifications, queries),
            (False, True): (notifications, *outbox_lines),
            (True, True): (notifications, queries, *outbox_lines),
        }
        self._statuses = statuses
        self._ledger = ledger
        self._render = render
        self._render_notification = notification_renderer(render)
        self._ack_timeout = ack_timeout
        self._deadlines = Deadlines(ack_timeout)
        self._handling: dict[str, asyncio.Future[None]] = {}
        """Idempotency-Keys whose first request this process is handling, until its answer is
        known (admitted; with ``hold``, written or refused): a copy waits for it, then claims
        (a replay of a 200, or, the first refused and its key forgotten, a new request)."""

    def accept(self, email: str, query: QueryLine | None, channels: Channels = None) -> str:
        """Admit the lines of a request to ``email`` without an Idempotency-Key and give it a
        new id, or raise ``SinkUnavailable`` (nothing held). ``channels``: the delivery
        channels it goes to (None: all of them). A plain call: nothing here waits."""
        notification_id = new_id()
        self._admit(notification_id, email, query, channels)
        return notification_id

    async def accept_keyed(
        self,
        email: str,
        query: QueryLine | None,
        *,
        key: str,
        fingerprint: Fingerprint,
        channels: Channels = None,
        hold: bool = False,
    ) -> Acceptance:
        """``accept`` for a request with an Idempotency-Key, claimed in the ledger first.

        With ``key`` seen before for the same ``fingerprint`` nothing is admitted and the first
        id is returned; for another fingerprint ``IdempotencyConflict`` is raised. Raises
        ``SinkUnavailable`` when a sink (or the ledger) cannot take the request. A copy of a
        request this process is still handling waits for its answer first; with ``hold``
        (``NOTIFY_ACK=write``) a new request's copies wait until ``done_with(key)`` (its
        write confirmed, or its key forgotten), so that none is a 200 before the first's.
        """
        await self._copies_first(key)
        notification_id = new_id()
        with self._handling_key(key) as keep:
            known = await self._ledger.claim(key, fingerprint, notification_id)
            if known is not None:
                return Acceptance(known, new=False)
            try:
                self._admit(notification_id, email, query, channels)
            except SinkUnavailable:
                keep()
                await self.forget(key, notification_id)  # (then its copies go on)
                raise
            if hold:
                keep()  # until ``done_with``: written, or refused and its key forgotten
        return Acceptance(notification_id, new=True)

    async def _copies_first(self, key: str) -> None:
        """Wait while this process handles a request with ``key`` whose answer is not known."""
        while (handling := self._handling.get(key)) is not None:
            await asyncio.shield(handling)

    @contextlib.contextmanager
    def _handling_key(self, key: str) -> Iterator[Callable[[], None]]:
        """Mark ``key`` handled here while the block runs (it must begin once
        ``_copies_first`` returned), then drop the mark, unless the block called what it got:
        then the mark stays until ``done_with`` (or ``forget``) drops it."""
        handling = self._handling[key] = asyncio.get_running_loop().create_future()
        kept = False

        def keep() -> None:
            nonlocal kept
            kept = True

        try:
            yield keep
        finally:
            if not kept:
                self.done_with(key, handling)

    def done_with(self, key: str | None, handling: asyncio.Future[None] | None = None) -> None:
        """The answer to the request holding ``key`` is known: its copies go on."""
        if key is None:
            return
        current = self._handling.get(key)
        if current is not None and (handling is None or current is handling):
            del self._handling[key]
            current.set_result(None)

    def accept_many(self, emails: Sequence[str], channels: Channels = None) -> list[str]:
        """Admit a notification to each of ``emails`` (a request of many recipients), all or
        none, and give them new ids, in order; ``SinkUnavailable`` if not (nothing held)."""
        ids = series(new_id(), len(emails))
        self._admit_many(ids, emails, channels)
        return ids

    async def accept_many_keyed(
        self,
        emails: Sequence[str],
        *,
        key: str,
        fingerprint: Fingerprint,
        channels: Channels = None,
        hold: bool = False,
    ) -> ManyAcceptance:
        """``accept_many`` for a request with an Idempotency-Key (see ``accept_keyed``): the
        ids, whether they are new (False: a replay, nothing admitted, the first ids), and the
        seed kept with the key (``forget`` takes it); copies and ``hold`` as there."""
        await self._copies_first(key)
        seed = new_id()
        with self._handling_key(key) as keep:
            known = await self._ledger.claim(key, fingerprint, seed)
            if known is not None:
                return ManyAcceptance(series(known, len(emails)), False, known)
            ids = series(seed, len(emails))
            try:
                self._admit_many(ids, emails, channels)
            except SinkUnavailable:
                keep()
                await self.forget(key, seed)  # (then its copies go on)
                raise
            if hold:
                keep()
        return ManyAcceptance(ids, True, seed)

    async def notify_many(
        self,
        ids: Sequence[str],
        emails: Sequence[str],
        message: str,
        *,
        subject: str | None = None,
        channels: Channels = None,
        written: Sequence[Wait] = (),
        queued: Wait = None,
    ) -> None:
        """``notify`` for each of ``emails`` (admitted by ``accept_many``): a log line each,
        and their deliveries into the outbox as one record, so in one transaction."""
        render, submit = self._render_notification, self._notifications.submit
        waits = written or [None] * len(ids)
        for notification_id, email, done in zip(ids, emails, waits, strict=True):
            submit(notification_id, "notification", render(email, message, notification_id), done)
        intake = self._intake_for(channels)
        if intake is not None:
            now = time.time()
            group = notification_group(
                [
                    notification_line(notification_id, email, message, None, now, subject, channels)
                    for notification_id, email in zip(ids, emails, strict=True)
                ]
            )
            intake.submit(ids[0], "notification", group, queued)
        if not written:  # answered 200 already (ack=background); else once written
            for _ in ids:
                self._on_accept()

    async def notify_many_written(
        self,
        ids: Sequence[str],
        emails: Sequence[str],
        message: str,
        *,
        subject: str | None = None,
        channels: Channels = None,
    ) -> None:
        """``notify_many``, waiting until every line is written and the deliveries are in the
        outbox (``NOTIFY_ACK=write``); ``SinkUnavailable`` (all withdrawn) as ``notify_written``."""
        loop = asyncio.get_running_loop()
        written: list[asyncio.Future[None]] = [loop.create_future() for _ in ids]
        delivered = self._intake_for(channels) is not None
        queued = loop.create_future() if delivered else None
        waits = [*written, *([queued] if queued is not None else [])]
        await self.notify_many(
            ids, emails, message, subject=subject, channels=channels, written=written, queued=queued
        )
        await self._wait_written(waits, ids)
        for _ in ids:  # to be answered 200
            self._on_accept()

    async def forget(self, key: str | None, notification_id: str) -> None:
        """Let a key be used again (its request was not acknowledged after all), then let the
        copies waiting for that request's answer go on (``done_with``): once the key is free,
        even if this call is cancelled meanwhile (the forget goes on, shielded)."""
        if key is None:
            return
        forgetting = asyncio.ensure_future(self._ledger.forget(key, notification_id))

        def forgotten(task: asyncio.Future[None]) -> None:
            if not task.cancelled():
                task.exception()  # (a failure: the key then frees itself at its TTL)
            self.done_with(key)

        forgetting.add_done_callback(forgotten)
        await asyncio.shield(forgetting)

    async def status(self, notification_id: str) -> NotificationStatus | None:
        return await self._ledger.status(notification_id)

    async def deliveries(self, notification_id: str) -> list[DeliveryState]:
        """Where each channel's delivery of the notification stands (none: no outbox)."""
        if self._outbox is None:
            return []
        return await self._outbox.states(notification_id)

    async def activity(self, query: ActivityQuery) -> tuple[list[ActivityEntry], str | None]:
        """The activity log's page ``query`` asks for (newest first) and the next page's
        ``after``; ``BadCursor`` for an ``after`` it did not give."""
        return await self._ledger.activity(query)

    async def retry(self, notification_id: str) -> int:
        """Make the notification's dead deliveries due again; how many there were."""
        if self._outbox is None:
            return 0
        retried = await self._outbox.retry_dead(notification_id)
        if retried and self._on_retry is not None:
            self._on_retry()
        return retried

    async def notify(
        self,
        email: str,
        message: str,
        notification_id: str,
        q: str | None = None,
        *,
        subject: str | None = None,
        channels: Channels = None,
        written: Wait = None,
        queued: Wait = None,
    ) -> None:
        """Log ``notification for {email}: {message}`` (admitted by ``accept``); with delivery
        channels on, the deliveries (``q`` is in the webhooks' payload) go into the outbox:
        to every channel, or to ``channels`` (none: the log only), with ``subject`` or the
        configured one. ``written`` and ``queued``, when given, are resolved once the line is
        in the log and the deliveries in the outbox (``NOTIFY_ACK=write``)."""
        line = self._render_notification(email, message, notification_id)
        self._notifications.submit(notification_id, "notification", line, written)
        intake = self._intake_for(channels)
        if intake is not None:  # into the outbox too
            pending = notification_line(
                notification_id, email, message, q, time.time(), subject, channels
            )
            intake.submit(notification_id, "notification", pending, queued)
        if written is None:  # answered 200 already (ack=background); else once written
            self._on_accept()

    async def log_query(self, query: QueryLine, done: Wait = None) -> None:
        """Log ``found query: {q}``, if its request was accepted (``accept`` admitted it)."""
        if query.wanted:
            record = Record("query", q=query.q)
            self._queries.submit(record.id, "query", self._render(record), done)

    async def notify_written(
        self,
        email: str,
        message: str,
        q: str | None,
        notification_id: str,
        *,
        subject: str | None = None,
        channels: Channels = None,
    ) -> None:
        """Hand over the request's lines (admitted by ``accept``) and wait until written: the
        query line (if any), then the notification. Raises ``SinkUnavailable`` when the write
        is not done within ``ack_timeout``; the lines are then withdrawn (see the core)."""
        loop = asyncio.get_running_loop()
        waits: list[asyncio.Future[None]] = []
        if q is not None:
            waits.append(loop.create_future())
            query = QueryLine(q)
            query.wanted = True
            await self.log_query(query, waits[-1])
        written: asyncio.Future[None] = loop.create_future()
        waits.append(written)
        # With email or webhooks on, the 200 waits for the outbox's commit too.
        delivered = self._intake_for(channels) is not None
        queued = loop.create_future() if delivered else None
        if queued is not None:
            waits.append(queued)
        await self.notify(
            email,
            message,
            notification_id,
            q,
            subject=subject,
            channels=channels,
            written=written,
            queued=queued,
        )
        await self._wait_written(waits, [notification_id])
        self._on_accept()  # to be answered 200

    async def _wait_written(
        self, waits: list[asyncio.Future[None]], notification_ids: Sequence[str]
    ) -> None:
        """Wait for ``waits``, or raise ``SinkUnavailable`` after ``ack_timeout``, the
        notifications withdrawn."""
        self._deadlines.add(waits)  # cancels them (the writer then leaves their lines out)
        try:
            await wait_all(waits)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # this request was cancelled
                for wait in waits:
                    wait.cancel()
                for notification_id in notification_ids:
                    self._statuses.withdrawn(
                        notification_id, "the request was cancelled before its write was confirmed"
                    )
                raise
            reason = (
                f"the log did not confirm the write within {self._ack_timeout:g} s; the lines "
                "are withdrawn and will not be written, unless their write had already begun"
            )
            for notification_id in notification_ids:
                self._statuses.withdrawn(notification_id, reason)
            raise SinkUnavailable(reason) from None

    def _intake_for(self, channels: Channels) -> OutboxIntake | None:
        """Where a notification to ``channels`` goes into the outbox: None when no delivery
        channel is on, or it names none (``()``: the log only)."""
        return None if channels == () else self._deliveries

    def _admit(
        self, notification_id: str, email: str, query: QueryLine | None, channels: Channels
    ) -> None:
        """Reserve the request's lines (all or none) and record it as queued."""
        delivered = self._intake_for(channels) is not None
        if query is None and not delivered:
            self._notifications.admit()  # the usual request: one line
        else:
            self._admit_all(query, delivered)
        self._statuses.accepted(notification_id, time.time(), email, channels)

    def _admit_many(self, ids: Sequence[str], emails: Sequence[str], channels: Channels) -> None:
        """Reserve a log line for each of ``ids`` and their deliveries (all or none), and
        record each as queued."""
        notifications, intake = self._notifications, self._intake_for(channels)
        admitted = 0
        try:
            for _ in ids:
                notifications.admit()
                admitted += 1
            if intake is not None:
                intake.admit(len(ids))
        except SinkUnavailable:
            for _ in range(admitted):
                notifications.release()
            raise
        now, accepted = time.time(), self._statuses.accepted
        for notification_id, email in zip(ids, emails, strict=True):
            accepted(notification_id, now, email, channels)

    def _admit_all(self, query: QueryLine | None, delivered: bool) -> None:
        """Reserve the log line, the query line and the delivery: all of them, or none."""
        wanted = self._wanted[query is not None, delivered]
        admitted = 0
        try:
            for lines in wanted:
                lines.admit()
                admitted += 1
        except SinkUnavailable:
            for lines in wanted[:admitted]:
                lines.release()
            raise
        if query is not None:
            query.wanted = True
