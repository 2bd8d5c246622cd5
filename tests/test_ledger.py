"""The local backend's ledger: statuses and Idempotency-Keys that every process on the machine
shares, through the real app (two runs of it on one file are two processes of one machine,
as ``--workers 2`` makes them), and through real uvicorn processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from service.ledger.sqlite import _SCHEMA, SqliteLedger, _expire, _Expiry
from service.main import create_app
from service.retry import Backoff
from service.runtime import StartupError
from service.status import ActivityQuery, NotificationStatus, StatusStore
from tests.conftest import make_settings, read_lines, running
from tests.support.collector import tracked_growth
from tests.support.server import (
    HOST,
    free_port,
    http_client,
    running_server,
    service_env,
    uvicorn_command,
    uvicorn_server,
)
from tests.support.waiting import eventually

GUIDE_BODY = {"message": "Notification sent in the background"}


async def status_of(client: httpx.AsyncClient, location: str, state: str) -> dict[str, Any]:
    """``GET location`` until it answers 200 with ``state``."""

    async def reached() -> dict[str, Any]:
        response = await client.get(location)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        assert body["status"] == state, body
        return body

    return await eventually(reached, message=f"{location} {state}")


async def test_another_process_reads_the_status_the_accepting_one_gives(tmp_path: Path) -> None:
    """A notification accepted by one process is answered by another with the same status,
    times and attempts, once its batch is in the ledger."""
    settings = make_settings(tmp_path)
    async with running(settings) as first, running(settings) as second:
        location = (await first.post("/send-notification/ada@example.com")).headers["location"]
        here = await status_of(first, location, "written")
        there = await status_of(second, location, "written")
    assert there == here
    assert there["channels"]["log"]["status"] == "written"


async def test_a_status_outlives_the_process_that_accepted_it(tmp_path: Path) -> None:
    """A status is in the file, not only in memory: a later start still answers it."""
    settings = make_settings(tmp_path)
    async with running(settings) as client:
        location = (await client.post("/send-notification/ada@example.com")).headers["location"]
        before = await status_of(client, location, "written")
    async with running(settings) as client:
        after = (await client.get(location)).json()
    assert after == before


async def test_a_failing_write_is_failed_in_every_process(tmp_path: Path) -> None:
    """On ``/dev/full`` the other process, too, sees the status ``failed`` with the error."""
    settings = make_settings(
        tmp_path, log_path=Path("/dev/full"), spool_path=tmp_path / "spool", shutdown_timeout=0.2
    )
    async with running(settings) as first, running(settings) as second:
        location = (await first.post("/send-notification/ada@example.com")).headers["location"]
        body = await status_of(second, location, "failed")
    assert "No space left on device" in body["error"]
    assert body["attempts"] >= 1
    assert (tmp_path / "full.ledger").exists(), "in the spool's directory, not in /dev"
    assert not Path("/dev/full.ledger").exists()


async def test_one_key_gives_one_notification_across_processes(tmp_path: Path) -> None:
    """The same Idempotency-Key sent to two processes, one after the other and 20 at once,
    gets one id and writes one line."""
    settings = make_settings(tmp_path)
    headers = {"Idempotency-Key": "order-1234"}
    url = "/send-notification/ada@example.com?q=x"
    async with running(settings) as first, running(settings) as second:
        one = await first.post(url, headers=headers, json={"message": "hi"})
        again = await second.post(url, headers=headers, json={"message": "hi"})
        together = await asyncio.gather(
            *(
                client.post("/send-notification/bob@example.com", headers={"Idempotency-Key": "k"})
                for client in [first, second] * 10
            )
        )
    assert one.status_code == again.status_code == 200
    assert again.json() == GUIDE_BODY
    assert again.headers["x-notification-id"] == one.headers["x-notification-id"]
    assert {response.status_code for response in together} == {200}
    assert len({response.headers["x-notification-id"] for response in together}) == 1
    assert sorted(read_lines(settings.log_path)) == [
        "found query: x",
        "notification for ada@example.com: hi",
        "notification for bob@example.com: some notification",
    ]


async def test_a_key_used_for_another_request_elsewhere_is_422(tmp_path: Path) -> None:
    """A key one process took for one request is refused (422) by another for a different one."""
    settings = make_settings(tmp_path)
    async with running(settings) as first, running(settings) as second:
        await first.post("/send-notification/ada@example.com", headers={"Idempotency-Key": "k"})
        other = await second.post(
            "/send-notification/bob@example.com", headers={"Idempotency-Key": "k"}
        )
    assert other.status_code == 422
    assert "different request" in other.json()["detail"][0]["msg"]


async def test_a_key_is_free_again_once_it_expires(tmp_path: Path) -> None:
    """After NOTIFY_IDEMPOTENCY_TTL the key makes a new notification (a held key gives 422
    for another request; an expired one is taken again)."""
    settings = make_settings(tmp_path, idempotency_ttl=0.05)
    headers = {"Idempotency-Key": "k"}
    async with running(settings) as client:
        taken = await client.post("/send-notification/ada@example.com", headers=headers)

        async def new_id() -> bool:
            again = await client.post("/send-notification/bob@example.com", headers=headers)
            assert again.status_code in (200, 422), again.text
            held = again.headers.get("x-notification-id")
            return held is not None and held != taken.headers["x-notification-id"]

        await eventually(new_id, message="a new id for the key once it expired")


async def test_statuses_expire_and_are_bounded_in_the_file(tmp_path: Path) -> None:
    """The file keeps at most NOTIFY_STATUS_MAX_ENTRIES notifications, the newest; and none
    past NOTIFY_STATUS_TTL."""
    settings = make_settings(tmp_path, status_max_entries=3)
    async with running(settings) as first, running(settings) as second:
        locations = [
            (await first.post(f"/send-notification/u{i}@example.com")).headers["location"]
            for i in range(5)
        ]
        for location in locations[2:]:
            await status_of(second, location, "written")

        async def dropped() -> bool:
            answers = [(await second.get(location)).status_code for location in locations]
            return answers == [404, 404, 200, 200, 200]

        await eventually(dropped, message="the two oldest dropped from the file")
    expiring = make_settings(tmp_path, status_ttl=0.05)
    async with running(expiring) as client:
        location = (await client.post("/send-notification/ada@example.com")).headers["location"]

        async def gone() -> bool:
            return (await client.get(location)).status_code == 404

        await eventually(gone, message="a 404 once the TTL has run out")

    def rows() -> int:
        with sqlite3.connect(expiring.effective_ledger_path()) as db:
            (count,) = db.execute("SELECT count(*) FROM notifications").fetchone()
        return int(count)

    async with running(expiring):
        await eventually(lambda: rows() == 0, message="expired rows deleted")


async def test_an_unopenable_ledger_stops_startup_with_one_line(tmp_path: Path) -> None:
    """A ledger path that cannot be opened (a directory) stops startup, naming it."""
    (tmp_path / "dir").mkdir()
    app = create_app(make_settings(tmp_path, ledger_path=tmp_path / "dir"))
    with pytest.raises(StartupError) as caught:
        async with LifespanManager(app):
            pass
    message = str(caught.value)
    assert "\n" not in message
    assert f"ledger {tmp_path / 'dir'}" in message


async def test_waiting_statuses_leave_no_object_for_the_garbage_collector(tmp_path: Path) -> None:
    """10,000 statuses waiting for their batch are plain values: they add nothing to the
    collector's count (an object per request set off a collection every ~50 requests)."""
    count = 10_000
    ledger = SqliteLedger(
        tmp_path / "ledger",
        local=StatusStore(limit=count, ttl=3600.0),
        status_ttl=3600.0,
        idempotency_ttl=3600.0,
        max_entries=count,
        linger=3600.0,
    )
    ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(count)]
    emails = [f"u{i}@example.com" for i in range(count)]
    now = time.time()

    def accept_all() -> None:
        for notification_id, email in zip(ids, emails, strict=True):
            ledger.accepted(notification_id, now, email)

    await ledger.open()
    try:
        grown = tracked_growth(accept_all)
    finally:
        await ledger.close()  # writes them
    assert grown < count // 100, f"{grown} tracked objects for {count} statuses"
    with sqlite3.connect(tmp_path / "ledger") as db:
        (stored,) = db.execute("SELECT count(*) FROM notifications").fetchone()
    assert stored == count


