"""Statuses and Idempotency-Keys in SQLite, shared by every process on the machine
(``NOTIFY_BACKEND=local``: with ``--workers N`` every process opens the same file).

The file (``NOTIFY_LEDGER_PATH``, default ``<log>.ledger``) is SQLite in WAL mode, like the
outbox, but a file of its own: a delivery process watches the outbox's ``data_version`` to
learn of new deliveries, and the ledger's commits (every 100 ms under load) would wake it for
nothing. Its tables:

- ``notifications``: one row per accepted notification: its id, email and acceptance time,
  its log status (``queued``, ``written`` or ``failed``, with ``written_at``, attempts and
  the error), and ``channels``: NULL when its request named none (it goes to every
  configured channel: most), else the JSON array of the delivery channels it goes to (``[]``:
  the log only). ``seq`` is the order rows came in: expiry drops rows from its front, past
  ``NOTIFY_STATUS_TTL``, and beyond the newest ``NOTIFY_STATUS_MAX_ENTRIES``.
- ``idempotency_keys``: a key and what it holds, ``<SHA-256 of the request> <id>`` (as in
  Redis), until ``expires_at`` (``NOTIFY_IDEMPOTENCY_TTL``); bounded the same way.

**Writes are batched, off the event loop.** A request only appends its id, email and time to
three lists (plain values: nothing the garbage collector tracks; no I/O) and, only when it
named its channels, puts them in a dict by id; the log's writer tells each batch's outcome
(``written``, ``failed``) as it does the ``StatusStore``. One task takes what gathered,
after lingering ``linger`` seconds for more, and hands it to the ledger's own thread, which
writes it in one transaction. The rows cross as one JSON text that SQLite unpacks
(``json_each``), as the outbox's do, so the thread does not take Python's GIL back once per
row while the event loop wants it. A notification whose line was written before its row went
in (most: the log lingers 5 ms, the ledger 100) is inserted as ``written`` at once: one
insert, not an insert and an update. The linger is long (100 ms) because a row is dear: its
two indexes put it on two random pages, each written to the WAL at the commit, and with
``--workers N`` each process's transaction first reads again the pages another changed;
larger batches share pages and transactions (``uvicorn --workers 2``: ~4,300 -> ~5,100
requests a second against 5,600 without the ledger when it lingered 25 ms, ad hoc).

**Reads.** The process that accepted a notification answers from its own ``StatusStore``,
which is never behind the file for what it accepted; any other process reads the file (on a
second thread and connection, so a read never waits for a batch), and sees a notification
once its batch is in: within about ``linger`` of its acceptance.

**Claims are atomic.** A key is claimed on the ledger's thread in one transaction that
begins with a write, so it holds SQLite's write lock, against every process, from its first
statement to its commit: drop the key if it expired, insert it unless present, else read
what holds it. Only a request with a key awaits this (one hop to the thread); the event loop
never waits on SQLite.

A failing file (a full disk) is retried with backoff, one log line per failure episode, and
named by ``/readyz``; a claim that fails is a 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from service.ids import time_key
from service.outbox.base import DeliveryState, Pause
from service.outbox.sqlite import STATE_COLUMNS, delivery_state
from service.records import Kind
from service.retry import Backoff, Episode
from service.sinks.base import SinkHealth, SinkUnavailable
from service.status import (
    LOG_STATUSES,
    ActivityEntry,
    ActivityQuery,
    BadCursor,
    Fingerprint,
    NotificationStatus,
    State,
    StatusStore,
    key_holder,
    key_value,
)

__all__ = ["SqliteLedger"]

logger = logging.getLogger("service.ledger")

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS notifications (
    seq INTEGER PRIMARY KEY,
    key INTEGER NOT NULL,
    id TEXT NOT NULL,
    email_key INTEGER NOT NULL,
    email TEXT NOT NULL,
    accepted_at REAL NOT NULL,
    status TEXT NOT NULL,
    written_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    channels TEXT
);
CREATE INDEX IF NOT EXISTS notifications_key ON notifications (key);
-- (email_key, seq): a recipient's notifications, newest first, without a sort.
CREATE INDEX IF NOT EXISTS notifications_email ON notifications (email_key);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    seq INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    value TEXT NOT NULL,
    expires_at REAL NOT NULL
);
"""

