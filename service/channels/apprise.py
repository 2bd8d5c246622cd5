"""The Apprise channel: each notification sent through one Apprise URL (Slack, Discord,
Telegram, ntfy, Pushover, email, a JSON or form POST, ... https://github.com/caronc/apprise).

One outbox channel per entry of ``NOTIFY_APPRISE_URLS`` (``ops=slack://..., alerts=ntfy://...``),
named as the operator named it: the URL holds the service's tokens, and a name that stays when
a token is rotated keeps the channel's pending deliveries, statuses and metrics. The message is
the notification's ``message``, its title the notification's subject (``NOTIFY_EMAIL_SUBJECT``
unless the request gave one), sent as plain text.

**Nothing of Apprise runs on the event loop.** Apprise sends synchronously (requests), so each
channel owns a thread pool of ``NOTIFY_APPRISE_CONNECTIONS`` threads, made with the channel
and shut down by ``aclose``: not the loop's default executor, which the log's file writes use,
so a receiver that holds its requests holds only this channel's threads. Apprise runs the send
on the calling thread only when no deadline is set (with one, it hands the send to a
process-wide pool of its own, shared by every URL), so the channel's ``AppriseAsset`` turns
Apprise's service time limit off; the attempt is bounded by the plugin's socket timeouts
(Apprise's ``cto`` and ``rto`` URL parameters, 4 s each by default) and, whatever happens
inside, by ``NOTIFY_APPRISE_TIMEOUT`` around the thread's future. The URL is parsed once, when
the channel is built (CPU only: no connection, no name lookup).

What a send comes to (``service.channels.base``), from Apprise's documented result
(``AppriseResult.status``):

- ``SUCCESS``: delivered;
- ``FAILURE`` (the service refused it, or could not be reached), or an exception: ``Retry``,
  this delivery backs off with the shared policy; once ``FAILURES_TO_PAUSE`` attempts in a
  row have failed, ``ChannelDown`` instead: the channel pauses and is probed, and a delivered
  probe resets the count;
- ``TIMEOUT``, or no outcome within ``NOTIFY_APPRISE_TIMEOUT``: ``ChannelDown`` (the outcome is
  unknown; the same delivery is sent again later, at least once).

Apprise never says *gone* or *never*: nothing is dead at once, only too old
(``NOTIFY_DELIVERY_MAX_AGE``), but for an empty (or blank) message, which Apprise always
refuses: ``Dead`` without a send.

**No secret is shown.** The error is the channel's own words ("Apprise: the Slack send
failed"), never Apprise's messages (they name targets, and at DEBUG whole URLs); Apprise's
logger does not propagate to the service's log (``service.logs.hide_library_logs``). The
``target`` shown in logs and ``/readyz`` is the scheme and Apprise's name of the service
(``slack:// (Slack)``), plus the host and port for the generic ``json``, ``form`` and ``xml``
schemes, where that is a host and not a token.
"""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from apprise import (
    Apprise,
    AppriseAsset,
    AppriseResultStatus,
    NotifyBase,
    NotifyFormat,
)

from config import Settings
from service.channels.base import Channel, ChannelDown, Dead, Delivery, Retry, Undelivered
from service.logs import hide_library_logs

__all__ = [
    "FAILURES_TO_PAUSE",
    "AppriseChannel",
    "from_settings",
    "plugin",
    "service_name",
    "shown_target",
]

FAILURES_TO_PAUSE = 3
"""Failed attempts in a row (of any deliveries) after which a failure pauses the channel:
when every recent attempt failed, the service is down rather than one message refused."""

_SHOWS_HOST = frozenset({"json", "jsons", "form", "forms", "xml", "xmls"})
"""Schemes whose host position is the receiver's host. Elsewhere it is often a token
(``slack://TokenA/TokenB/TokenC``, ``ntfy://topic``, ``pover://user@token``)."""
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,31}")


def _asset() -> AppriseAsset:
    """How the channel's Apprise runs: no service time limit (with one, Apprise sends from its
    own shared pool, not the calling thread), no persistent storage (nothing written to disk),
    each URL's services one after the other on the calling thread."""
    return AppriseAsset(service_timeout=0, storage_mode="memory", async_mode=False)


def plugin(url: str, asset: AppriseAsset | None = None) -> NotifyBase:
    """Apprise's service for ``url`` (``Apprise.instantiate``). ``ValueError`` saying why not,
    without the URL: a scheme Apprise does not know (or cannot use on this machine), or a URL
    it cannot read."""
    scheme = url.partition("://")[0].lower()
    if scheme not in _schemes(include_disabled=True):
        shown = f" '{scheme}'" if _SCHEME.fullmatch(scheme) else ""
        raise ValueError(f"Apprise does not know the scheme{shown}")
    if scheme not in _schemes(include_disabled=False):
        raise ValueError(f"Apprise cannot use the scheme '{scheme}' on this machine")
    hide_library_logs()  # instantiate logs why it fails, with the URL
    found = Apprise.instantiate(url, asset=asset if asset is not None else _asset())
    if found is None:
        raise ValueError("Apprise cannot read this URL")
    return found


def _schemes(*, include_disabled: bool) -> set[str]:
    """The schemes Apprise knows (its documented ``Apprise.details()``), with those disabled on
    this machine (a library missing) or not."""
    known: set[str] = set()
    for entry in Apprise().details(show_disabled=include_disabled)["schemas"]:
        if include_disabled or entry.get("enabled", True):
            for key in ("protocols", "secure_protocols"):
                known.update(scheme.lower() for scheme in entry.get(key) or ())
    return known


