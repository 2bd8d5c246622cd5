"""The callgrind harness reads the instruction count from callgrind's own output format."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.callgrind import thread_totals, total_instructions

_DUMP = """# callgrind format
version: 1
creator: callgrind-3.19.0
pid: 4242
cmd:  python -m uvicorn bench.apps.bare:app
part: 1

events: Ir
summary: 1162046000

fn=(1) main
0 42
totals: 1162046000
"""


def test_the_summary_line_gives_the_total() -> None:
    assert total_instructions(_DUMP) == 1_162_046_000


def test_a_dump_with_only_totals_is_read_too() -> None:
    assert total_instructions(_DUMP.replace("summary: 1162046000\n", "")) == 1_162_046_000


def test_a_file_that_is_not_a_dump_is_an_error() -> None:
    with pytest.raises(ValueError, match="not a callgrind output file"):
        total_instructions("events: Ir\nfn=(1) main\n")


def test_a_dump_of_separate_threads_gives_each_threads_count(tmp_path: Path) -> None:
    dumps = []
    for thread, count in ((1, 900), (2, 7), (3, 40)):
        path = tmp_path / f"callgrind.out.4242.1-{thread:02d}"
        path.write_text(_DUMP.replace("1162046000", str(count)))
        dumps.append(path)
    assert thread_totals(dumps) == {1: 900, 2: 7, 3: 40}
