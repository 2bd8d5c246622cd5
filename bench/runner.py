"""Interleaved rounds: every server once per round, in table order, each run fresh."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from bench.measure import RunResult, run_once
from bench.options import Options
from bench.servers import ServerSpec


def run_rounds(
    specs: Sequence[ServerSpec],
    options: Options,
    work_dir: Path,
    progress: Callable[[RunResult], None] = lambda result: None,
) -> list[RunResult]:
    """Run A B C … A B C … for ``options.rounds`` rounds; one directory per run."""
    results: list[RunResult] = []
    for round_index in range(1, options.rounds + 1):
        for spec in specs:
            run_dir = work_dir / f"round{round_index}-{spec.name}"
            result = run_once(spec, round_index, options, run_dir)
            progress(result)
            results.append(result)
    return results
