"""How the current run is doing, and the operator's hand on its channels: what ``/readyz``
reports (every writer's health, every delivery channel's state) and ``/webhooks/enable``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

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

    def __init__(self, writers: Sequence[_Writer], delivering: Sequence[_Delivering]) -> None:
        self._writers = writers
        self._delivering = delivering

    def writers(self) -> list[SinkHealth]:
        return [writer.health() for writer in self._writers]

    def channels(self) -> list[ChannelHealth]:
        return [
            ChannelHealth(
                name=channel.name,
                target=channel.target,
                error=channel.error,
                disabled=channel.disabled,
            )
            for channel in self._delivering
        ]

    def enable(self, names: Sequence[str] | None = None) -> list[str]:
        """Enable the channels ``names`` (all when None) that their receiver disabled (a
        webhook's 410); the names of those that were disabled."""
        return [
            channel.name
            for channel in self._delivering
            if (names is None or channel.name in names) and channel.enable()
        ]
