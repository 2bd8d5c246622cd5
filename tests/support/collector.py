"""How many objects the garbage collector tracks that something leaves behind."""

from __future__ import annotations

import gc
from collections.abc import Callable

from service.sinks.base import Lines


def tracked_growth(work: Callable[[], object]) -> int:
    """Run ``work`` with the collector off; how much CPython's young-generation count grew:
    the tracked objects it left alive (a collection runs once the count passes 700)."""
    gc.disable()  # so that no collection resets the count while we read it
    try:
        before = gc.get_count()[0]
        work()
        return gc.get_count()[0] - before
    finally:
        gc.enable()


def queue_lines(sink: Lines, count: int) -> tuple[list[str], list[str], int]:
    """Admit and submit ``count`` lines (``line N``, id ``id-N``); returns the ids, the lines
    and the ``tracked_growth`` the waiting lines caused."""
    ids = [f"id-{i}" for i in range(count)]
    lines = [f"line {i}\n" for i in range(count)]

    def submit_all() -> None:
        for record_id, line in zip(ids, lines, strict=True):
            sink.admit()
            sink.submit(record_id, "notification", line)

    return ids, lines, tracked_growth(submit_all)
