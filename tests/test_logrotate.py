"""The real logrotate (Debian's, ``make logrotate``) against a real server under load, with the
two configurations of docs/operations.md, read from the doc itself.

``create``: every acknowledged notification is in the rotated files plus the new one, exactly
once (the service reopens the moved log by itself). ``copytruncate``: never a line twice, never a
torn line, and the only lines missing are some acknowledged while logrotate ran (between its copy
and its truncation), as the doc says. ``NOTIFY_ACK=write``: a 200 means the line was written.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import re
import shutil
import signal
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.server import REPO_ROOT, PostResults, post_notifications, uvicorn_server
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow  # logrotate against a uvicorn subprocess

OPERATIONS = REPO_ROOT / "docs" / "operations.md"
DOCUMENTED_LOG = "/var/log/notify/log.txt"
ACKNOWLEDGEMENT = b'{"message":"Notification sent in the background"}'
LINE = re.compile(r"notification for ([A-Za-z0-9_.+-]+@example\.com): some notification")
CONCURRENCY = 16
ROTATIONS = 3
BETWEEN = 800
"""Acknowledgements before the first rotation, between two, and after the last."""


def logrotate() -> str:
    """The logrotate program (in /usr/sbin, which a non-root PATH may lack)."""
    path = shutil.which("logrotate") or next(
        (p for p in ("/usr/sbin/logrotate", "/sbin/logrotate") if os.access(p, os.X_OK)), None
    )
    assert path is not None, "logrotate is not installed: run `make logrotate` (Debian's package)"
    return path


def documented_config(mode: str) -> str:
    """The doc's logrotate configuration whose directives include ``mode``."""
    text = OPERATIONS.read_text(encoding="utf-8")
    blocks: list[str] = re.findall(
        r"```\n(# /etc/logrotate\.d/notify-service.*?)```", text, re.DOTALL
    )
    chosen = [block for block in blocks if re.search(rf"^\s+{mode}\b", block, re.MULTILINE)]
    assert len(chosen) == 1, f"docs/operations.md should have one logrotate example with {mode}"
    assert DOCUMENTED_LOG in chosen[0]
    return chosen[0]


@dataclass
class Rotation:
    """One logrotate run: acknowledgements counted when it started and when it ended."""

    started: int
    ended: int
    output: str


@dataclass
class Outcome:
    results: PostResults
    rotations: list[Rotation] = field(default_factory=list)
    files: dict[str, Counter[str]] = field(default_factory=dict)
    """Each log file left (``log.txt``, ``log.txt.1``, ``log.txt.2.gz`` ...): its emails."""
    torn: list[str] = field(default_factory=list)
    """Lines that are not a whole notification."""

    def found(self) -> Counter[str]:
        return sum(self.files.values(), Counter())

    def lost(self) -> list[str]:
        found = self.found()
        return [email for email in self.results.acknowledged if email not in found]


