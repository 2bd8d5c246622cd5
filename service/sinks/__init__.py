"""Sinks: where rendered lines go. Services talk to the ``Lines`` protocol only."""

from service.sinks.base import Lines, Resource, SinkFull, SinkHealth, SinkUnavailable

__all__ = ["Lines", "Resource", "SinkFull", "SinkHealth", "SinkUnavailable"]