_INSERT = (
    "INSERT INTO notifications"
    " (key, id, email_key, email, accepted_at, status, written_at, attempts, error, channels)"
    " SELECT n.value ->> 0, n.value ->> 1, n.value ->> 2, n.value ->> 3, n.value ->> 4,"
    " n.value ->> 5, n.value ->> 6, n.value ->> 7, n.value ->> 8, n.value ->> 9"
    " FROM json_each(?) AS n"
)
"""The batch's new rows, ``[key, id, email_key, email, accepted_at, status, written_at,
attempts, error]`` each, and ``channels`` (a JSON array) tenth when the request named them;
in one JSON text. A row without a tenth has NULL channels (``->>`` of a missing element)."""

_THESE = "key IN (SELECT value FROM json_each(?)) AND id IN (SELECT value FROM json_each(?))"
_WRITTEN = (
    "UPDATE notifications SET status = 'written', written_at = ?, attempts = ?, error = NULL"
    f" WHERE {_THESE}"
)
_FAILED = (
    "UPDATE notifications SET status = 'failed', attempts = ?, error = ?"
    f" WHERE {_THESE} AND status != 'written'"
)
"""A line written once is never reported failed again (a withdrawn line whose write had
begun)."""

_QUEUED_TAIL = ',"queued",null,0,null]'
_ENCODE = json.JSONEncoder().encode

_CHECKPOINT_PAGES = 10_000
"""WAL pages (4 KiB) before a commit copies them into the file (SQLite's default is 1,000): a
batch's rows land on random index pages, and a page changed by many batches between two
checkpoints is copied once. With two processes writing, 1,000 -> 16,000 took a row's cost on
the ledger's thread from ~74 to ~61 µs (ad hoc, a micro-benchmark of 54-row batches)."""

_BUSY_TIMEOUT = 5.0
"""Seconds a statement waits for another process's write lock before it fails."""

EXPIRE_INTERVAL = 1.0
"""Seconds between drops of expired rows and keys."""

SWEEP_INTERVAL = 60.0
"""Seconds between looks at the pinned notifications again (whose deliveries may be gone)."""


class _Change:
    """One batch's log outcome, for the notifications ``ids``."""

    __slots__ = ("at", "attempts", "error", "ids", "state", "tail")

    def __init__(
        self, state: State, at: float | None, attempts: int, error: str | None, ids: list[str]
    ) -> None:
        self.state, self.at, self.attempts, self.error, self.ids = state, at, attempts, error, ids
        self.tail = f",{_ENCODE(state)},{_ENCODE(at)},{attempts},{_ENCODE(error)}]"
        """A new row's JSON after its id, email and time (see ``_INSERT``)."""


def _batch(
    ids: Sequence[str],
    emails: Sequence[str],
    times: Sequence[float],
    changes: Sequence[_Change],
    named: Mapping[str, tuple[str, ...]] | None = None,
) -> tuple[str, list[tuple[_Change, list[str]]]]:
    """The batch's new rows as ``_INSERT``'s JSON text, each with its latest outcome in this
    batch (and its channels, for those in ``named``: the requests that named them); and the
    outcomes of rows already in the file (earlier batches), to update."""
    latest: dict[str, _Change] = {}
    new = set(ids) if changes else set()
    earlier: list[tuple[_Change, list[str]]] = []
    for change in changes:
        rest = []
        for notification_id in change.ids:
            if notification_id not in new:
                rest.append(notification_id)
                continue
            held = latest.get(notification_id)
            if change.state == "failed" and held is not None and held.state == "written":
                continue
            latest[notification_id] = change
        if rest:
            earlier.append((change, rest))
    # Ids are the service's own (``service.ids.new_id``: hex and dashes), safe in JSON as
    # they are; an email is encoded (quotes, non-ASCII).
    if not named:  # the usual batch: no request in it named its channels
        rows = ",".join(
            [
                f'[{_id_key(notification_id)},"{notification_id}",{_crc(email)},{_ENCODE(email)},'
                f"{at!r}"
                + (_QUEUED_TAIL if (last := latest.get(notification_id)) is None else last.tail)
                for notification_id, email, at in zip(ids, emails, times, strict=True)
            ]
        )
    else:
        rows = ",".join(
            [
                f'[{_id_key(notification_id)},"{notification_id}",{_crc(email)},{_ENCODE(email)},'
                f"{at!r}" + _tail(latest.get(notification_id), named.get(notification_id))
                for notification_id, email, at in zip(ids, emails, times, strict=True)
            ]
        )
    return f"[{rows}]", earlier


