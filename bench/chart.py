"""A two-panel PNG: req/s and p99 latency per server (bars: medians, dots: runs)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from bench.measure import RunResult
from bench.report import Summary

_Panel = tuple[str, Callable[[Summary], float], Callable[[RunResult], float]]

_PANELS: tuple[_Panel, ...] = (
    ("req/s (higher is better)", lambda summary: summary.rps, lambda run: run.rps),
    ("p99 latency, ms (lower is better)", lambda summary: summary.p99_ms, lambda run: run.p99_ms),
)


def draw_chart(summaries: Sequence[Summary], runs: Sequence[RunResult], path: Path) -> str:
    """Save the chart to ``path``; return a line saying what happened."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not importable: no chart drawn"
    names = [summary.name for summary in summaries]
    figure, axes = plt.subplots(1, len(_PANELS), figsize=(11, 4.5))
    for axis, (title, of_summary, of_run) in zip(axes, _PANELS, strict=True):
        axis.bar(names, [of_summary(summary) for summary in summaries], color="#7aa6c2")
        for position, name in enumerate(names):
            values = [of_run(run) for run in runs if run.server == name]
            axis.scatter([position] * len(values), values, color="#1f2d3a", s=12, zorder=3)
        axis.set_title(title)
        axis.tick_params(axis="x", labelrotation=20)
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle("POST /send-notification/{email}: bars are medians, dots are runs")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return f"chart: {path}"
