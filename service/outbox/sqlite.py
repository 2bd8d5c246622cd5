"""The local outbox: pending deliveries in SQLite, shared by every process on the machine.

One row per (notification, channel): who to deliver to, what, and where it stands (``queued``,
``retrying``, ``delivered``, ``dead``), with its attempts, last error and next attempt. Rows are
added in batches, one transaction per batch, as the log gets one write per batch. A process
*claims* due rows with a lease (one ``UPDATE … RETURNING``, atomic in SQLite), so with
``--workers N`` each delivery is sent by one live process at a time; a process that dies leaves
its leases to expire, and another takes the rows over.

The standard library's ``sqlite3`` in WAL mode, used from one thread of its own per outbox
(``check_same_thread`` holds), so the event loop never waits on the database.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from service.outbox.base import (
    HISTORY,
    Delivery,
    DeliveryState,
    DeliveryStatus,
    Outcome,
    Pause,
    group_members,
    history_of,
    is_group,
    notification_rows,
)
from service.sinks.core import TargetError
from service.sinks.fs import holder_gone, process_token

__all__ = ["STATE_COLUMNS", "SqliteOutbox", "delivery_state"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT NOT NULL,
    channel TEXT NOT NULL,
    recipient TEXT NOT NULL,
    message TEXT NOT NULL,
    q TEXT,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    accepted_at REAL NOT NULL,
    retried_at REAL,
    next_attempt_at REAL NOT NULL,
    delivered_at REAL,
    lease_owner TEXT,
    lease_until REAL,
    history TEXT,
    subject TEXT,
    PRIMARY KEY (id, channel)
);
-- Partial: only what is pending, in the order it is due, so a claim reads the first rows of
-- its channel (no sort), and what is finished leaves it. (deliveries_due was its first form.)
DROP INDEX IF EXISTS deliveries_due;
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries (channel, next_attempt_at)
    WHERE status IN ('queued', 'retrying');
-- A channel paused by a dispatcher: what its waiting deliveries' statuses show.
CREATE TABLE IF NOT EXISTS pauses (
    channel TEXT PRIMARY KEY,
    until REAL NOT NULL,
    error TEXT NOT NULL
);
-- A channel disabled by a dispatcher (its receiver is gone), until an operator enables it:
-- every process sharing the outbox stops delivering it and shows it disabled.
CREATE TABLE IF NOT EXISTS disabled (
    channel TEXT PRIMARY KEY,
    reason TEXT NOT NULL
);
-- Partial: a new (queued) row is not in it, so adding costs nothing more.
CREATE INDEX IF NOT EXISTS deliveries_delivered ON deliveries (delivered_at)
    WHERE status = 'delivered';
"""
_PENDING = "('queued', 'retrying')"
_INSERT = (
    "INSERT OR IGNORE INTO deliveries"
    " (id, channel, recipient, message, q, subject, status, accepted_at, next_attempt_at)"
)
"""A new delivery (a repeated one is kept as it was)."""
_ADD = (
    f"{_INSERT} SELECT n.value ->> 1, c.value, n.value ->> 2, n.value ->> 3, n.value ->> 4,"
    " n.value ->> 5, 'queued', n.value ->> 0, ? FROM json_each(?) AS n, json_each(?) AS c"
    " WHERE n.value ->> 6 IS NULL OR c.value IN (SELECT value FROM json_each(n.value -> 6))"
)
"""A delivery for each notification line of a JSON array and each channel it goes to: every
channel, or those its request named (element 6 of its line)."""


