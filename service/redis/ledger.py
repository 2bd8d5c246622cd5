"""Statuses and idempotency keys in Redis (``NOTIFY_BACKEND=redis``), shared by every API
process and worker.

Keys, all under the stream's name as prefix:

- ``{stream}:status:{id}``: the status of one line as JSON, for ``NOTIFY_STATUS_TTL`` seconds.
  The API sets ``queued`` (only if absent) just before it publishes a batch, with the email
  and, when the request named them, the delivery ``channels`` (a list; absent: every
  configured channel, the usual case); the worker sets ``written`` after the write, or
  ``failed``, keeping what the API recorded before ``status``. A worker also reads them to
  skip lines already written when a batch is delivered again (this is the deduplication the
  README describes).
- ``{stream}:key:{Idempotency-Key}``: ``<sha256 of the request> <id>``, set with ``SET NX`` (one
  atomic step, so two processes cannot both claim a key), for ``NOTIFY_IDEMPOTENCY_TTL``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.redis.errors import describe_redis_error, public_redis_error
from service.sinks.base import SinkUnavailable
from service.status import (
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
from service.wire import WireRecord

if TYPE_CHECKING:
    from service.outbox.redis import RedisOutbox

__all__ = ["RedisLedger"]

logger = logging.getLogger("service.redis.ledger")

_CLAIM_TRIES = 3

# Sets many statuses in one command, one round trip and one reply, instead of a pipeline of one
# SET per line (whose commands and replies cost the API ~30 % of its time per request in redis
# mode, measured with cProfile). KEYS: the status keys; ARGV: their values, then the TTL in
# seconds, then the mode: "NX" keeps any status already there, "UNLESS_WRITTEN" keeps a
# "written" one (a line written once is never reported failed by a later, redelivered copy),
# "" replaces.
_SET_STATUSES = """
-- The API's status begins {"email": "...", and a worker's does not: a worker's keeps the
-- email (and the channels, which follow it) the API recorded (the first ', "status": ' ends
-- them: a quote inside a JSON string is escaped).
local function with_email(current, value)
    if current and string.sub(current, 1, 10) == '{"email": ' then
        local cut = string.find(current, ', "status": ', 1, true)
        if cut then return string.sub(current, 1, cut - 1) .. ', ' .. string.sub(value, 2) end
    end
    return value