def _ledger(path: Path, **overrides: Any) -> SqliteLedger:
    """A ledger on ``path`` as one process of the machine has it (its own ``StatusStore``)."""
    values: dict[str, Any] = {
        "local": StatusStore(limit=100, ttl=3600.0),
        "status_ttl": 3600.0,
        "idempotency_ttl": 3600.0,
        "max_entries": 100,
        "linger": 0.01,
        **overrides,
    }
    return SqliteLedger(path, **values)


async def test_the_channels_a_request_named_are_read_back_by_another_process(
    tmp_path: Path,
) -> None:
    """Channels accepted by one process's ledger (``()``: the log only; ``("email",)``) are
    what another reads from the file, in ``status`` and in ``activity``; a request that named
    none reads None. Its outcome, in the same batch or a later one, keeps them."""
    path = tmp_path / "ledger"
    first, second = _ledger(path), _ledger(path)
    log_only, mailed, plain, named = (f"00000000-0000-4000-8000-00000000000{i}" for i in range(4))
    now = time.time()
    await first.open()
    await second.open()
    try:
        first.accepted(log_only, now, "l@example.com", ())
        first.accepted(mailed, now, "m@example.com", ("email",))
        first.accepted(plain, now, "p@example.com")
        first.accepted(named, now, "n@example.com", ("webhook-1", "email"))
        first.written([log_only], 1)  # before the batch is taken: inserted as written

        async def read() -> dict[str, tuple[str, ...] | None]:
            found = {}
            for notification_id in (log_only, mailed, plain, named):
                status = await second.status(notification_id)
                assert status is not None, notification_id
                found[notification_id] = status.channels
            return found

        channels = await eventually(read, message="the batch in the file")
        first.written([mailed, named], 2)  # a later batch: an update of the rows

        async def written() -> bool:
            status = await second.status(named)
            return status is not None and status.status == "written"

        await eventually(written, message="the later outcome in the file")
        after = await read()
        entries, _ = await second.activity(ActivityQuery())
    finally:
        await first.close()
        await second.close()
    expected = {log_only: (), mailed: ("email",), plain: None, named: ("webhook-1", "email")}
    assert channels == after == expected
    assert {
        entry.id: entry.status.channels for entry in entries if entry.status is not None
    } == expected
    assert {entry.id: entry.status.status for entry in entries if entry.status} == {
        log_only: "written",
        mailed: "written",
        plain: "queued",
        named: "written",
    }