def _tail(change: _Change | None, channels: tuple[str, ...] | None) -> str:
    """A new row's JSON after its time: its outcome, then its channels when named."""
    tail = _QUEUED_TAIL if change is None else change.tail
    return tail if channels is None else f"{tail[:-1]},{_ENCODE(channels)}]"


def _write(
    db: sqlite3.Connection,
    ids: Sequence[str],
    emails: Sequence[str],
    times: Sequence[float],
    changes: Sequence[_Change],
    expiry: _Expiry | None,
    named: Mapping[str, tuple[str, ...]] | None = None,
) -> int | None:
    """One batch, in one transaction (on the ledger's thread); with ``expiry``, the new
    ``low`` (see ``_expire``)."""
    rows, earlier = _batch(ids, emails, times, changes, named)
    with db:
        if ids:
            db.execute(_INSERT, (rows,))
        for change, rest in earlier:
            these = (
                json.dumps([_id_key(notification_id) for notification_id in rest]),
                json.dumps(rest),
            )
            if change.state == "written":
                db.execute(_WRITTEN, (change.at, change.attempts, *these))
            else:
                db.execute(_FAILED, (change.attempts, change.error, *these))
        return None if expiry is None else _expire(db, expiry)


class _Expiry(NamedTuple):
    status_horizon: float
    """Notifications accepted before it go (unless pinned)."""
    now: float
    """Keys that expired by then go."""
    limit: int
    """All but the newest ``limit`` of each go (pinned or not: the bound)."""
    low: int
    """Notifications below this ``seq`` were looked at before: only pinned ones are left."""
    pinned: bool
    """The outbox is attached: a notification it still has a delivery of is kept (pending,
    dead, or delivered less than ``NOTIFY_STATUS_TTL`` ago: the outbox keeps those that long),
    so the activity log answers for a delivery retried for a day, or dead."""


