"""What one benchmark invocation was asked to do."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.paths import REPO_ROOT


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it."""
    resolved = path.resolve()
    return str(resolved.relative_to(REPO_ROOT)) if resolved.is_relative_to(REPO_ROOT) else str(path)


@dataclass(frozen=True)
class Options:
    """The command line, resolved: presets applied, output directory chosen."""

    rounds: int
    requests: int
    concurrency: int
    warmup: int
    servers: tuple[str, ...] | None
    out: Path
    quick: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "requests": self.requests,
            "concurrency": self.concurrency,
            "warmup": self.warmup,
            "servers": list(self.servers) if self.servers is not None else None,
            "out": _shown(self.out),
            "quick": self.quick,
        }
