"""Sinks: where rendered lines go. Services talk to the ``Sink`` protocol only."""

from service.sinks.base import Sink, SinkFull, SinkHealth, SinkUnavailable

__all__ = ["Sink", "SinkFull", "SinkHealth", "SinkUnavailable"]