async def test_channels_kept_through_a_failing_ledger_are_written_once_it_recovers(
    tmp_path: Path,
) -> None:
    """While the file refuses the batch (its table moved aside by hand), the rows are kept
    with their channels, those accepted meanwhile too; once it takes them again another
    process reads each with its channels."""
    path = tmp_path / "ledger"
    first = _ledger(path, retry=Backoff(initial=0.01, maximum=0.05))
    second = _ledger(path)
    before, during = "00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-000000000002"
    await first.open()
    await second.open()
    outside = sqlite3.connect(path, isolation_level=None)
    try:
        outside.execute("ALTER TABLE notifications RENAME TO aside")
        first.accepted(before, time.time(), "b@example.com", ())
        await eventually(lambda: first.health().error is not None, message="the batch refused")
        first.accepted(during, time.time(), "d@example.com", ("email",))
        outside.execute("ALTER TABLE aside RENAME TO notifications")

        async def both() -> list[tuple[str, ...] | None]:
            found = [await second.status(before), await second.status(during)]
            assert None not in found, found
            return [status.channels for status in found if status is not None]

        channels = await eventually(both, message="both rows in the file")
        recovered = first.health().error
    finally:
        outside.close()
        await first.close()
        await second.close()
    assert channels == [(), ("email",)]
    assert recovered is None


_SCHEMA_BEFORE_CHANNELS = """
CREATE TABLE notifications (
    seq INTEGER PRIMARY KEY,
    key INTEGER NOT NULL,
    id TEXT NOT NULL,
    email_key INTEGER NOT NULL,
    email TEXT NOT NULL,
    accepted_at REAL NOT NULL,
    status TEXT NOT NULL,
    written_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT
);
CREATE INDEX notifications_key ON notifications (key);
CREATE INDEX notifications_email ON notifications (email_key);
CREATE TABLE idempotency_keys (
    seq INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    value TEXT NOT NULL,
    expires_at REAL NOT NULL
);
"""


