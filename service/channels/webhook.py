"""The webhook channel: each notification POSTed, signed, to one configured URL.

The request follows the Standard Webhooks specification (https://www.standardwebhooks.com/),
so a receiver verifies it with that spec's libraries:

- the body is the JSON
  ``{"type": "notification", "id", "time", "email", "message", "q", "subject"}`` (``subject``:
  the request's, or ``NOTIFY_EMAIL_SUBJECT``),
  built when sent from what the outbox holds, which never changes (``time`` is when the
  notification was accepted), so every retry sends the same bytes;
- ``webhook-id`` is the notification's id (the same on every retry: receivers drop repeats by
  it), ``webhook-timestamp`` this attempt's Unix time in seconds, and ``webhook-signature``
  ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, one per secret, space-separated
  (two while a secret is rotated).

One outbox channel per URL, named as the operator named it (``billing=https://...``) or else
``webhook-<first 8 hex digits of the URL's SHA-256>``: stable across restarts and reorderings
of ``NOTIFY_WEBHOOK_URL``, and free of the URL itself (which may hold a token) in statuses and
metrics. Each URL has its own ``httpx.AsyncClient``s (of at most 8 kept-alive connections
each, split evenly; ``NOTIFY_WEBHOOK_CONNECTIONS`` in all), no redirects followed, no proxy
variables read. What each answer means (``service.channels.base``):

- 2xx: delivered;
- 408, 500, 501, 505… (a failure of this request): ``Retry``, this delivery backs off;
- 429, 502, 503, 504, a timeout, a refused or lost connection (the receiver, not the payload):
  ``ChannelDown``, the URL's channel pauses and is probed;
- ``Retry-After`` (seconds or an HTTP date) with any of these: waited at least that long, up
  to ``NOTIFY_DELIVERY_RETRY_MAX`` for a delivery's retry, ``NOTIFY_CHANNEL_PAUSE_MAX`` for the
  channel's pause;
- 410 Gone: ``Gone``, the URL is disabled until enabled again;
- 3xx (redirects are not followed) and the other 4xx: ``Dead``.

A timeout after the request was sent may have been delivered: it is sent again with the same
``webhook-id`` (at least once).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import ssl
import time
from collections.abc import Sequence
from datetime import UTC
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import httpx

from config import Settings
from service.channels.base import Channel, ChannelDown, Dead, Delivery, Gone, Retry
from service.records import rfc3339

__all__ = [
    "WebhookChannel",
    "channel_name",
    "from_settings",
    "payload",
    "retry_after",
    "shown_url",
    "signature",
]

_MAX_ANSWER_BYTES = 64 * 1024
"""Read at most this much of an answer's body (it is not used); past it the connection closes."""
_POOL_SIZE = 8
_MAX_ERROR = 200
"""Characters at most of a transport error's text (see ``_transport_error``)."""
"""Connections per ``httpx.AsyncClient`` of a URL (see ``WebhookChannel.__init__``)."""
_PAUSE_CHANNEL = frozenset({429, 502, 503, 504})
_RETRY_DELIVERY = frozenset({408})


def channel_name(url: str) -> str:
    """The outbox channel of ``url``: ``webhook-`` and 8 hex digits of its SHA-256."""
    return "webhook-" + hashlib.sha256(url.encode()).hexdigest()[:8]


def shown_url(url: str) -> str:
    """``url`` as logs and ``/readyz`` show it: scheme, host, port and path; no user or password,
    and ``?…`` for a query (either may hold a token)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    query = "?…" if parts.query else ""
    return f"{parts.scheme}://{host}{port}{parts.path}{query}"


_COMPACT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
"""``json.dumps(..., ensure_ascii=False, separators=(",", ":"))``, its encoder made once."""


def payload(
    notification_id: str,
    email: str,
    message: str,
    q: str | None,
    accepted_at: float,
    subject: str,
) -> str:
    """The body of a notification's webhook: compact JSON, UTF-8."""
    body = {
        "type": "notification",
        "id": notification_id,
        "time": rfc3339(accepted_at),
        "email": email,
        "message": message,
        "q": q,
        "subject": subject,
    }
    return _COMPACT_JSON.encode(body)