def _expire(db: sqlite3.Connection, expiry: _Expiry) -> int:
    """Drop expired notifications and keys, from the front of ``seq`` (a scan of just what
    goes, and the pinned rows from ``low`` on), and all but the newest ``limit`` of each.
    Returns the next ``low``."""
    horizon, now, limit, low, pinned = expiry
    (top,) = db.execute("SELECT coalesce(max(seq), 0) FROM notifications").fetchone()
    if low > top + 1:
        # The table was emptied and SQLite numbers rows from 1 again: ``low`` is of the old
        # numbering, and would make every new row look expired. Look from the start.
        low = 0
    (cut,) = db.execute(
        "SELECT coalesce((SELECT seq FROM notifications WHERE seq >= ? AND accepted_at > ?"
        " ORDER BY seq LIMIT 1), (SELECT max(seq) + 1 FROM notifications), ?)",
        (low, horizon, low),
    ).fetchone()
    if pinned:
        db.execute(
            "DELETE FROM notifications WHERE seq >= ? AND seq < ? AND NOT EXISTS"
            " (SELECT 1 FROM outbox.deliveries AS d WHERE d.id = notifications.id)",
            (low, cut),
        )
    else:
        db.execute("DELETE FROM notifications WHERE seq < ?", (cut,))
    db.execute(
        "DELETE FROM idempotency_keys WHERE seq < coalesce((SELECT seq FROM idempotency_keys"
        " WHERE expires_at > ? ORDER BY seq LIMIT 1), (SELECT max(seq) + 1 FROM idempotency_keys))",
        (now,),
    )
    for table in ("notifications", "idempotency_keys"):
        db.execute(f"DELETE FROM {table} WHERE seq <= (SELECT max(seq) FROM {table}) - ?", (limit,))
    return int(cut)


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """Bring a file written before ``channels`` up to date: its rows keep NULL there (every
    channel, as their requests could not name any)."""
    columns = {str(row[1]) for row in db.execute("PRAGMA table_info(notifications)")}
    if "channels" in columns:
        return
    db.execute("BEGIN IMMEDIATE")  # one transaction: another process may open it too
    try:
        columns = {str(row[1]) for row in db.execute("PRAGMA table_info(notifications)")}
        if "channels" not in columns:  # the channels a request named (issue 25)
            db.execute("ALTER TABLE notifications ADD COLUMN channels TEXT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _claim(
    db: sqlite3.Connection, key: str, claimed: str, now: float, expires: float
) -> str | None:
    """Take ``key`` for ``claimed`` unless it is held: None; else what holds it. One
    transaction that begins with a write: SQLite's write lock is held from its first statement,
    so no other process claims between the look and the insert."""
    with db:
        db.execute("DELETE FROM idempotency_keys WHERE key = ? AND expires_at <= ?", (key, now))
        inserted = db.execute(
            "INSERT INTO idempotency_keys (key, value, expires_at) VALUES (?, ?, ?)"
            " ON CONFLICT (key) DO NOTHING RETURNING value",
            (key, claimed, expires),
        ).fetchall()
        if inserted:
            return None
        (held,) = db.execute("SELECT value FROM idempotency_keys WHERE key = ?", (key,)).fetchone()
    return str(held)


