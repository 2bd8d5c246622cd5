"""How many objects the garbage collector tracks that queued lines leave behind."""

from __future__ import annotations

import gc

from service.sinks.base import Sink


def queue_lines(sink: Sink, count: int) -> tuple[list[str], list[str], int]:
    """Admit and submit ``count`` lines (``line N``, id ``id-N``) with the collector off.

    Returns the ids, the lines, and how much CPython's young-generation count grew: the
    tracked objects the waiting lines keep alive (a collection runs once it passes 700).
    """
    ids = [f"id-{i}" for i in range(count)]
    lines = [f"line {i}\n" for i in range(count)]
    gc.disable()  # so that no collection resets the count while we read it
    try:
        before = gc.get_count()[0]
        for record_id, line in zip(ids, lines, strict=True):
            sink.admit()
            sink.submit(record_id, line)
        grown = gc.get_count()[0] - before
    finally:
        gc.enable()
    return ids, lines, grown
