"""A request is refused with 503 *before* it is acknowledged when its log cannot take it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from config import Settings
from service.sinks.core import BatchOptions
from service.sinks.file import file_sink
from tests.conftest import make_settings, read_lines, running
from tests.support.fifo import full_fifo
from tests.test_file_sink import wait_for_lines, wait_for_readiness


def _on_dev_full(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings whose log is ``/dev/full`` (every write fails with ENOSPC)."""
    return make_settings(
        tmp_path,
        log_path=Path("/dev/full"),
        spool_path=tmp_path / "spool",
        shutdown_timeout=0.2,
        **overrides,
    )


async def test_full_buffer_gets_503_with_retry_after(tmp_path: Path) -> None:
    """With the buffer full, POST gets 503, ``Retry-After`` and a JSON error naming the cause."""
    settings = _on_dev_full(tmp_path, queue_size=3)
    async with running(settings) as client:
        first = await client.post("/send-notification/a@example.com?q=x")  # 2 lines
        second = await client.post("/send-notification/b@example.com")  # 1 line: full
        refused = await client.post("/send-notification/c@example.com")
        refused_with_query = await client.post("/send-notification/d@example.com?q=y")
        ready = await wait_for_readiness(client, 503)
    assert (first.status_code, second.status_code) == (200, 200)
    for response in (refused, refused_with_query):
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert "buffer of log file /dev/full is full" in response.json()["detail"]
    assert any("buffer full" in reason for reason in ready["reasons"])


async def test_a_refused_request_with_a_key_frees_the_key(tmp_path: Path) -> None:
    """With an Idempotency-Key the full buffer gives the same 503, and the key is not kept:
    the same key with a different request is refused for the buffer again, not 422."""
    settings = _on_dev_full(tmp_path, queue_size=1)
    async with running(settings) as client:
        assert (await client.post("/send-notification/a@example.com")).status_code == 200
        key = {"Idempotency-Key": "order-7"}
        refused = await client.post("/send-notification/b@example.com", headers=key)
        other = await client.post("/send-notification/c@example.com", headers=key)
    for response in (refused, other):
        assert response.status_code == 503
        assert "buffer of log file /dev/full is full" in response.json()["detail"]


async def test_refused_query_line_releases_the_notification_reservation(tmp_path: Path) -> None:
    """If only the query log is full, the request is refused and holds no room in the other."""
    # A query log whose pipe is full takes nothing (and its spool stays under tmp_path).
    with full_fifo(tmp_path / "queries.fifo") as queries:
        settings = make_settings(
            tmp_path, query_log_path=queries.path, queue_size=1, shutdown_timeout=0.2
        )
        async with running(settings) as client:
            first = await client.post("/send-notification/a@example.com?q=1")
            assert first.status_code == 200
            await wait_for_lines(settings.log_path, 1)
            refused = await client.post("/send-notification/b@example.com?q=2")
            accepted = await client.post("/send-notification/c@example.com")
    assert refused.status_code == 503
    assert accepted.status_code == 200
    assert read_lines(settings.log_path) == [
        "notification for a@example.com: some notification",
        "notification for c@example.com: some notification",
    ]


async def test_shutdown_stops_at_its_deadline_even_while_writes_succeed(tmp_path: Path) -> None:
    """A slow but working sink does not hold shutdown past the drain timeout: once it passes,
    the lines not yet written go to the spool, so the log and the spool together hold every
    line exactly once, in order."""
    log = tmp_path / "log.txt"
    sink = file_sink(log, BatchOptions(queue_size=100_000, batch_size=1, drain_timeout=0.05))
    await sink.start()
    expected = [f"line {i}" for i in range(50_000)]
    for i, line in enumerate(expected):
        sink.admit()
        sink.submit(str(i), "notification", f"{line}\n")
    await wait_for_lines(log, 1)  # writes are succeeding when shutdown begins
    async with asyncio.timeout(5):  # a guard against a hang, not a measure
        await sink.aclose()
    written, spooled = read_lines(log), read_lines(tmp_path / "log.txt.spool")
    assert spooled, "shutdown waited until every line was written"
    assert written + spooled == expected


async def test_copies_sent_at_once_into_a_full_buffer_are_both_refused(tmp_path: Path) -> None:
    """Two copies of a request (one Idempotency-Key) at once, the buffer full: the first is
    refused (503) and its key forgotten; the copy is not a 200 replay of that refused one (an
    id nobody knows), it is refused as well."""
    settings = _on_dev_full(tmp_path, queue_size=1)
    key = {"Idempotency-Key": "k-1"}
    async with running(settings) as client:
        assert (await client.post("/send-notification/a@example.com")).status_code == 200
        answers = await asyncio.gather(
            *(client.post("/send-notification/b@example.com", headers=key) for _ in range(2))
        )
    assert [answer.status_code for answer in answers] == [503, 503]