class SqliteLedger:
    """The local backend's ``Ledger`` and ``Statuses``, and the log sinks' listener; see the
    module docstring. Build one per lifespan run (its task and threads are the run's)."""

    def __init__(
        self,
        path: Path,
        *,
        local: StatusStore,
        status_ttl: float,
        idempotency_ttl: float,
        max_entries: int,
        linger: float = 0.1,
        check_interval: float = 1.0,
        retry: Backoff | None = None,
        durable: bool = False,
        outbox: Path | None = None,
    ) -> None:
        self.path = path
        self._outbox = outbox
        """The SQLite outbox, when email or webhooks are on: attached to both connections,
        for the deliveries the activity log shows and the pins expiry keeps."""
        """The file (its owner may place it elsewhere before ``open``)."""
        self._local = local
        self._status_ttl = status_ttl
        self._key_ttl = idempotency_ttl
        self._limit = max_entries
        self._linger = linger
        self._check_interval = check_interval
        self._retry = retry or Backoff()
        # As the outbox: a commit survives the process's death; with ``durable``
        # (NOTIFY_FSYNC=batch) a power loss too.
        self._synchronous = "FULL" if durable else "NORMAL"
        self._ids: list[str] = []
        self._emails: list[str] = []
        self._times: list[float] = []
        """The rows not yet handed to the thread, as parallel lists of plain values."""
        self._named: dict[str, tuple[str, ...]] = {}
        """The channels of those rows whose requests named them (most did not: no entry)."""
        self._changes: list[_Change] = []
        """The log outcomes not yet handed to the thread, in the order they came."""
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._closing = False
        self._expire_at = 0.0
        self._sweep_at = 0.0
        self._low = 0
        self._episode = Episode(
            logger,
            f"ledger {path}",
            failing="cannot record statuses: {error}; keeping them and retrying",
            recovered="recording statuses again after {seconds:.1f} s",
        )
        self._stopped: str | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._write_db: sqlite3.Connection | None = None
        self._read_db: sqlite3.Connection | None = None
        self._task: asyncio.Task[None] | None = None

    # -- life cycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Open (or create) the file, and start the batch task. ``ValueError`` (naming the
        file) if it cannot be opened."""
        self._episode.what = f"ledger {self.path}"
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="ledger-write")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="ledger-read")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._writer, self._connect_writer)
            await loop.run_in_executor(self._reader, self._connect_reader)
        except (sqlite3.Error, OSError) as exc:
            await self.close()
            raise ValueError(f"ledger {self.path}: {exc}") from None
        self._task = asyncio.create_task(self._run(), name=f"ledger {self.path}")

    async def close(self) -> None:
        """Write what is pending (one attempt), then close the file. Call it after the log's
        writers have drained, so that their last outcomes are in."""
        task, self._task = self._task, None
        if task is not None:
            self._closing = True
            self._stop.set()
            self._wake.set()
            await task
        loop = asyncio.get_running_loop()
        for executor, attribute in ((self._writer, "_write_db"), (self._reader, "_read_db")):
            db = getattr(self, attribute)
            setattr(self, attribute, None)
            if executor is not None and db is not None:
                await loop.run_in_executor(executor, db.close)
        for executor in (self._writer, self._reader):
            if executor is not None:
                executor.shutdown(wait=False)
        self._writer = self._reader = None

    def health(self) -> SinkHealth:
        """For ``/readyz``: failing while batches cannot be written."""
        task = self._task
        return SinkHealth(
            name=f"ledger {self.path}",
            running=task is not None and not task.done(),
            open=self._write_db is not None,
            queued=len(self._ids),
            capacity=self._limit,
            error=self._stopped or self._episode.error,
        )

    # -- what the service records (``Statuses``) ----------------------------------------------

    def accepted(
        self,
        notification_id: str,
        at: float,
        email: str = "",
        channels: tuple[str, ...] | None = None,
    ) -> None:
        """Once per request: a plain call, three appends (and an entry in ``_named`` when the
        request named its channels)."""
        self._local.accepted(notification_id, at, email, channels)
        ids = self._ids
        ids.append(notification_id)
        self._emails.append(email)
        self._times.append(at)
        if channels is not None:
            self._named[notification_id] = channels
        if len(ids) == 1:  # the first of a batch: the task may be waiting for it
            self._wake.set()

    def withdrawn(self, notification_id: str, reason: str) -> None:
        self._local.withdrawn(notification_id, reason)
        status = self._local.get(notification_id)
        attempts = status.attempts if status is not None else 0
        self._add(_Change("failed", None, attempts, reason, [notification_id]))

    # -- the log sinks' listener ------------------------------------------------------------

    def written(
        self,
        ids: Sequence[str],
        attempts: int,
        seconds: float = 0.0,
        kinds: Sequence[Kind] = (),
    ) -> None:
        now = time.time()
        self._local.written_at(ids, attempts, now)
        self._add(_Change("written", now, attempts, None, _notifications(ids, kinds)))

    def failed(self, ids: Sequence[str], error: str, attempts: int) -> None:
        self._local.failed(ids, error, attempts)
        self._add(_Change("failed", None, attempts, error, list(ids)))

    def _add(self, change: _Change) -> None:
        if change.ids:
            self._changes.append(change)
            self._wake.set()

    # -- the Ledger protocol ----------------------------------------------------------------

    async def claim(self, key: str, fingerprint: Fingerprint, notification_id: str) -> str | None:
        claimed = key_value(fingerprint, notification_id)
        now = time.time()
        try:
            held = await self._on_writer(
                lambda db: _claim(db, key, claimed, now, now + self._key_ttl)
            )
        except sqlite3.Error as exc:
            raise SinkUnavailable(f"ledger: cannot claim the Idempotency-Key now: {exc}") from None
        return None if held is None else key_holder(held, claimed)

    async def forget(self, key: str, notification_id: str) -> None:
        def forget(db: sqlite3.Connection) -> None:
            with db:
                db.execute(
                    "DELETE FROM idempotency_keys WHERE key = ? AND substr(value, 66) = ?",
                    (key, notification_id),
                )

        try:
            await self._on_writer(forget)
        except sqlite3.Error as exc:
            # It then expires with its TTL; until then a retry with it gets the id of the
            # request that was refused (503) instead of a new one.
            logger.warning(
                "ledger %s: cannot free an Idempotency-Key (%s); it is freed when it expires",
                self.path,
                exc,
            )

    async def status(self, notification_id: str) -> NotificationStatus | None:
        """This process's own record first (never behind the file), else the file's (which
        keeps it until expiry drops it, within ``EXPIRE_INTERVAL`` of its TTL, or longer while
        pinned by its deliveries)."""
        status = self._local.get(notification_id)
        if status is not None:
            return status

        def read(db: sqlite3.Connection) -> NotificationStatus | None:
            row = db.execute(
                f"SELECT {_STATUS_COLUMNS} FROM notifications WHERE key = ? AND id = ?",
                (_id_key(notification_id), notification_id),
            ).fetchone()
            return None if row is None else _status(row)

        try:
            return await self._on_reader(read)
        except sqlite3.Error as exc:
            raise SinkUnavailable(f"ledger: cannot read statuses now: {exc}") from None

    async def activity(self, query: ActivityQuery) -> tuple[list[ActivityEntry], str | None]:
        """The page ``query`` asks for, newest first (by ``seq``: the order rows came in),
        with each notification's deliveries from the attached outbox, in one read
        transaction. A recipient's page is a walk of the ``email_key`` index; ``next`` is the
        last row's ``seq``."""
        after = _cursor(query.after)
        where, params = _filters(query, after, outboxed=self._outbox is not None)
        sql = (
            f"SELECT n.seq, {_STATUS_COLUMNS} FROM notifications AS n WHERE {where}"
            " ORDER BY n.seq DESC LIMIT ?"
        )
        now = time.time()

        def read(db: sqlite3.Connection) -> tuple[list[ActivityEntry], str | None]:
            db.execute("BEGIN")
            try:
                # One row more than the page: whether there is a next page at all (a last
                # page of exactly ``limit`` gets no ``next`` leading to an empty one).
                rows = db.execute(sql, (*params, query.limit + 1)).fetchall()
                more = len(rows) > query.limit
                rows = rows[: query.limit]
                found = {row[1]: _status(row[1:]) for row in rows}
                deliveries = _deliveries(db, list(found), now) if self._outbox else {}
            finally:
                db.execute("COMMIT")
            entries = [
                ActivityEntry(notification_id, status, deliveries.get(notification_id, []))
                for notification_id, status in found.items()
            ]
            return entries, str(rows[-1][0]) if more else None

        try:
            return await self._on_reader(read)
        except sqlite3.Error as exc:
            raise SinkUnavailable(f"ledger: cannot read the activity log now: {exc}") from None

    # -- the batch task ---------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._write_forever()
        except Exception as exc:  # a bug: loud once; statuses then stay in this process
            self._stopped = f"stopped: {type(exc).__name__}: {exc}"
            logger.exception("ledger %s: stopped; statuses are no longer shared", self.path)

    async def _write_forever(self) -> None:
        failures = 0
        while True:
            if not self._ids and not self._changes:
                if self._closing:
                    return
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._check_interval):
                        await self._wake.wait()
            if (self._ids or self._changes) and not failures and not self._closing:
                await self._pause(self._linger)  # more rows come meanwhile under load
            try:
                await self._flush()
            except sqlite3.Error as exc:
                failures += 1
                self._episode.fail(f"{type(exc).__name__}: {exc}", waiting=len(self._ids))
                if self._closing:
                    logger.error(
                        "ledger %s: %d statuses not recorded by shutdown (%s)",
                        self.path,
                        len(self._ids),
                        exc,
                    )
                    return
                await self._pause(self._retry.delay(failures - 1))
                continue
            if failures:
                failures = 0
                self._episode.recover()

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds``, or until ``close``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()

    async def _flush(self) -> None:
        """Hand what gathered to the thread, in one transaction; on failure it is kept (the
        oldest rows dropped past the bound, as expiry would drop them)."""
        ids, emails, times, changes = self._ids, self._emails, self._times, self._changes
        named = self._named or None  # None: no request of the batch named its channels
        now = time.monotonic()
        expiry = None
        if now >= self._expire_at:
            self._expire_at = now + EXPIRE_INTERVAL
            if now >= self._sweep_at:
                self._sweep_at, self._low = now + SWEEP_INTERVAL, 0
            wall = time.time()
            pinned = self._outbox is not None
            expiry = _Expiry(wall - self._status_ttl, wall, self._limit, self._low, pinned)
        if not ids and not changes and expiry is None:
            return
        self._ids, self._emails, self._times, self._changes = [], [], [], []
        if named is not None:
            self._named = {}
        try:
            low = await self._on_writer(
                lambda db: _write(db, ids, emails, times, changes, expiry, named)
            )
            if low is not None:
                self._low = low
        except BaseException:
            self._ids[:0], self._emails[:0], self._times[:0] = ids, emails, times
            self._changes[:0] = changes
            if named is not None:
                named.update(self._named)
                self._named = named
            excess = len(self._ids) - self._limit
            if excess > 0:
                if self._named:
                    for dropped in self._ids[:excess]:
                        self._named.pop(dropped, None)
                del self._ids[:excess], self._emails[:excess], self._times[:excess]
            if expiry is not None:
                self._expire_at = 0.0
            raise

    # -- the threads ------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self._synchronous}")
        db.execute(f"PRAGMA wal_autocheckpoint={_CHECKPOINT_PAGES}")
        if self._outbox is not None:  # read only here (its owner writes it)
            db.execute("ATTACH DATABASE ? AS outbox", (str(self._outbox),))
        return db

    def _connect_writer(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = self._connect()
        db.executescript(_SCHEMA)
        _add_missing_columns(db)
        db.isolation_level = "DEFERRED"  # `with db:` commits a batch as one transaction
        self._write_db = db

    def _connect_reader(self) -> None:
        self._read_db = self._connect()

    async def _on_writer(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await self._on(self._writer, "_write_db", work)

    async def _on_reader(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await self._on(self._reader, "_read_db", work)

    async def _on(
        self,
        executor: ThreadPoolExecutor | None,
        attribute: str,
        work: Callable[[sqlite3.Connection], T],
    ) -> T:
        def run() -> T:
            db: sqlite3.Connection | None = getattr(self, attribute)
            if db is None:
                raise sqlite3.ProgrammingError("the ledger is closed")
            return work(db)

        if executor is None:
            raise sqlite3.ProgrammingError("the ledger is closed")
        return await asyncio.get_running_loop().run_in_executor(executor, run)


_STATUS_COLUMNS = "id, status, accepted_at, written_at, attempts, error, email, channels"


def _status(row: Sequence[object]) -> NotificationStatus:
    """A status from a row of ``_STATUS_COLUMNS``."""
    notification_id, state, accepted_at, written_at, attempts, error, email, channels = row
    return NotificationStatus(
        str(notification_id),
        state,  # type: ignore[arg-type]
        float(accepted_at),  # type: ignore[arg-type]
        None if written_at is None else float(written_at),  # type: ignore[arg-type]
        int(attempts),  # type: ignore[call-overload]
        None if error is None else str(error),
        str(email),
        None if channels is None else tuple(json.loads(str(channels))),
    )


def _cursor(after: str | None) -> int | None:
    """The ``seq`` an ``after`` stands for; ``BadCursor`` if it is none of ours."""
    if after is None:
        return None
    if not after.isascii() or not after.isdigit() or len(after) > 18:  # ("²"; past int64)
        raise BadCursor("not a 'next' of this listing")
    return int(after)


def _filters(query: ActivityQuery, after: int | None, *, outboxed: bool) -> tuple[str, list[Any]]:
    """``query``'s WHERE clause over ``notifications AS n``, and its parameters. A status
    without a channel matches the log status or any delivery's; ``log`` is the log."""
    where: list[str] = []
    params: list[Any] = []
    if after is not None:
        where.append("n.seq < ?")
        params.append(after)
    if query.email is not None:
        where.append("n.email_key = ? AND n.email = ?")
        params += [_crc(query.email), query.email]
    if query.since is not None:
        where.append("n.accepted_at >= ?")
        params.append(query.since)
    status, channel = query.status, query.channel
    delivery = "SELECT 1 FROM outbox.deliveries AS d WHERE d.id = n.id"
    if channel == "log":
        if status is not None:
            where.append("n.status = ?")
            params.append(status)
    elif channel is not None:
        if not outboxed:
            where.append("0")
        elif status is None:
            where.append(f"EXISTS ({delivery} AND d.channel = ?)")
            params.append(channel)
        else:
            where.append(f"EXISTS ({delivery} AND d.channel = ? AND d.status = ?)")
            params += [channel, status]
    elif status is not None:
        either = ["n.status = ?"] if status in LOG_STATUSES else []
        params += [status] if either else []
        if outboxed:
            either.append(f"EXISTS ({delivery} AND d.status = ?)")
            params.append(status)
        where.append(f"({' OR '.join(either)})" if either else "0")
    return " AND ".join(where) or "1", params


def _deliveries(
    db: sqlite3.Connection, ids: list[str], now: float
) -> dict[str, list[DeliveryState]]:
    """The deliveries of ``ids`` in the attached outbox, by notification (pauses included)."""
    if not ids:
        return {}
    rows = db.execute(
        f"SELECT {STATE_COLUMNS}, p.until, p.error FROM outbox.deliveries AS d"
        " LEFT JOIN outbox.pauses AS p USING (channel)"
        " WHERE d.id IN (SELECT value FROM json_each(?)) ORDER BY d.id, d.channel",
        (json.dumps(ids),),
    ).fetchall()
    found: dict[str, list[DeliveryState]] = {}
    for *columns, until, error in rows:
        state = delivery_state(tuple(columns))
        if until is not None:
            state = Pause(until, error).over(state, now)
        found.setdefault(state.id, []).append(state)
    return found


def _crc(text: str) -> int:
    """What ``notifications`` is indexed by for an email (``email_key``), and for an id of
    before UUIDv7 (``key``, see ``_id_key``): its CRC-32. An index of these small integers is
    a quarter the size of one of the texts, so a batch of random ones dirties fewer of its
    pages (each one written to the WAL at the commit): measured, 9 against 19 µs of the
    thread's time a row at 100,000 rows. Two texts may share one; a lookup checks the text
    too."""
    return zlib.crc32(text.encode())


def _id_key(notification_id: str) -> int:
    """What ``notifications`` is indexed by for an id (``key``): for a UUIDv7 (the service's
    ids since 2026-12-07), its ``time_key`` (the millisecond it was made, then 12 random
    bits), so that new rows go to the end of the index, as they go to the end of the table;
    for an earlier id (a random UUID4), its CRC-32 (``_crc``), as it was stored. The two never
    meet: a CRC-32 is below 2**32, the time key of any id made after 1970-01-02 above it. A
    text asked for that is no UUID (``GET /notifications/{id}`` takes any) gets its CRC-32:
    nothing is stored under it, and a lookup checks the id too."""
    key = time_key(notification_id)
    return _crc(notification_id) if key is None else key


def _notifications(ids: Sequence[str], kinds: Sequence[Kind]) -> list[str]:
    """The notifications among a batch's records (``found query`` lines have no status)."""
    if not kinds:
        return list(ids)
    return [record_id for record_id, kind in zip(ids, kinds, strict=True) if kind == "notification"]
