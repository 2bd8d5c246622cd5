"""How the current run is doing, and the operator's hand on its channels: what ``/readyz``
reports (every writer's health, every delivery channel's state) and ``/webhooks/enable``.

A channel this process delivers is reported by its dispatcher. One that another process
delivers (``NOTIFY_DELIVERY=external`` beside ``notify-deliver``, or the Redis backend's
workers) is reported as that process last recorded it in the outbox: failing while paused
(``Outbox.pause``), not failing once it delivers again."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from service.channels.base import Channel
from service.outbox.base import Outbox
from service.sinks.base import SinkHealth

__all__ = ["ChannelHealth", "HealthService"]


class _Writer(Protocol):
    def health(self) -> SinkHealth: ...


class _Delivering(Protocol):
    """A channel's dispatcher, as far as health is concerned."""

    @property
    def name(self) -> str: ...

    @property
    def target(self) -> str: ...

    @property
    def error(self) -> str | None: ...

    @property
    def disabled(self) -> bool: ...

    def enable(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class ChannelHealth:
    """A delivery channel in ``/readyz``: failing or not (requests are accepted either way)."""

    name: str
    target: str
    error: str | None
    disabled: bool


class HealthService:
    """The health of one run's writers and of the channels this process delivers (none with
    the Redis backend: its workers deliver, and report on their own ``/readyz``)."""

    def __init__(
        self,
        writers: Sequence[_Writer],
        delivering: Sequence[_Delivering],
        *,
        outbox: Outbox | None = None,
        elsewhere: Sequence[Channel] = (),
    ) -> None:
        self._writers = writers
        self._delivering = delivering
        self._outbox = outbox
        self._elsewhere = elsewhere
        """The channels another process delivers (their state is in ``outbox``)."""

    def writers(self) -> list[SinkHealth]:
        return [writer.health() for writer in self._writers]

    async def channels(self) -> list[ChannelHealth]:
        found = [
            ChannelHealth(
                name=channel.name,
                target=channel.target,
                error=channel.error,
                disabled=channel.disabled,
            )
            for channel in self._delivering
        ]
        if self._outbox is None or not self._elsewhere:
            return found
        try:
            pauses = await self._outbox.pauses()
        except Exception as exc:  # the outbox failing: its own 503s and writer say so
            unknown = f"its state is unknown: {exc}"
            return found + [
                ChannelHealth(channel.name, channel.target, unknown, False)
                for channel in self._elsewhere
            ]
        return found + [
            ChannelHealth(
                name=channel.name,
                target=channel.target,
                error=None if channel.name not in pauses else pauses[channel.name].error,
                disabled=False,
            )
            for channel in self._elsewhere
        ]

    def enable(self, names: Sequence[str] | None = None) -> list[str]:
        """Enable the channels ``names`` (all when None) that their receiver disabled (a
        webhook's 410); the names of those that were disabled."""
        return [
            channel.name
            for channel in self._delivering
            if (names is None or channel.name in names) and channel.enable()
        ]
