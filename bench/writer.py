"""Writer micro-benchmark: lines per second through the file sink alone, next to one plain
``os.write`` per batch of the same bytes (the floor for any writer of these lines)."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from service.sinks.core import BatchOptions
from service.sinks.file import file_sink

LINES = 200_000
BATCH = 4096


@dataclass(frozen=True)
class WriterResult:
    lines: int
    batch_size: int
    sink_lines_per_s: float
    plain_lines_per_s: float

    @property
    def ratio(self) -> float:
        return self.sink_lines_per_s / self.plain_lines_per_s

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


def _lines(count: int) -> list[str]:
    return [f"notification for u{i}@example.com: some notification\n" for i in range(count)]


async def _through_sink(path: Path, lines: list[str]) -> float:
    sink = file_sink(path, BatchOptions(queue_size=len(lines), batch_size=BATCH))
    await sink.start()
    started = time.perf_counter()
    for number, line in enumerate(lines):
        sink.admit()
        sink.submit(str(number), "notification", line)
    await sink.aclose()
    return time.perf_counter() - started


def _plain(path: Path, lines: list[str]) -> float:
    started = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        for start in range(0, len(lines), BATCH):
            os.write(fd, "".join(lines[start : start + BATCH]).encode())
    finally:
        os.close(fd)
    return time.perf_counter() - started


def run_writer_bench(count: int = LINES, repeats: int = 3) -> WriterResult:
    """Best of ``repeats`` for each way of writing ``count`` lines."""
    lines = _lines(count)
    sink_s, plain_s = [], []
    with tempfile.TemporaryDirectory(prefix="bench-writer-") as tmp:
        for attempt in range(repeats):
            sink_s.append(asyncio.run(_through_sink(Path(tmp) / f"sink{attempt}.txt", lines)))
            plain_s.append(_plain(Path(tmp) / f"plain{attempt}.txt", lines))
            expected = sum(map(len, lines))
            assert (Path(tmp) / f"sink{attempt}.txt").stat().st_size == expected
    return WriterResult(count, BATCH, count / min(sink_s), count / min(plain_s))


def format_writer(result: WriterResult) -> str:
    return (
        f"writer: {result.lines:,} lines, batches of {result.batch_size}: file sink "
        f"{result.sink_lines_per_s:,.0f} lines/s, plain os.write per batch "
        f"{result.plain_lines_per_s:,.0f} lines/s, ratio {result.ratio:.2f}"
    )


def main() -> int:
    """``python -m bench.writer``: print the comparison and save it beside latest.json."""
    from bench.paths import RESULTS_DIR, save_json

    result = run_writer_bench()
    print(format_writer(result))
    save_json(RESULTS_DIR / "writer.json", result.to_json())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
