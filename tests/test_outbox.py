"""The SQLite outbox on real files: batches in, leases out, outcomes recorded, dead letters."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.outbox.sqlite import NewDelivery, SqliteOutbox


def _rows(*names: str) -> list[NewDelivery]:
    return [(f"id-{name}", "email", f"{name}@example.com", f"hi {name}", 1.0) for name in names]


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[SqliteOutbox]:
    box = SqliteOutbox(tmp_path / "outbox.db", owner="a", lease_seconds=60)
    await box.open()
    yield box
    await box.close()


async def test_added_deliveries_are_claimed_once_in_order(outbox: SqliteOutbox) -> None:
    """A batch goes in; claims hand each delivery out once, oldest first, while leased."""
    await outbox.add(_rows("a", "b", "c"))
    await outbox.add(_rows("a"))  # a repeated id is kept once
    first = await outbox.claim("email", 2)
    second = await outbox.claim("email", 10)
    assert [d.recipient for d in first + second] == [
        "a@example.com",
        "b@example.com",
        "c@example.com",
    ]
    assert await outbox.claim("email", 10) == []
    assert await outbox.pending() == 3


async def test_two_processes_never_hold_the_same_delivery(tmp_path: Path) -> None:
    """Two outboxes on one file (two worker processes) split the work; nothing twice."""
    path = tmp_path / "outbox.db"
    one = SqliteOutbox(path, owner="one", lease_seconds=60)
    two = SqliteOutbox(path, owner="two", lease_seconds=60)
    await one.open()
    await two.open()
    try:
        await one.add(_rows(*(str(i) for i in range(100))))
        taken: list[str] = []
        while batch := (await one.claim("email", 7)) + (await two.claim("email", 5)):
            taken += [delivery.id for delivery in batch]
        assert sorted(taken) == sorted(f"id-{i}" for i in range(100))
    finally:
        await one.close()
        await two.close()


async def test_a_dead_processes_lease_expires_and_another_takes_over(tmp_path: Path) -> None:
    """A lease not finished in time (its holder died) is claimed by the next process."""
    path = tmp_path / "outbox.db"
    dying = SqliteOutbox(path, owner="dying", lease_seconds=-1.0)  # already expired
    await dying.open()
    await dying.add(_rows("x"))
    [held] = await dying.claim("email", 1)
    await dying.close()
    heir = SqliteOutbox(path, owner="heir", lease_seconds=60)
    await heir.open()
    try:
        [taken] = await heir.claim("email", 1)
        assert taken.id == held.id
    finally:
        await heir.close()


async def test_outcomes_are_recorded_and_dead_letters_can_be_retried(
    outbox: SqliteOutbox,
) -> None:
    """delivered, retrying (not due before its time), dead; an operator's retry makes the dead
    one due again; listing pages by id."""
    await outbox.add(_rows("ok", "later", "gone1", "gone2"))
    claimed = {d.id: d for d in await outbox.claim("email", 10)}
    await outbox.delivered(claimed["id-ok"])
    await outbox.retry_at(claimed["id-later"], "451 try later", time.time() + 3600)
    await outbox.dead(claimed["id-gone1"], "550 no such mailbox")
    await outbox.dead(claimed["id-gone2"], "550 no such mailbox")
    [ok] = await outbox.states("id-ok")
    assert (ok.status, ok.attempts, ok.delivered_at is not None) == ("delivered", 1, True)
    [later] = await outbox.states("id-later")
    assert (later.status, later.last_error) == ("retrying", "451 try later")
    assert later.next_attempt_at is not None
    assert later.next_attempt_at > time.time()
    assert await outbox.claim("email", 10) == []  # the retry is not due yet
    page = await outbox.listed("dead", limit=1, after=None)
    assert [state.id for state in page] == ["id-gone1"]
    page = await outbox.listed("dead", limit=1, after=page[-1].id)
    assert [state.id for state in page] == ["id-gone2"]
    assert await outbox.retry_dead("id-gone1") == 1
    assert await outbox.retry_dead("id-ok") == 0
    [again] = await outbox.claim("email", 10)
    assert (again.id, again.attempts) == ("id-gone1", 1)
    assert await outbox.pending() == 2