def signature(keys: Sequence[bytes], message_id: str, timestamp: int, body: bytes) -> str:
    """``webhook-signature``: ``v1,<base64 HMAC-SHA256>`` for each key, space-separated."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii")
        for key in keys
    )


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` value asks to wait (delay-seconds or an HTTP date); None when
    absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # (``isdigit`` alone takes "²")
        return float(value) if len(value) <= 12 else None  # (309 digits are inf)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):  # (a year of 20 digits)
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    try:
        return max(0.0, moment.timestamp() - current)
    except (OverflowError, ValueError):  # an offset past what a timestamp holds
        return None


class WebhookChannel(Channel):
    """One URL: its channel name, how it is shown, and its own kept-alive client; each
    delivery POSTed, signed with ``keys`` (two while a secret is rotated)."""

    def __init__(
        self,
        url: str,
        keys: Sequence[bytes],
        *,
        connections: int,
        timeout: float,
        min_connections: int = 1,
        name: str | None = None,
        subject: str = "Notification",
        trust: ssl.SSLContext | None = None,
    ) -> None:
        self.url = url
        self.subject = subject
        """The payload's ``subject`` when the request gave none (``NOTIFY_EMAIL_SUBJECT``)."""
        self.name = name or channel_name(url)
        self.target = shown_url(url)
        self.attempt_timeout = timeout
        self.concurrency = connections
        self.min_concurrency = min(min_connections, connections)
        self._keys = tuple(keys)
        # Clients of at most _POOL_SIZE connections each: httpcore's pool hands a connection
        # to a request by looking through all of them, so one pool of 64 busy connections cost
        # the event loop a core at 80 requests a second (py-spy, a 200 ms receiver).
        # The connections are split evenly (9: 5 and 4, not 8 and 1), and a request goes to
        # the client with the most room: none waits in a pool for a connection while another
        # client has one free (a wait that counted against its timeout, and whose cancelling
        # could leave httpcore's pool stuck: encode/httpcore#1093).
        count = -(-connections // _POOL_SIZE)
        base, extra = divmod(connections, count)
        sizes = [base + 1] * extra + [base] * (count - extra)
        self._sizes = sizes
        # The system's trust store, and OpenSSL's SSL_CERT_FILE / SSL_CERT_DIR (a private CA),
        # as the email channel's: httpx's default (certifi) reads neither, with trust_env off.
        # One context serves every URL of a run (``from_settings``): loading it takes ~25 ms.
        trust = trust or ssl.create_default_context()
        self._clients = [
            httpx.AsyncClient(
                limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
                timeout=httpx.Timeout(timeout),
                follow_redirects=False,
                trust_env=False,  # no proxy from the environment
                verify=trust,
                headers={"user-agent": "notify-service"},
            )
            for size in sizes
        ]
        self._using = [0] * len(sizes)
        """Requests in flight on each client."""

    async def send(self, delivery: Delivery) -> None:
        """POST the delivery's payload, signed; see the module docstring for the outcomes."""
        try:
            body = payload(
                delivery.id,
                delivery.recipient,
                delivery.message,
                delivery.q,
                delivery.accepted_at,
                delivery.subject or self.subject,
            ).encode()
        except UnicodeEncodeError:  # a lone surrogate (no request can give one): never sendable
            raise Dead("the payload is not valid Unicode text") from None
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": delivery.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(self._keys, delivery.id, timestamp, body),
        }
        timeout = self.attempt_timeout
        using = self._using
        sizes = self._sizes
        index = min(range(len(using)), key=lambda i: using[i] / sizes[i])  # the most room
        using[index] += 1
        answer: httpx.Response | None = None
        try:
            async with asyncio.timeout(timeout):  # the whole attempt, not each read
                async with self._clients[index].stream(
                    "POST", self.url, content=body, headers=headers
                ) as response:
                    answer = response
                    await _drain(response)
        except (TimeoutError, httpx.TimeoutException):
            if answer is None:
                raise ChannelDown(f"no answer within {timeout:g} s") from None
        except httpx.TransportError as exc:  # refused, reset, DNS, TLS, a broken answer
            if answer is None:
                raise ChannelDown(_transport_error(exc, self.url, self.target)) from None
        finally:
            using[index] -= 1
        # The status came: it is the answer, even if the body (unused) did not come whole
        # (its connection is closed, not reused).
        _judge(answer)

    async def aclose(self) -> None:
        await asyncio.gather(*(client.aclose() for client in self._clients))


async def _drain(answer: httpx.Response) -> None:
    """Read the answer's body (unused) so its connection can be reused; a large one is cut."""
    read = 0
    async for chunk in answer.aiter_raw():
        read += len(chunk)
        if read > _MAX_ANSWER_BYTES:
            return


def _transport_error(exc: Exception, url: str, shown: str) -> str:
    """One line, at most ``_MAX_ERROR`` characters: the receiver may have written it (a
    broken status line of 90 KB is quoted whole by h11), and it goes into every attempt's
    history, the logs and ``/readyz``."""
    reason = str(exc).replace(url, shown) or "connection failed"
    text = " ".join(f"{type(exc).__name__}: {reason}".split())
    return text if len(text) <= _MAX_ERROR else text[: _MAX_ERROR - 1] + "…"


def _judge(answer: httpx.Response) -> None:
    """Raise what ``answer``'s status means (see the module docstring); 2xx returns."""
    status = answer.status_code
    if 200 <= status < 300:
        return
    described = f"HTTP {status} {httpx.codes.get_reason_phrase(status)}".rstrip()
    wait = retry_after(answer.headers.get("retry-after"))
    if status == 410:
        raise Gone(f"{described}: the receiver says this URL is gone")
    if status in _PAUSE_CHANNEL:
        raise ChannelDown(described, after=wait)
    if status in _RETRY_DELIVERY or status >= 500:
        raise Retry(described, after=wait)
    if 300 <= status < 400:
        raise Dead(f"{described}: a redirect, not followed")
    raise Dead(described)


def from_settings(settings: Settings) -> list[Channel]:
    """A channel for each of ``settings.webhook_targets`` (``NOTIFY_WEBHOOK_*``), in order,
    named as given or ``channel_name(url)``, all trusting one TLS context."""
    trust = ssl.create_default_context() if settings.webhook_targets else None
    return [
        WebhookChannel(
            url,
            settings.webhook_keys,
            connections=settings.webhook_connections,
            timeout=settings.webhook_timeout,
            min_connections=settings.webhook_connections_min,
            name=name,
            subject=settings.email_subject,
            trust=trust,
        )
        for name, url in settings.webhook_targets
    ]