end
local ttl, mode = ARGV[#ARGV - 1], ARGV[#ARGV]
for i, key in ipairs(KEYS) do
    if mode == "NX" then
        redis.call("SET", key, ARGV[i], "NX", "EX", ttl)
    else
        local current = redis.call("GET", key)
        if mode ~= "UNLESS_WRITTEN"
            or not (current and string.find(current, '"status": "written"', 1, true)) then
            redis.call("SET", key, with_email(current, ARGV[i]), "EX", ttl)
        end
    end
end
return #KEYS
"""

# The API's part of the activity log: for each record, ``id``, ``email`` and ``at``; each goes
# into ``{p}:activity`` (member ``{id}\t{email}``, by time) and ``{p}:email:{email}`` (member
# the id); past ``limit`` the oldest leave both.
_INDEX = """
local p, limit = ARGV[1], tonumber(ARGV[2])
local activity = p .. ':activity'
for i = 3, #ARGV, 3 do
    local id, email, at = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    redis.call('ZADD', activity, at, id .. '\t' .. email)
    redis.call('ZADD', p .. ':email:' .. email, at, id)
end
local over = redis.call('ZCARD', activity) - limit
if over > 0 then
    for _, member in ipairs(redis.call('ZRANGE', activity, 0, over - 1)) do
        local tab = string.find(member, '\t', 1, true)
        local email, id = string.sub(member, tab + 1), string.sub(member, 1, tab - 1)
        redis.call('ZREM', p .. ':email:' .. email, id)
    end
    redis.call('ZREMRANGEBYRANK', activity, 0, over - 1)
end
return 1
"""

# Expiry of the activity log: of the entries scored from ARGV[2] to before ARGV[3] (the
# horizon), at most ARGV[4], each goes unless the outbox still has a delivery of it (``{p}:ch:
# {id}`` lives while one is pending or dead, and NOTIFY_STATUS_TTL after the last is
# delivered). Returns how many it looked at and the last score (the next call's start).
_EXPIRE = """
local p, low, horizon, count = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local activity = p .. ':activity'
local found = redis.call('ZRANGEBYSCORE', activity, low, '(' .. horizon, 'WITHSCORES',
    'LIMIT', 0, count)
local last = low
for i = 1, #found, 2 do
    local member = found[i]
    local tab = string.find(member, '\t', 1, true)
    local id = string.sub(member, 1, tab - 1)
    if redis.call('EXISTS', p .. ':ch:' .. id) == 0 then
        redis.call('ZREM', activity, member)
        redis.call('ZREM', p .. ':email:' .. string.sub(member, tab + 1), id)
    end
    last = found[i + 1]
end
return {#found / 2, last}
"""


EXPIRE_INTERVAL = 1.0
"""Seconds between expiries of the activity log (an API process's, with its batches)."""
SWEEP_INTERVAL = 60.0
"""Seconds between looks at the pinned entries again (whose deliveries may be gone)."""
_EXPIRE_COUNT = 2000
"""Entries one ``_EXPIRE`` call looks at (Redis runs a script alone: a few ms)."""
_EXPIRE_CALLS = 5
"""Calls at most per expiry: 10,000 entries a second, an API process."""
_SCAN = 5000
"""Entries one activity request looks at, at most, when filtering by status or channel."""


def _redis_cursor(after: str | None) -> tuple[float, str | None]:
    """``(score, member)`` of an ``after`` (``{score}:{member}``); ``BadCursor`` if none."""
    if after is None:
        return math.inf, None
    score, colon, member = after.partition(":")
    try:
        value = float(score)
    except ValueError:
        value = math.nan
    if not colon or not member or not math.isfinite(value):
        raise BadCursor("not a 'next' of this listing")
    return value, member


def _redis_next(score: float, member: str) -> str:
    return f"{score!r}:{member}"


def _matches(entry: ActivityEntry, query: ActivityQuery) -> bool:
    """Whether ``entry`` passes ``query``'s status and channel (as the SQLite ledger's
    ``_filters``: a status without a channel, the log's or any delivery's)."""
    status, channel = query.status, query.channel
    log = None if entry.status is None else entry.status.status
    if channel == "log":
        return status is None or log == status
    if channel is not None:
        return any(
            state.channel == channel and (status is None or state.status == status)
            for state in entry.deliveries
        )
    if status is None:
        return True
    return log == status or any(state.status == status for state in entry.deliveries)


@contextmanager
def _unavailable_on_error() -> Iterator[None]:
    """Redis errors as ``SinkUnavailable`` (503 at the API; a retried batch at a worker)."""
    try:
        yield
    except (RedisError, OSError) as exc:
        logger.debug("redis: %s", describe_redis_error(exc))
        raise SinkUnavailable(f"redis: {public_redis_error(exc)}") from None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _status(notification_id: str, raw: bytes | str) -> NotificationStatus:
    """A status from its JSON in Redis (one without ``channels``: its request named none, or
    an earlier version set it)."""
    fields = json.loads(raw)
    channels = fields.pop("channels", None)
    return NotificationStatus(
        id=notification_id, channels=None if channels is None else tuple(channels), **fields
    )


class RedisLedger:
    """A ``Ledger`` in Redis, plus what workers record about each line.

    ``local`` holds what this API process accepted and has not yet published: a status is
    read from Redis first and from there second, so ``GET`` works from the moment of the 200.
    Redis errors become ``SinkUnavailable`` (503 at the API; a retried batch at a worker).
    """

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        *,
        status_ttl: float,
        idempotency_ttl: float,
        local: StatusStore | None = None,
        max_entries: int = 100_000,
        outbox: RedisOutbox | None = None,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._status_ttl = max(1, round(status_ttl))
        self._key_ttl = max(1, round(idempotency_ttl))
        self._local = local
        self._limit = max_entries
        self._outbox = outbox
        """The Redis outbox, when email or webhooks are on: the activity log's deliveries."""
        self._emails: dict[str, str] = {}
        """The email of each notification accepted here and not yet published."""
        self._channels: dict[str, tuple[str, ...]] = {}
        """The channels of those whose requests named them (most did not: no entry)."""
        self._expire_at = 0.0
        self._sweep_at = 0.0
        self._low = "-inf"
        self._set_statuses = redis.register_script(_SET_STATUSES)
        self._index = redis.register_script(_INDEX)
        self._expire = redis.register_script(_EXPIRE)

    def _status_key(self, notification_id: str) -> str:
        return f"{self._prefix}:status:{notification_id}"

    # -- what the API records (``Statuses``) -------------------------------------------------

    def accepted(
        self,
        notification_id: str,
        at: float,
        email: str = "",
        channels: tuple[str, ...] | None = None,
    ) -> None:
        """Once per request: kept here until its batch is published (``queued``)."""
        if self._local is not None:
            self._local.accepted(notification_id, at, email, channels)
        self._emails[notification_id] = email
        if channels is not None:
            self._channels[notification_id] = channels

    def withdrawn(self, notification_id: str, reason: str) -> None:
        self._emails.pop(notification_id, None)  # not published, unless its write had begun
        if self._channels:
            self._channels.pop(notification_id, None)
        if self._local is not None:
            self._local.withdrawn(notification_id, reason)

    # -- the Ledger protocol ----------------------------------------------------------------

    async def claim(self, key: str, fingerprint: Fingerprint, notification_id: str) -> str | None:
        name = f"{self._prefix}:key:{key}"
        claimed = key_value(fingerprint, notification_id)
        with _unavailable_on_error():
            for _ in range(_CLAIM_TRIES):  # retried only if the key expired in between
                if await self._redis.set(name, claimed, nx=True, ex=self._key_ttl):
                    return None
                held = await self._redis.get(name)
                if held is not None:
                    return key_holder(_text(held), claimed)
        raise SinkUnavailable("redis: the Idempotency-Key could not be claimed; retry")

    async def forget(self, key: str, notification_id: str) -> None:
        name = f"{self._prefix}:key:{key}"
        try:
            held = await self._redis.get(name)
            if held is not None and _text(held).endswith(f" {notification_id}"):
                await self._redis.delete(name)
        except (RedisError, OSError) as exc:
            # The key then expires with its TTL; until then a retry with it gets the id of the
            # request that was withdrawn (503) instead of a new one.
            logger.warning(
                "redis: cannot free an Idempotency-Key (%s); it is freed when it expires",
                describe_redis_error(exc),
            )

    async def status(self, notification_id: str) -> NotificationStatus | None:
        with _unavailable_on_error():
            raw = await self._redis.get(self._status_key(notification_id))
        if raw is not None:
            return _status(notification_id, raw)
        return self._local.get(notification_id) if self._local is not None else None

    async def activity(self, query: ActivityQuery) -> tuple[list[ActivityEntry], str | None]:
        """The page ``query`` asks for, newest first (by acceptance time), from
        ``{p}:email:{email}`` for a recipient (one sorted set: an index, not a scan), else from
        ``{p}:activity``; ``since`` is the score's lower bound. A status or channel filter is
        applied to what is read, at most ``_SCAN`` entries a request: a page may then hold
        fewer than ``limit``, and ``next`` says where to go on. An entry whose status expired
        and whose deliveries are gone is left out (expiry drops it from the index later)."""
        key = (
            f"{self._prefix}:activity"
            if query.email is None
            else f"{self._prefix}:email:{query.email}"
        )
        top, seen = _redis_cursor(query.after)
        bottom: float | str = "-inf" if query.since is None else query.since
        entries: list[ActivityEntry] = []
        looked = 0
        last: tuple[float, str] | None = None
        with _unavailable_on_error():
            while looked < _SCAN:
                count = min(_SCAN - looked, max(query.limit - len(entries), 1) * 2)
                found = await self._redis.zrange(
                    key,
                    "+inf" if top == math.inf else top,
                    bottom,
                    desc=True,
                    byscore=True,
                    offset=0,
                    num=count,
                    withscores=True,
                )
                batch: list[tuple[str, float]] = [
                    (_text(member), float(score))
                    for member, score in cast(list[tuple[bytes | str, float]], found)
                    if not (float(score) == top and seen is not None and _text(member) >= seen)
                ]
                if not batch:
                    return entries, None
                read = await self._entries([member.partition("\t")[0] for member, _ in batch])
                for (member, score), entry in zip(batch, read, strict=True):
                    looked += 1
                    last = (score, member)
                    if entry is not None and _matches(entry, query):
                        entries.append(entry)
                        if len(entries) == query.limit:
                            return entries, _redis_next(score, member)
                if last is not None:
                    top, seen = last[0], last[1]
        return entries, None if last is None else _redis_next(last[0], last[1])

    async def _entries(self, ids: Sequence[str]) -> list[ActivityEntry | None]:
        """Each id's status and deliveries, in two round trips; None for one whose status
        expired and whose deliveries are gone."""
        raw = await self._redis.mget([self._status_key(notification_id) for notification_id in ids])
        deliveries = await self._outbox.states_of(ids) if self._outbox is not None else {}
        found: list[ActivityEntry | None] = []
        for notification_id, value in zip(ids, raw, strict=True):
            status = None if value is None else _status(notification_id, value)
            states = deliveries.get(notification_id, [])
            found.append(
                None
                if status is None and not states
                else ActivityEntry(notification_id, status, states)
            )
        return found

    # -- what the API and workers record ----------------------------------------------------

    async def queued(self, records: Sequence[WireRecord]) -> None:
        """``records`` are about to be published (a status already there is kept), and go
        into the activity log (``_INDEX``), whose expired entries go once a second
        (``_EXPIRE``). Redis errors propagate as they are: the publisher reports them."""
        emails, named = self._emails, self._channels
        known = [(record, emails.pop(record[0], "")) for record in records]
        channels = [named.pop(record[0], None) for record in records] if named else []
        indexed: list[str | float] = []
        for (record_id, kind, _, accepted_at), email in known:
            if email and kind == "notification":
                indexed += [record_id, email, accepted_at]
        try:
            await self._set_all(
                records,
                "queued",
                keep=True,
                emails=[email for _, email in known],
                channels=channels,
            )
            if indexed:
                await self._index(args=[self._prefix, self._limit, *indexed])
        except BaseException:  # the publisher retries the batch: keep what it will need
            for (record_id, *_), email in known:
                if email:
                    emails.setdefault(record_id, email)
            for (record_id, *_), named_channels in zip(records, channels, strict=False):
                if named_channels is not None:
                    named.setdefault(record_id, named_channels)
            raise
        now = time.monotonic()
        if now >= self._expire_at:
            self._expire_at = now + EXPIRE_INTERVAL
            if now >= self._sweep_at:  # look at the pinned entries again
                self._sweep_at, self._low = now + SWEEP_INTERVAL, "-inf"
            await self._expire_activity()

    async def _expire_activity(self) -> None:
        """Drop what expired from the activity log, a bounded number at a time, from where the
        last call stopped (what is below that was pinned)."""
        horizon = time.time() - self._status_ttl
        for _ in range(_EXPIRE_CALLS):
            looked, last = await self._expire(
                args=[self._prefix, self._low, horizon, _EXPIRE_COUNT]
            )
            self._low = _text(last)
            if int(looked) < _EXPIRE_COUNT:
                return

    async def written_among(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` a worker has already written."""
        if not ids:
            return set()
        with _unavailable_on_error():
            values = await self._redis.mget([self._status_key(record_id) for record_id in ids])
        return {
            record_id
            for record_id, raw in zip(ids, values, strict=True)
            if raw is not None and json.loads(raw)["status"] == "written"
        }

    async def written(self, records: Iterable[WireRecord], at: float, attempts: int) -> None:
        with _unavailable_on_error():
            await self._set_all(records, "written", written_at=at, attempts=attempts)

    async def failed(self, records: Iterable[WireRecord], error: str, attempts: int) -> None:
        with _unavailable_on_error():
            await self._set_all(records, "failed", error=error, attempts=attempts)

    async def _set_all(
        self,
        records: Iterable[WireRecord],
        state: State,
        *,
        keep: bool = False,
        written_at: float | None = None,
        attempts: int = 0,
        error: str | None = None,
        emails: Sequence[str] = (),
        channels: Sequence[tuple[str, ...] | None] = (),
    ) -> None:
        """Set the status of every record in one command; ``keep``: only where none is set.
        A ``failed`` never replaces a ``written``: the line is in the log. ``emails`` and
        ``channels`` (the API's, when known; None: not named) come first in the value, where
        a worker's update keeps them."""
        mode = "NX" if keep else "UNLESS_WRITTEN" if state == "failed" else ""
        keys: list[str] = []
        values: list[str] = []
        for index, (record_id, _, _, accepted_at) in enumerate(records):
            keys.append(self._status_key(record_id))
            email = emails[index] if index < len(emails) else ""
            named = channels[index] if index < len(channels) else None
            status: dict[str, object] = {"email": email} if email or named is not None else {}
            if named is not None:
                status["channels"] = named
            status |= {
                "status": state,
                "accepted_at": accepted_at,
                "written_at": written_at,
                "attempts": attempts,
                "error": error,
            }
            values.append(json.dumps(status))
        if keys:
            await self._set_statuses(keys=keys, args=[*values, self._status_ttl, mode])