async def test_a_ledger_of_an_earlier_version_gains_the_channels_column(tmp_path: Path) -> None:
    """A file written before ``channels`` opens: its rows read as before (None: every
    channel) and new rows keep the channels their requests named."""
    path = tmp_path / "ledger"
    old = "00000000-0000-4000-8000-000000000001"
    new = "00000000-0000-4000-8000-000000000002"
    now = time.time()
    with sqlite3.connect(path) as db:
        db.executescript(_SCHEMA_BEFORE_CHANNELS)
        db.execute(
            "INSERT INTO notifications (key, id, email_key, email, accepted_at, status)"
            " VALUES (?, ?, ?, ?, ?, 'queued')",
            (zlib.crc32(old.encode()), old, zlib.crc32(b"o@example.com"), "o@example.com", now),
        )
    db.close()
    first, second = _ledger(path), _ledger(path)
    await first.open()
    await second.open()
    try:
        first.accepted(new, now, "n@example.com", ())

        async def stored() -> NotificationStatus:
            status = await second.status(new)
            assert status is not None
            return status

        status = await eventually(stored, message="the new row in the file")
        earlier = await second.status(old)
    finally:
        await first.close()
        await second.close()
    assert status.channels == ()
    assert earlier is not None
    assert (earlier.email, earlier.status, earlier.channels) == ("o@example.com", "queued", None)


async def test_another_process_lists_only_the_log_for_a_notification_to_the_log_only(
    tmp_path: Path,
) -> None:
    """With email on, a notification whose request named only the log is answered by the
    other process (which did not accept it) with the log alone, in ``GET /notifications/{id}``
    and in the activity log: not with an email "queued" forever. One that named none lists
    email too."""
    settings = make_settings(tmp_path, smtp_url="smtp://127.0.0.1:9", smtp_from="me@example.com")
    async with running(settings) as first, running(settings) as second:
        log_only = await first.post(
            "/send-notification/l@example.com", json={"message": "x", "channels": ["log"]}
        )
        plain = await first.post("/send-notification/p@example.com", json={"message": "y"})
        assert log_only.status_code == plain.status_code == 200, log_only.text
        there = await status_of(second, log_only.headers["location"], "written")
        everywhere = await status_of(second, plain.headers["location"], "written")
        listed = (await second.get("/notifications", params={"email": "l@example.com"})).json()
    assert sorted(there["channels"]) == ["log"]
    assert sorted(everywhere["channels"]) == ["email", "log"]
    assert [sorted(item["channels"]) for item in listed["items"]] == [["log"]]


# -- real uvicorn processes -------------------------------------------------------------------


def written_in_ledger(path: Path, ids: list[str]) -> bool:
    """Whether the ledger file has every one of ``ids`` as written."""
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT count(*) FROM notifications WHERE status = 'written' AND id IN"
            " (SELECT value FROM json_each(?))",
            (json.dumps(ids),),
        ).fetchone()
    return int(rows[0]) == len(ids)


@pytest.mark.slow
async def test_two_servers_on_one_ledger_answer_alike(tmp_path: Path) -> None:
    """Two uvicorn processes with the same settings: what one accepts, the other answers (the
    log status included), and a key one took is the other's too."""
    async with (
        uvicorn_server(tmp_path, output_name="a.txt") as first,
        uvicorn_server(tmp_path, output_name="b.txt") as second,
        http_client(first.url) as to_first,
        http_client(second.url) as to_second,
    ):
        accepted = await to_first.post("/send-notification/ada@example.com")
        here = await status_of(to_first, accepted.headers["location"], "written")
        there = await status_of(to_second, accepted.headers["location"], "written")
        key = {"Idempotency-Key": "order-1"}
        keyed = await to_first.post("/send-notification/bob@example.com", headers=key)
        replayed = await to_second.post("/send-notification/bob@example.com", headers=key)
    assert there == here
    assert replayed.headers["x-notification-id"] == keyed.headers["x-notification-id"]
    assert sorted(read_lines(tmp_path / "log.txt")) == [
        "notification for ada@example.com: some notification",
        "notification for bob@example.com: some notification",
    ]