class SqliteOutbox:
    """The outbox in the SQLite file ``path``; see the module docstring."""

    def __init__(
        self,
        path: Path,
        *,
        lease_seconds: float,
        owner: str | None = None,
        durable: bool = False,
    ) -> None:
        self.path = path
        # WAL with synchronous=NORMAL: a commit survives the process's death (SIGKILL), as a
        # write to the log does; with ``durable`` (NOTIFY_FSYNC=batch) each commit is also
        # fsynced, so it survives power loss, as the log's batches then do.
        self._synchronous = "FULL" if durable else "NORMAL"
        self._owner = owner or process_token()  # a later process can tell it is gone
        self._lease = lease_seconds
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        """Open (or create) the database, and give back the leases of processes on this
        machine that are gone (a killed process's deliveries are sent again at once, not when
        their leases expire). ``OSError`` or ``ValueError`` if it cannot be opened."""
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="outbox")
        try:
            await self._run(self._connect)
            await self._with_db(_release_leases_of_the_dead)
        except sqlite3.Error as exc:
            await self.close()
            raise ValueError(f"outbox {self.path}: {exc}") from None

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        db, self._db = self._db, None
        if db is not None:
            await asyncio.get_running_loop().run_in_executor(executor, db.close)
        executor.shutdown(wait=False)

    # -- adding ---------------------------------------------------------------------------

    async def add(self, lines: Sequence[str], channels: Sequence[str]) -> None:
        """Add a delivery per channel for each notification line, due now, in one transaction
        (a notification already there for a channel is kept as it is)."""
        now = time.time()

        def add(db: sqlite3.Connection) -> None:
            # The lines cross as one JSON text that SQLite unpacks and crosses with the
            # channels: one statement, during which this thread does not hold Python's GIL (a
            # row at a time, it would take it back for every row while the event loop wants
            # it). SQLite's text ends at a NUL, so a line holding one goes in as parameters.
            plain = [
                group_members(line) if is_group(line) else line
                for line in lines
                if "\\u0000" not in line
            ]
            with_nul = [
                row for line in lines if "\\u0000" in line for row in notification_rows(line)
            ]
            unpacked = (now, "[" + ",".join(plain) + "]", json.dumps(channels))
            if not with_nul:
                # One statement is one transaction by itself: in autocommit mode no BEGIN
                # and COMMIT go around it, two statements after each of which this thread
                # would take the GIL back from the event loop's thread.
                db.isolation_level = None
                try:
                    db.execute(_ADD, unpacked)
                finally:
                    db.isolation_level = "DEFERRED"
                return
            with db:
                db.execute(_ADD, unpacked)
                db.executemany(
                    f"{_INSERT} VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?)",
                    [
                        (id_, channel, email, message, q, subject, accepted_at, now)
                        for accepted_at, id_, email, message, q, subject, named in with_nul
                        for channel in channels
                        if named is None or channel in named
                    ],
                )

        try:
            await self._with_db(add)
        except sqlite3.Error as exc:  # a full disk, a locked database: retried by the core
            raise TargetError(f"{type(exc).__name__}: {exc}") from None

    # -- delivering -----------------------------------------------------------------------

    async def settle(
        self, channel: str, finished: Sequence[Outcome], claim: int = 0
    ) -> list[Delivery]:
        """Record ``finished``, then lease up to ``claim`` due deliveries of ``channel`` to
        this process, oldest first: one transaction (see ``Outbox.settle``)."""
        now = time.time()
        outcomes = [
            (
                outcome.status,
                outcome.error,
                outcome.next_attempt_at,
                outcome.at if outcome.status == "delivered" else None,
                outcome.delivery.id,
                outcome.delivery.channel,
                outcome.at,
            )
            for outcome in finished
        ]

        def settle(db: sqlite3.Connection) -> list[Delivery]:
            with db:
                if outcomes:
                    _record(db, outcomes, self._owner)
                if claim <= 0:
                    return []
                rows = db.execute(
                    "UPDATE deliveries SET lease_owner = ?, lease_until = ? WHERE rowid IN ("
                    " SELECT rowid FROM deliveries WHERE channel = ? AND status IN "
                    f"{_PENDING} AND next_attempt_at <= ?"
                    " AND (lease_until IS NULL OR lease_until < ?)"
                    " ORDER BY next_attempt_at LIMIT ?)"
                    " RETURNING id, channel, recipient, message, q, accepted_at,"
                    " COALESCE(retried_at, accepted_at), attempts, subject",
                    (self._owner, now + self._lease, channel, now, now, claim),
                ).fetchall()
            return sorted((Delivery(*row) for row in rows), key=lambda row: row.accepted_at)

        try:
            return await self._with_db(settle)
        except sqlite3.Error as exc:  # a full disk, a locked database: the next turn again
            raise TargetError(f"{type(exc).__name__}: {exc}") from None

    async def release(self, channel: str, deliveries: Sequence[Delivery]) -> None:
        """Give back the leases of ``deliveries`` this process holds, unattempted."""
        ids = json.dumps([delivery.id for delivery in deliveries])

        def release(db: sqlite3.Connection) -> None:
            with db:
                db.execute(
                    "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL"
                    " WHERE channel = ? AND lease_owner = ?"
                    " AND id IN (SELECT value FROM json_each(?))",
                    (channel, self._owner, ids),
                )

        await self._with_db(release)

    async def bury(self, channel: str, error: str) -> int:
        """Make every pending delivery of ``channel`` that no process holds dead with
        ``error`` (the channel is disabled); how many there were."""
        now = time.time()

        def bury(db: sqlite3.Connection) -> int:
            with db:
                cursor = db.execute(
                    "UPDATE deliveries SET status = 'dead', last_error = ? WHERE channel = ?"
                    f" AND status IN {_PENDING} AND (lease_until IS NULL OR lease_until < ?)",
                    (error, channel, now),
                )
            return cursor.rowcount

        return await self._with_db(bury)

    async def pause(self, channel: str, until: float, error: str) -> None:
        def pause(db: sqlite3.Connection) -> None:
            with db:
                db.execute(
                    "INSERT OR REPLACE INTO pauses (channel, until, error) VALUES (?, ?, ?)",
                    (channel, until, error),
                )

        await self._with_db(pause)

    async def resume(self, channel: str) -> None:
        def resume(db: sqlite3.Connection) -> None:
            with db:
                db.execute("DELETE FROM pauses WHERE channel = ?", (channel,))

        await self._with_db(resume)

    async def pauses(self) -> dict[str, Pause]:
        def pauses(db: sqlite3.Connection) -> dict[str, Pause]:
            rows = db.execute("SELECT channel, until, error FROM pauses").fetchall()
            return {str(channel): Pause(float(until), str(error)) for channel, until, error in rows}

        return await self._with_db(pauses)

    async def disable(self, channel: str, reason: str) -> None:
        def disable(db: sqlite3.Connection) -> None:
            with db:
                db.execute(
                    "INSERT OR REPLACE INTO disabled (channel, reason) VALUES (?, ?)",
                    (channel, reason),
                )

        await self._with_db(disable)

    async def enable(self, channels: Sequence[str]) -> list[str]:
        def enable(db: sqlite3.Connection) -> list[str]:
            with db:
                rows = db.execute(
                    "DELETE FROM disabled WHERE channel IN (SELECT value FROM json_each(?))"
                    " RETURNING channel",
                    (json.dumps(list(channels)),),
                ).fetchall()
            return [str(channel) for (channel,) in rows]

        return await self._with_db(enable)

    async def disabled(self) -> dict[str, str]:
        def disabled(db: sqlite3.Connection) -> dict[str, str]:
            rows = db.execute("SELECT channel, reason FROM disabled").fetchall()
            return {str(channel): str(reason) for channel, reason in rows}

        return await self._with_db(disabled)

    # -- reading, and the operator's retry --------------------------------------------------

    async def states(self, notification_id: str) -> list[DeliveryState]:
        """Every channel's delivery of one notification, as it stands (pauses included)."""
        now = time.time()

        def states(db: sqlite3.Connection) -> list[DeliveryState]:
            rows = db.execute(
                f"SELECT {STATE_COLUMNS}, p.until, p.error FROM deliveries AS d"
                " LEFT JOIN pauses AS p USING (channel) WHERE d.id = ? ORDER BY channel",
                (notification_id,),
            ).fetchall()
            found = []
            for *columns, until, error in rows:
                state = delivery_state(tuple(columns))
                found.append(state if until is None else Pause(until, error).over(state, now))
            return found

        return await self._with_db(states)

    async def listed(
        self, status: DeliveryStatus, *, limit: int, after: str | None
    ) -> list[DeliveryState]:
        """Deliveries in ``status``, by id, ``limit`` at a time after the id ``after``."""

        def listed(db: sqlite3.Connection) -> list[DeliveryState]:
            rows = db.execute(
                f"SELECT {STATE_COLUMNS} FROM deliveries WHERE status = ? AND id > ?"
                " ORDER BY id, channel LIMIT ?",
                (status, after or "", limit),
            ).fetchall()
            return [delivery_state(row) for row in rows]

        return await self._with_db(listed)

    async def retry_dead(self, notification_id: str) -> int:
        """Make the dead deliveries of one notification due now; how many there were."""
        now = time.time()

        def retry(db: sqlite3.Connection) -> int:
            with db:
                cursor = db.execute(
                    "UPDATE deliveries SET status = 'queued', next_attempt_at = ?,"
                    " retried_at = ? WHERE id = ? AND status = 'dead'",
                    (now, now, notification_id),
                )
            return cursor.rowcount

        return await self._with_db(retry)

    async def pending(self) -> int:
        """Deliveries not yet delivered nor dead (the outbox's depth)."""

        def pending(db: sqlite3.Connection) -> int:
            (count,) = db.execute(
                f"SELECT count(*) FROM deliveries WHERE status IN {_PENDING}"
            ).fetchone()
            return int(count)

        return await self._with_db(pending)

    async def next_due(self, channel: str) -> float | None:
        """When the earliest pending delivery of ``channel`` is due, if any."""

        def next_due(db: sqlite3.Connection) -> float | None:
            (due,) = db.execute(
                "SELECT min(max(next_attempt_at, coalesce(lease_until, 0))) FROM deliveries"
                f" WHERE channel = ? AND status IN {_PENDING}",
                (channel,),
            ).fetchone()
            return None if due is None else float(due)

        return await self._with_db(next_due)

    async def data_version(self) -> int:
        """SQLite's ``PRAGMA data_version``: a number that changes when another connection
        (another process: the API's intake, its operator's retry) commits to the outbox, and
        not for this outbox's own commits (a delivery process's ``OutboxChanges`` asks it to
        tell another process's new rows from its own claims and outcomes)."""

        def data_version(db: sqlite3.Connection) -> int:
            (version,) = db.execute("PRAGMA data_version").fetchone()
            return int(version)

        return await self._with_db(data_version)

    async def forget_finished(self, older_than: float) -> None:
        """Drop delivered rows finished before ``older_than`` (their status has expired)."""

        def forget(db: sqlite3.Connection) -> None:
            with db:
                db.execute(
                    "DELETE FROM deliveries WHERE status = 'delivered' AND delivered_at < ?",
                    (older_than,),
                )

        await self._with_db(forget)

    # -- the database thread ----------------------------------------------------------------

    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self._synchronous}")
        db.executescript(_SCHEMA)
        _add_missing_columns(db)
        db.isolation_level = "DEFERRED"  # `with db:` commits each batch as one transaction
        self._db = db

    async def _with_db(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            db = self._db
            if db is None:
                raise sqlite3.ProgrammingError("the outbox is closed")
            return work(db)

        return await self._run(run)

    async def _run(self, work: Callable[[], T]) -> T:
        executor = self._executor
        if executor is None:
            raise sqlite3.ProgrammingError("the outbox is closed")
        return await asyncio.get_running_loop().run_in_executor(executor, work)


_RECORD = (
    "UPDATE deliveries SET status = {status}, attempts = attempts + 1, last_error = {error},"
    " next_attempt_at = COALESCE({next_at}, next_attempt_at), delivered_at = {delivered_at},"
    " lease_owner = NULL, lease_until = NULL,"
    # The attempt, appended to the history in the row (no other row, no other index: the
    # row is written anyway), which keeps the last HISTORY.
    " history = json_insert(CASE WHEN json_array_length(history) >= {keep}"
    " THEN json_remove(history, '$[0]') ELSE coalesce(history, '[]') END,"
    " '$[#]', json_array({at}, {status}, {error}))"
)


def _record(db: sqlite3.Connection, outcomes: Sequence[tuple[object, ...]], owner: str) -> None:
    """Record the outcomes (``status, error, next attempt, delivered at, id, channel, at``) of
    deliveries ``owner`` still holds: one whose lease ran out and another process took over
    is that process's to record (a late "retrying" must not undo its "delivered").
    They cross as one JSON text that SQLite unpacks: one statement, during which this thread
    does not take Python's GIL back once per outcome while the event loop wants it. An error
    holding a NUL (where SQLite's JSON text would end) goes in as parameters."""
    text = json.dumps(outcomes)
    if "\\u0000" not in text:
        db.execute(
            _RECORD.format(
                status="o.value ->> 0",
                error="o.value ->> 1",
                next_at="o.value ->> 2",
                delivered_at="o.value ->> 3",
                at="o.value ->> 6",
                keep=HISTORY,
            )
            + " FROM json_each(?1) AS o"
            " WHERE deliveries.id = o.value ->> 4 AND deliveries.channel = o.value ->> 5"
            " AND deliveries.lease_owner = ?2",
            (text, owner),
        )
        return
    db.executemany(
        _RECORD.format(
            status="?1", error="?2", next_at="?3", delivered_at="?4", at="?7", keep=HISTORY
        )
        + " WHERE id = ?5 AND channel = ?6 AND lease_owner = ?8",
        [(*outcome, owner) for outcome in outcomes],
    )


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """Bring an outbox written before ``q`` and ``retried_at``, before ``history``, or before
    ``subject``, up to date. Its webhook deliveries held their whole payload as their
    message: it becomes the message and ``q`` again (the payload is now built when sent)."""
    columns = {str(row[1]) for row in db.execute("PRAGMA table_info(deliveries)")}
    if {"q", "history", "subject"} <= columns:
        return
    db.execute("BEGIN IMMEDIATE")  # one transaction: another process may open it too
    try:
        columns = {str(row[1]) for row in db.execute("PRAGMA table_info(deliveries)")}
        if "q" not in columns:
            db.execute("ALTER TABLE deliveries ADD COLUMN q TEXT")
            db.execute("ALTER TABLE deliveries ADD COLUMN retried_at REAL")
            db.execute(
                "UPDATE deliveries SET q = message ->> '$.q', message = message ->> '$.message'"
                " WHERE channel LIKE 'webhook-%' AND json_valid(message)"
            )
        if "history" not in columns:  # the attempts' history (issue 24)
            db.execute("ALTER TABLE deliveries ADD COLUMN history TEXT")
        if "subject" not in columns:  # a request's own subject (issue 25)
            db.execute("ALTER TABLE deliveries ADD COLUMN subject TEXT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _release_leases_of_the_dead(db: sqlite3.Connection) -> None:
    """Clear the leases whose holder is a process of this machine that is gone."""
    owners = db.execute("SELECT DISTINCT lease_owner FROM deliveries WHERE lease_owner IS NOT NULL")
    gone = [(str(owner),) for (owner,) in owners if holder_gone(str(owner))]
    if gone:
        with db:
            db.executemany(
                "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL"
                " WHERE lease_owner = ?",
                gone,
            )


STATE_COLUMNS = (
    "id, channel, status, attempts, last_error, accepted_at, next_attempt_at, delivered_at,"
    " recipient, history"
)


def delivery_state(row: tuple[object, ...]) -> DeliveryState:
    """A delivery's state from a row of ``STATE_COLUMNS``."""
    (
        notification_id,
        channel,
        status,
        attempts,
        last_error,
        accepted_at,
        next_at,
        delivered_at,
        recipient,
        history,
    ) = row
    pending = status in ("queued", "retrying")
    return DeliveryState(
        id=str(notification_id),
        channel=str(channel),
        status=status,  # type: ignore[arg-type]
        attempts=int(attempts),  # type: ignore[call-overload]
        last_error=None if last_error is None else str(last_error),
        accepted_at=float(accepted_at),  # type: ignore[arg-type]
        next_attempt_at=float(next_at) if pending else None,  # type: ignore[arg-type]
        delivered_at=None if delivered_at is None else float(delivered_at),  # type: ignore[arg-type]
        recipient=str(recipient),
        history=history_of(None if history is None else str(history)),
    )