def service_name(service: NotifyBase) -> str:
    """Apprise's name of the service (``NotifyBase.service_name``: "Slack", "ntfy")."""
    name = getattr(service, "service_name", None)  # typed None on the base class
    return name if isinstance(name, str) and name else "the service"


def shown_target(url: str, service_name: str) -> str:
    """``url`` as logs and ``/readyz`` show it: ``scheme:// (Service)``, with ``host:port``
    for the generic schemes (``json://receiver.example:8080 (JSON)``); never a token."""
    scheme = url.partition("://")[0].lower()
    if scheme in _SHOWS_HOST:
        try:
            parts = urlsplit(url)
            host, port = parts.hostname or "", parts.port
        except ValueError:
            host, port = "", None
        if ":" in host:
            host = f"[{host}]"
        if host:
            return f"{scheme}://{host}{'' if port is None else f':{port}'} ({service_name})"
    return f"{scheme}:// ({service_name})"


class AppriseChannel(Channel):
    """One Apprise URL: its channel name, how it is shown, its Apprise object and its own
    threads; see the module docstring."""

    def __init__(
        self,
        name: str,
        url: str,
        *,
        subject: str,
        connections: int,
        timeout: float,
        min_connections: int = 1,
    ) -> None:
        """``ValueError`` (without the URL) when Apprise does not know or cannot read
        ``url``: see ``plugin``."""
        asset = _asset()
        service = plugin(url, asset)
        self.name = name
        self._service_name = service_name(service)
        self.target = shown_target(url, self._service_name)
        self.attempt_timeout = timeout
        self.concurrency = connections
        self.min_concurrency = min(min_connections, connections)
        self._subject = subject
        self._apprise = Apprise(asset=asset)
        self._apprise.add(service)
        self._pool = ThreadPoolExecutor(
            max_workers=connections, thread_name_prefix=f"apprise-{name}"
        )
        """The channel's own threads, started as sends need them (none until the first)."""
        self._failures = 0
        """Attempts in a row that failed (``FAILURES_TO_PAUSE``); a delivery resets it."""

    async def send(self, delivery: Delivery) -> None:
        """Send the delivery through Apprise on one of the channel's threads; see the module
        docstring for the outcomes."""
        if not delivery.message.strip():  # Apprise refuses it, every time: not worth a retry
            raise Dead("Apprise: an empty message cannot be sent")
        title = delivery.subject or self._subject
        loop = asyncio.get_running_loop()
        timeout = self.attempt_timeout
        try:
            async with asyncio.timeout(timeout):  # a backstop: the thread may go on
                status = await loop.run_in_executor(
                    self._pool, self._notify, delivery.message, title
                )
        except TimeoutError:
            raise ChannelDown(
                f"Apprise: no outcome from {self._service_name} within {timeout:g} s"
            ) from None
        except Exception as exc:  # what Apprise (or a plugin) raised: its text may hold a URL
            what = f"the {self._service_name} send raised {type(exc).__name__}"
            raise self._failed(what) from None
        if status == AppriseResultStatus.SUCCESS:
            self._failures = 0
            return
        if status == AppriseResultStatus.TIMEOUT:
            raise ChannelDown(f"Apprise: the {self._service_name} send timed out")
        raise self._failed(f"the {self._service_name} send failed")

    def _notify(self, body: str, title: str) -> AppriseResultStatus:
        """On a channel thread: one ``Apprise.notify``, its result closed (it may hold
        captured log entries) and only its status kept."""
        with self._apprise.notify(body, title=title, body_format=NotifyFormat.TEXT) as result:
            return result.status

    def _failed(self, what: str) -> Undelivered:
        """``Retry``, or ``ChannelDown`` once ``FAILURES_TO_PAUSE`` attempts in a row failed."""
        self._failures += 1
        if self._failures >= FAILURES_TO_PAUSE:
            return ChannelDown(f"Apprise: {what} ({FAILURES_TO_PAUSE}+ in a row)")
        return Retry(f"Apprise: {what}")

    async def aclose(self) -> None:
        """Stop the threads without waiting on the event loop: sends not started are dropped
        (their deliveries are leased and sent again), a send under way ends by its socket
        timeouts (the dispatcher waited for it until ``NOTIFY_SHUTDOWN_TIMEOUT``)."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def from_settings(settings: Settings) -> list[Channel]:
    """A channel for each of ``settings.apprise_targets`` (``NOTIFY_APPRISE_*``), in order.
    ``ValueError`` naming the entry by position and name (never its URL) when Apprise does not
    know its scheme or cannot read it: startup stops with that line."""
    hide_library_logs()
    targets = settings.apprise_targets
    channels: list[Channel] = []
    for number, (name, url) in enumerate(targets, 1):
        try:
            channel = AppriseChannel(
                name,
                url,
                subject=settings.email_subject,
                connections=settings.apprise_connections,
                min_connections=settings.apprise_connections_min,
                timeout=settings.apprise_timeout,
            )
        except ValueError as exc:
            raise ValueError(
                f"NOTIFY_APPRISE_URLS entry {number} of {len(targets)} ({name}): {exc}"
            ) from None
        channels.append(channel)
    return channels