def read_log(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()


def count_lines(data: bytes, torn: list[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    text = data.decode("utf-8", errors="replace")
    lines = text.split("\n")
    if lines[-1]:
        torn.append(lines[-1])  # the file ends inside a line
    for line in lines[:-1]:
        match = LINE.fullmatch(line)
        if match is None:
            torn.append(line)
        else:
            counts[match.group(1)] += 1
    return counts


async def until(condition: Callable[[], bool], what: str) -> None:
    await eventually(condition, interval=0.005, message=what)


async def rotate_under_load(tmp_path: Path, mode: str, rotations: int = ROTATIONS) -> Outcome:
    """Load a server, run ``logrotate -f`` with the doc's ``mode`` configuration ``rotations``
    times along the way, stop the server, and read every log file left."""
    logs = tmp_path / "logs"
    log = logs / "log.txt"
    config = tmp_path / "logrotate.conf"
    config.write_text(documented_config(mode).replace(DOCUMENTED_LOG, str(log)), encoding="utf-8")
    state = tmp_path / "logrotate.state"
    settings = {
        "NOTIFY_LOG_PATH": str(log),
        "NOTIFY_ACK": "write",
        "NOTIFY_FILE_CHECK_INTERVAL": "0.05",
    }
    acknowledged = 0
    done = False
    rotated: list[Rotation] = []

    def note(count: int) -> None:
        nonlocal acknowledged
        acknowledged = count

    def emails() -> Iterator[str]:
        number = 0
        while not done:
            yield f"r{number:06d}@example.com"
            number += 1

    async def run_logrotate() -> None:
        started = acknowledged
        process = await asyncio.create_subprocess_exec(
            logrotate(),
            "-f",
            "-s",
            str(state),
            str(config),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await process.communicate()
        output = out.decode(errors="replace")
        rotated.append(Rotation(started, acknowledged, output))
        # logrotate fails only if the service recreated the log between its rename and its
        # create: then it keeps the service's file as log.txt-<hour>.backup (counted below).
        assert process.returncode == 0 or "already exists, renaming to" in output, output

    async def more_acknowledgements() -> None:
        target = acknowledged + BETWEEN
        await until(lambda: acknowledged >= target, f"{target} acknowledgements")

    async def rotate_along() -> None:
        nonlocal done
        try:
            for _ in range(rotations):
                await more_acknowledgements()
                await run_logrotate()
                # The writer goes on in log.txt: reopened after the move (create), or the same
                # file truncated (copytruncate).
                await until(lambda: log.exists() and log.stat().st_size > 0, "lines in log.txt")
            await more_acknowledgements()
        finally:
            done = True

    async with uvicorn_server(tmp_path, settings) as server:
        async with asyncio.timeout(120):
            results, _ = await asyncio.gather(
                post_notifications(
                    server.url,
                    emails(),
                    concurrency=CONCURRENCY,
                    acknowledgement=ACKNOWLEDGEMENT,
                    on_acknowledged=note,
                ),
                rotate_along(),
            )
        server.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            # uvicorn ends a SIGTERM'd run by raising the signal again, once all is written.
            assert await server.wait_exit() in (0, -signal.SIGTERM), server.output()
        assert "Traceback" not in server.output()

    outcome = Outcome(results, rotated)
    for path in sorted(logs.iterdir()):
        assert path.name.startswith("log.txt"), f"unexpected file {path.name}"
        assert not path.name.endswith("spool"), "a spool was left: lines were not written"
        if path.name.startswith("log.txt.ledger"):  # statuses (SQLite and its -wal, -shm)
            continue
        outcome.files[path.name] = count_lines(read_log(path), outcome.torn)
    return outcome


def check_load(outcome: Outcome) -> None:
    results = outcome.results
    assert results.unexpected == []
    assert results.transport_errors == {}
    assert len(results.acknowledged) >= (ROTATIONS + 1) * BETWEEN
    assert len(outcome.rotations) == ROTATIONS


@pytest.mark.parametrize("mode", ["create", "copytruncate"])
def test_the_documented_configurations_are_valid_for_logrotate(tmp_path: Path, mode: str) -> None:
    """``logrotate -d`` (debug: reads the configuration, changes nothing) accepts both."""
    log = tmp_path / "log.txt"
    log.write_text("notification for a@example.com: some notification\n", encoding="utf-8")
    config = tmp_path / "logrotate.conf"
    config.write_text(documented_config(mode).replace(DOCUMENTED_LOG, str(log)), encoding="utf-8")
    run = subprocess.run(
        [logrotate(), "-d", "-f", "-s", str(tmp_path / "state"), str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "error" not in (run.stdout + run.stderr).lower(), run.stdout + run.stderr


async def test_create_keeps_every_acknowledged_notification_exactly_once(tmp_path: Path) -> None:
    """Three forced rotations under load: log.txt, log.txt.1, log.txt.2.gz, log.txt.3.gz hold
    every acknowledged notification once, and nothing else."""
    outcome = await rotate_under_load(tmp_path, "create")
    check_load(outcome)
    assert outcome.torn == []
    found = outcome.found()
    assert {email: n for email, n in found.items() if n != 1} == {}, "written twice"
    assert set(found) == set(outcome.results.acknowledged)
    for name in ("log.txt", "log.txt.1", "log.txt.2.gz", "log.txt.3.gz"):
        assert outcome.files.get(name), f"{name} is missing or empty"


async def test_copytruncate_loses_only_lines_written_while_logrotate_ran(tmp_path: Path) -> None:
    """Nothing twice, nothing torn, nothing unacknowledged; what is missing was acknowledged
    while logrotate copied and truncated (up to one answer per connection later)."""
    outcome = await rotate_under_load(tmp_path, "copytruncate")
    check_load(outcome)
    assert outcome.torn == []
    found = outcome.found()
    assert {email: n for email, n in found.items() if n != 1} == {}, "written twice"
    assert set(found) <= set(outcome.results.acknowledged)
    position = {email: index for index, email in enumerate(outcome.results.acknowledged)}
    windows = [(r.started, r.ended + CONCURRENCY) for r in outcome.rotations]
    outside = [
        email
        for email in outcome.lost()
        if not any(start <= position[email] < end for start, end in windows)
    ]
    assert outside == [], f"lost outside logrotate's runs: {outside[:10]}"
