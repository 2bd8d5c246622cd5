"""The delivery channels the settings ask for (email, each webhook URL), built the same way
wherever they run: in the API process with the local backend, in each worker with Redis.

``channel_names`` is what the intake needs (one outbox row per channel for each notification);
``delivery_channels`` adds what sends: a ``Dispatcher`` per channel over the outbox, with the
SMTP pool or the webhook's HTTP client, and what to close at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from config import Settings
from service.outbox.base import Outbox
from service.outbox.dispatcher import DeliveryListener, Dispatcher, DispatchOptions
from service.outbox.email import email_sender
from service.outbox.webhook import WebhookTarget, channel_name, webhook_sender
from service.sinks.email import EmailChannel, SmtpOptions, SmtpServer
from service.tasks import stop

__all__ = [
    "DeliveryChannels",
    "OutboxDepth",
    "channel_names",
    "delivery_channels",
    "dispatch_options",
    "lease_seconds",
]


_FORGET_INTERVAL = 60.0
"""Seconds between drops of what was delivered long enough ago."""


def lease_seconds(settings: Settings) -> float:
    """A claim's lease: longer than any attempt (an SMTP send: connect, then each reply, each
    within the timeout; a webhook request, within its timeout, all included)."""
    lease = 10.0
    if settings.email_on:
        lease = max(lease, 6 * settings.smtp_timeout + 10)
    if settings.webhook_urls:
        lease = max(lease, 2 * settings.webhook_timeout + 10)
    return lease


def dispatch_options(
    settings: Settings, concurrency: int, rate: float | None = None
) -> DispatchOptions:
    return DispatchOptions(
        concurrency=concurrency,
        retry_initial=settings.retry_initial,
        retry_max=settings.delivery_retry_max,
        max_age=settings.delivery_max_age,
        poll_interval=settings.file_check_interval,
        rate=rate,
        drain_timeout=settings.shutdown_timeout,
    )


def channel_names(settings: Settings) -> list[str]:
    """The outbox channels of each notification: ``email``, then each webhook URL's."""
    names = ["email"] if settings.email_on else []
    return names + [channel_name(url) for url in settings.webhook_urls]


@dataclass
class DeliveryChannels:
    """What sends: a dispatcher per channel, and what to close after them."""

    dispatchers: list[Dispatcher] = field(default_factory=list)
    webhooks: dict[str, Dispatcher] = field(default_factory=dict)
    """The webhook channels' dispatchers, by channel name."""
    targets: dict[str, str] = field(default_factory=dict)
    """What each channel delivers to, as shown (a webhook's URL without secrets)."""
    email: EmailChannel | None = None
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


def delivery_channels(
    settings: Settings,
    outbox: Outbox,
    listener: DeliveryListener,
    api_busy: Callable[[], bool] | None = None,
) -> DeliveryChannels:
    """A dispatcher over ``outbox`` for each channel the settings configure; each sends one
    message at a time, ``dispatcher.BUSY_RATE`` a second, while ``api_busy`` says so (in the
    API's process).

    ``outbox`` is the SQLite outbox or the Redis one (the same operations)."""
    built = DeliveryChannels()
    if settings.email_on:
        if settings.smtp_url is None or settings.smtp_from is None:  # Settings checks this
            raise ValueError("email needs NOTIFY_SMTP_URL and NOTIFY_SMTP_FROM")
        email = built.email = EmailChannel(
            SmtpServer.from_url(settings.smtp_url),
            SmtpOptions(
                connections=settings.smtp_connections,
                timeout=settings.smtp_timeout,
                require_tls=settings.smtp_require_tls,
            ),
        )
        send = email_sender(email, sender=settings.smtp_from, subject=settings.email_subject)
        options = dispatch_options(settings, settings.smtp_connections, settings.smtp_rate)
        built.dispatchers.append(
            Dispatcher(outbox, "email", send, options, listener=listener, api_busy=api_busy)
        )
        built.targets["email"] = email.name
        built.closers.append(email.close)
    for url in settings.webhook_urls:
        target = WebhookTarget(
            url, connections=settings.webhook_connections, timeout=settings.webhook_timeout
        )
        dispatcher = Dispatcher(
            outbox,
            target.name,
            webhook_sender(target, settings.webhook_keys),
            dispatch_options(settings, settings.webhook_connections),
            listener=listener,
            api_busy=api_busy,
        )
        built.dispatchers.append(dispatcher)
        built.webhooks[target.name] = dispatcher
        built.targets[target.name] = target.shown
        built.closers.append(target.close)
    return built


class OutboxDepth:
    """The outbox's upkeep in one process: its pending deliveries counted every ``interval``
    seconds (``depth``: the intake's size limit, the metric), and, once a minute, what was
    delivered more than ``keep_delivered`` seconds ago dropped (Redis lets it expire)."""

    def __init__(self, outbox: Outbox, interval: float, *, keep_delivered: float) -> None:
        self._outbox = outbox
        self._interval = interval
        self._keep_delivered = keep_delivered
        self._forgot_at = -math.inf
        self.depth = 0
        self._task: asyncio.Task[None] | None = None

    async def count(self) -> None:
        self.depth = await self._outbox.pending()
        now = time.monotonic()
        if now - self._forgot_at >= _FORGET_INTERVAL:
            self._forgot_at = now
            await self._outbox.forget_finished(time.time() - self._keep_delivered)

    async def start(self) -> None:
        await self.count()
        self._task = asyncio.create_task(self._run(), name="outbox depth")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        await stop(task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            with contextlib.suppress(Exception):  # a failing outbox: the 503s say so
                await self.count()
