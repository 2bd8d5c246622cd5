"""Where things are, derived from this package's location."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"


def emit_json(data: Any, out: Path | None) -> None:
    """A load generator's result: one JSON line to ``out``, or to stdout without one."""
    text = json.dumps(data)
    if out is None:
        print(text)
    else:
        out.write_text(text)


def save_json(path: Path, data: Any) -> None:
    """Write ``data`` to ``path`` as indented JSON, creating its directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
