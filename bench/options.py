"""What one benchmark invocation was asked to do."""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.paths import REPO_ROOT, RESULTS_DIR


def chosen_parts(
    parser: argparse.ArgumentParser, text: str, known: Sequence[str]
) -> tuple[str, ...]:
    """The comma-separated parts of ``text``; a usage error unless each is one of ``known``."""
    parts = tuple(part.strip() for part in text.split(",") if part.strip())
    if not parts or any(part not in known for part in parts):
        parser.error(f"--parts takes some of {', '.join(known)}")
    return parts


def results_dir(out: Path | None, *, quick: bool, name: str) -> Path:
    """Where a benchmark writes: ``out``, else a fresh temporary directory for ``--quick``
    (named after the benchmark), else ``bench/results``."""
    if out is not None:
        return out
    return Path(tempfile.mkdtemp(prefix=f"bench-{name}-")) if quick else RESULTS_DIR


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
