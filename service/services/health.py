"""How the current run is doing, and the operator's hand on its channels: what ``/readyz``
reports (every writer's health, every delivery channel's state) and ``/webhooks/enable``.

A channel this process delivers is reported by its dispatcher. One that another process
delivers (``NOTIFY_DELIVERY=external`` beside ``notify-deliver``, or the Redis backend's
workers) is reported as that process last recorded it in the outbox: failing while paused
(``Outbox.pause``), not failing once it delivers again. A channel disabled by its receiver (a
webhook's 410) is disabled in the outbox (``Outbox.disable``), for every process sharing it:
every process reports it so, and ``enable`` in any process drops that record, which the
delivering process's dispatcher notices (``service.outbox.dispatcher``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from service.channels.base import Channel
from service.outbox.base import Outbox
from service.sinks.base import SinkHealth, SinkUnavailable

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

    async def enable(self) -> bool: ...


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
        """Every channel: failing or not, disabled or not (as the outbox records it too)."""
        if self._outbox is None:
            return [
                ChannelHealth(channel.name, channel.target, channel.error, channel.disabled)
                for channel in self._delivering
            ]
        try:
            disabled = await self._outbox.disabled()
        except Exception:  # the outbox failing: the dispatchers say what they know
            disabled = {}
        found = []
        for channel in self._delivering:
            if channel.disabled or channel.name not in disabled:
                state = ChannelHealth(channel.name, channel.target, channel.error, channel.disabled)
            else:  # by another process: this one's dispatcher learns it at its next look
                state = ChannelHealth(channel.name, channel.target, disabled[channel.name], True)
            found.append(state)
        if not self._elsewhere:
            return found
        try:
            pauses = await self._outbox.pauses()
        except Exception as exc:  # the outbox failing: its own 503s and writer say so
            unknown = f"its state is unknown: {exc}"
            return found + [
                ChannelHealth(channel.name, channel.target, unknown, False)
                for channel in self._elsewhere
            ]
        for other in self._elsewhere:
            reason = disabled.get(other.name)
            pause = pauses.get(other.name)
            error = reason if reason is not None else None if pause is None else pause.error
            found.append(ChannelHealth(other.name, other.target, error, reason is not None))
        return found

    async def enable(self, names: Sequence[str] | None = None) -> list[str]:
        """Enable the channels ``names`` (all when None) that their receiver disabled (a
        webhook's 410), wherever they are delivered: the outbox's record goes, and this
        process's dispatchers deliver again at once (another process's, when they next look
        at the outbox). The names of those that were disabled. ``SinkUnavailable`` (503) when
        the outbox cannot be reached."""

        def wanted(name: str) -> bool:
            return names is None or name in names

        enabled: set[str] = set()
        try:
            for channel in self._delivering:
                if wanted(channel.name) and await channel.enable():
                    enabled.add(channel.name)
            elsewhere = [channel.name for channel in self._elsewhere if wanted(channel.name)]
            if self._outbox is not None and elsewhere:
                enabled.update(await self._outbox.enable(elsewhere))
        except Exception as exc:
            raise SinkUnavailable(f"the outbox cannot be reached: {exc}") from None
        every = [channel.name for channel in self._delivering]
        every += [channel.name for channel in self._elsewhere]
        return [name for name in every if name in enabled]
