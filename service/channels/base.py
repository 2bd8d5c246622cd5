"""What a delivery channel is: one small interface, and the ways an attempt can end.

A channel (email, one webhook URL, ...) is only its own I/O: "send this delivery, and say how
it ended". Everything around it — the outbox, leases, retries and their backoff, pausing and
probing a failing channel, dead letters, metrics, ``/readyz`` — is the dispatcher's
(``service.outbox.dispatcher``), written once for every channel. In the spirit of httpx's
``AsyncBaseTransport``: one method to write, a base class with the defaults.

``send(delivery)`` returning means *delivered*. Otherwise it raises one of:

- ``Retry``: this delivery failed for now (SMTP 4xx, HTTP 408/5xx); it alone is tried again
  later, with the delivery's own backoff, not before ``after`` seconds when given
  (``Retry-After``);
- ``ChannelDown``: the channel itself cannot deliver now (unreachable, refused, timed out,
  SMTP 421, HTTP 429/502/503/504, or the outcome is unknown): the channel pauses, one probe at
  a time tells when it is back, and this delivery waits for that;
- ``Dead``: this delivery can never succeed as it is (SMTP 5xx, HTTP 4xx): dead at once,
  until an operator retries it;
- ``Gone``: the destination is gone for good (HTTP 410): this delivery is dead and the channel
  is *disabled* (its pending deliveries dead too) until an operator enables it again.

Any other exception is a bug in the channel: logged with its traceback, and treated as
``ChannelDown`` (the delivery is kept).

Adding a channel: ``docs/architecture.md``, "Adding a channel".
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from service.outbox.base import Delivery

__all__ = ["Channel", "ChannelDown", "Dead", "Delivery", "Gone", "Retry", "Undelivered"]


class Undelivered(Exception):
    """An attempt that did not deliver; ``str()`` is one line saying why (shown in statuses,
    ``/readyz`` and the service's log: never a secret)."""

    def __init__(self, reason: str, *, after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.after = after
        """Seconds the receiver asked to wait (HTTP ``Retry-After``): a floor for the wait."""


class Retry(Undelivered):
    """This delivery failed for now: retry it alone, later."""


class ChannelDown(Undelivered):
    """The channel cannot deliver now: pause it and probe until it works again."""


class Dead(Undelivered):
    """This delivery can never succeed as it is: dead at once."""


class Gone(Undelivered):
    """The destination is gone for good: dead, and the channel disabled until enabled."""


class Channel(ABC):
    """A delivery channel. Subclasses set ``name`` and ``target`` and write ``send``; the
    rest has defaults.

    One object serves one lifespan run (or one worker): it is built by
    ``service.channels.registry.build_channels``, used on that run's event loop and closed by
    ``aclose`` at its end.
    """

    name: str
    """Stable across restarts: the outbox rows, statuses and metrics use it."""
    target: str = ""
    """What it delivers to, as logs and ``/readyz`` show it: no password, token or secret."""
    attempt_timeout: float = 30.0
    """The longest one ``send`` can take, all included: the outbox's lease is longer, so no
    other process takes a delivery over while its attempt can still end."""
    concurrency: int = 4
    """Sends in flight at most (connections to the receiver): the ceiling of the dispatcher's
    concurrency window."""
    min_concurrency: int = 1
    """The floor of the window, and where it starts."""
    rate: float | None = None
    """At most this many sends a second, when set."""

    @abstractmethod
    async def send(self, delivery: Delivery) -> None:
        """Deliver ``delivery``, or raise ``Retry``, ``ChannelDown``, ``Dead`` or ``Gone``.
        The same delivery may be sent again after an unknown outcome: ``delivery.id`` is the
        same every time, for the receiver to drop a repeat."""

    async def aclose(self) -> None:  # noqa: B027 (a default that does nothing, not abstract)
        """Release what the channel holds (connections); nothing by default."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} -> {self.target}>"
