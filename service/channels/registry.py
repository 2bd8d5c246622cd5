"""Which channels exist, and the one way they are built: ``build_channels(settings)``, for the
API process (local backend) and each Redis worker alike.

Each line of ``CHANNELS`` is one kind of channel: the module that implements it, and whether
the settings configure it. The module is imported only then (a process that uses none of
email, webhooks and Apprise does not pay for their libraries), and its
``from_settings(settings)`` gives its channels (one per webhook or Apprise URL, say). Adding a
channel: ``docs/architecture.md``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Protocol

from config import Settings
from service.channels.base import Channel

__all__ = ["CHANNELS", "build_channels", "lease_seconds"]


class _ChannelModule(Protocol):
    def from_settings(self, settings: Settings) -> list[Channel]: ...


CHANNELS: Sequence[tuple[str, Callable[[Settings], bool]]] = (
    ("service.channels.email", lambda settings: settings.smtp_url is not None),
    ("service.channels.webhook", lambda settings: bool(settings.webhook_urls)),
    ("service.channels.apprise", lambda settings: settings.apprise_urls is not None),
)
"""(module, configured?) for each kind of channel, in the order their rows are added."""


def build_channels(settings: Settings) -> list[Channel]:
    """The channels ``settings`` configure, in ``CHANNELS``' order; no I/O (each opens its
    connections on its first send). ``ValueError`` when two have the same name."""
    channels: list[Channel] = []
    for module_name, configured in CHANNELS:
        if configured(settings):
            module: _ChannelModule = importlib.import_module(module_name)
            channels += module.from_settings(settings)
    names = [channel.name for channel in channels]
    if len(set(names)) != len(names):
        raise ValueError(f"two channels have the same name: {', '.join(names)}")
    return channels


def lease_seconds(channels: Sequence[Channel]) -> float:
    """How long a claimed delivery is leased: longer than any attempt of ``channels``, so no
    other process takes a delivery over while its attempt may still end."""
    return max([10.0, *(channel.attempt_timeout + 10.0 for channel in channels)])
