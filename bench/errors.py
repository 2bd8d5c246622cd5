"""The one exception that means the harness itself failed."""

from __future__ import annotations


class HarnessError(Exception):
    """A server or the load generator misbehaved; the benchmark cannot be trusted."""