@pytest.mark.slow
async def test_with_two_workers_every_location_answers_and_a_key_writes_once(
    tmp_path: Path,
) -> None:
    """Issue 24 as a new user saw it: ``uvicorn --workers 2``, 20 notifications and one key
    sent 10 times, each on a new connection (so both processes answer). Every ``Location``
    answers 200 ``written`` on every try, and the key makes one notification and one line."""
    port = free_port()
    url = f"http://{HOST}:{port}"
    fresh = httpx.Limits(max_keepalive_connections=0)  # a new connection per request
    async with (
        running_server(
            [*uvicorn_command(port), "--workers", "2"],
            url=url,
            cwd=tmp_path,
            env=service_env({"NOTIFY_LOG_PATH": str(tmp_path / "log.txt")}),
            output_path=tmp_path / "server.txt",
            ready_timeout=60,
        ),
        httpx.AsyncClient(base_url=url, limits=fresh, trust_env=False, timeout=10) as client,
    ):
        locations = [
            (await client.post(f"/send-notification/u{i}@example.com")).headers["location"]
            for i in range(20)
        ]
        key = {"Idempotency-Key": "order-1234"}
        keyed = [
            await client.post("/send-notification/ada@example.com", headers=key) for _ in range(10)
        ]
        ids = [location.rpartition("/")[2] for location in locations]
        await eventually(lambda: written_in_ledger(tmp_path / "log.txt.ledger", ids))
        answers = [(await client.get(location)).json()["status"] for location in locations * 3]
    assert answers == ["written"] * 60
    assert {response.status_code for response in keyed} == {200}
    assert len({response.headers["x-notification-id"] for response in keyed}) == 1
    lines = read_lines(tmp_path / "log.txt")
    assert lines.count("notification for ada@example.com: some notification") == 1
    assert len(lines) == 21


async def test_new_rows_are_indexed_in_the_order_their_ids_were_made(tmp_path: Path) -> None:
    """The ledger's id index takes a UUIDv7's time (not its CRC-32): notifications accepted in
    later milliseconds get larger keys, so new rows go to the end of the index (one page a
    batch, not a random page a row), and another process still finds each."""
    settings = make_settings(tmp_path)
    locations = []
    async with running(settings) as first, running(settings) as second:
        for _ in range(3):
            made = time.time_ns() // 1_000_000
            while time.time_ns() // 1_000_000 <= made:  # the next request in a later millisecond
                pass
            response = await first.post("/send-notification/ada@example.com")
            locations.append(response.headers["location"])
        for location in locations:
            await status_of(second, location, "written")
    with sqlite3.connect(settings.effective_ledger_path()) as db:
        keys = [key for (key,) in db.execute("SELECT key FROM notifications ORDER BY seq")]
    db.close()
    assert len(keys) == 3
    assert keys == sorted(keys)
    assert len(set(keys)) == 3
    assert min(keys) > 2**32  # not CRC-32s


def test_rows_numbered_from_1_again_after_the_file_emptied_are_kept(tmp_path: Path) -> None:
    """Every status expired (a quiet spell longer than NOTIFY_STATUS_TTL): the table is
    empty and SQLite numbers the next rows from 1 again, below where the last expiry stopped
    looking (``low``). The next expiry keeps them (they are new) and drops only what is
    expired (the old row numbered 0 here)."""
    with contextlib.closing(sqlite3.connect(tmp_path / "ledger.db")) as db:
        db.executescript(_SCHEMA)
        now = time.time()
        rows = [(seq, f"n{seq}@example.com", now) for seq in (1, 2, 3)]
        db.executemany(
            "INSERT INTO notifications (seq, key, id, email_key, email, accepted_at, status)"
            " VALUES (?, 0, ?, 0, ?, ?, 'written')",
            [
                (seq, f"id-{seq}", email, at)
                for seq, email, at in [(0, "old@example.com", 1.0), *rows]
            ],
        )
        low = _expire(db, _Expiry(now - 60, now, 100, 1001, pinned=False))
        kept = db.execute("SELECT seq FROM notifications ORDER BY seq").fetchall()
    assert kept == [(1,), (2,), (3,)]
    assert low <= 1


def test_a_withdrawal_that_comes_after_the_write_changes_nothing() -> None:
    """A request withdrawn (cancelled, timed out) once its line was written after all: the
    accepting process shows it written, as the shared file and every other process do."""
    statuses = StatusStore(limit=10, ttl=3600.0)
    statuses.accepted("n1", time.time(), "a@example.com")
    statuses.written(["n1"], 1)
    statuses.withdrawn("n1", "the request was cancelled before its write was confirmed")
    status = statuses.get("n1")
    assert status is not None
    assert (status.status, status.error) == ("written", None)
