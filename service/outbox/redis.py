"""The outbox in Redis (``NOTIFY_BACKEND=redis``): pending deliveries shared by every API
process and worker, with the same operations and guarantees as the SQLite outbox.

Keys, under the stream's name as prefix ``p``:

- ``p:dl:{id}:{channel}``: a hash, one delivery: recipient, message, ``q`` (as JSON),
  status, attempts, last error, accepted / retried / next attempt / delivered times, the
  lease (owner, until), and the history of its last attempts (JSON ``[[at, outcome,
  error], ...]``);
- ``p:due:{channel}``: a sorted set of the channel's pending deliveries by when they are due.
  A claim moves a delivery's score to the end of its lease, so one live worker holds it at a
  time, and a worker that dies leaves it to come due again when the lease ends;
- ``p:dead``: the dead deliveries (``{id}\\t{channel}``, listed in id order);
- ``p:ch:{id}``: the channels of one notification; ``p:channels``: every channel seen;
- ``p:pauses``: a hash of the paused channels, each ``{until}\\t{error}``;
- ``p:disabled``: a hash of the disabled channels (a webhook URL that answered 410), each
  with its reason.

Each operation is one Lua script: atomic, one round trip. The scripts build key names from the
prefix, so this outbox needs a single Redis (not a cluster), as the rest of the backend does.
Delivered deliveries expire ``ttl`` seconds after delivery; dead ones stay until retried.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.outbox.base import (
    HISTORY,
    Delivery,
    DeliveryState,
    DeliveryStatus,
    Outcome,
    Pause,
    for_channel,
    history_of,
    notification_rows,
)
from service.redis.errors import describe_redis_error, public_redis_error
from service.sinks.core import TargetError
from service.sinks.fs import holder_gone, process_token

__all__ = ["RedisOutbox"]


_ADD = """
local p, now = ARGV[1], ARGV[2]
local added = 0
for i = 3, #ARGV, 7 do
    local id, ch = ARGV[i], ARGV[i + 1]
    local key = p .. ':dl:' .. id .. ':' .. ch
    if redis.call('EXISTS', key) == 0 then
        redis.call('HSET', key, 'id', id, 'channel', ch, 'recipient', ARGV[i + 2],
            'message', ARGV[i + 3], 'q', ARGV[i + 4], 'status', 'queued', 'attempts', 0,
            'accepted_at', ARGV[i + 5], 'next_attempt_at', now)
        if ARGV[i + 6] ~= '' then redis.call('HSET', key, 'subject', ARGV[i + 6]) end
        redis.call('ZADD', p .. ':due:' .. ch, now, id)
        redis.call('SADD', p .. ':ch:' .. id, ch)
        redis.call('SADD', p .. ':channels', ch)
        added = added + 1
    end
end
return added
"""

_ADD_ARGS = 7
"""Values ``_ADD`` takes for each row."""
ROWS_AT_ONCE = 10_000
"""Rows at most one ``_ADD`` call adds, unless one line holds more (a line is never split):
Redis runs a script alone, and 10,000 rows take it about 0.1 s."""

_SETTLE = """
local p, ch, now, ttl, lease_until, limit, owner =
    ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6]), ARGV[7]
local due = p .. ':due:' .. ch
-- What ended: id, status, error, next attempt, when (5 values each); only what this holder
-- still holds (a lease that ran out and another holder took is that holder's to record).
for i = 8, #ARGV, 5 do
    local id, status, err, next_at, at = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
    local key = p .. ':dl:' .. id .. ':' .. ch
    if redis.call('HGET', key, 'lease_owner') == owner then
        redis.call('HINCRBY', key, 'attempts', 1)
        redis.call('HDEL', key, 'lease_owner', 'lease_until')
        redis.call('HSET', key, 'status', status)
        if err ~= '' then redis.call('HSET', key, 'last_error', err) end
        -- The attempt, in the delivery's history (the last KEEP).
        local held = redis.call('HGET', key, 'history')
        local history = held and cjson.decode(held) or {}
        table.insert(history, {at, status, err ~= '' and err or cjson.null})
        while #history > KEEP do table.remove(history, 1) end
        redis.call('HSET', key, 'history', cjson.encode(history))
        if status == 'retrying' then
            redis.call('HSET', key, 'next_attempt_at', next_at)
            redis.call('ZADD', due, next_at, id)
        else
            redis.call('ZREM', due, id)
        end
        if status == 'delivered' then
            redis.call('HSET', key, 'delivered_at', at)
            redis.call('EXPIRE', key, ttl)
            -- The notification's channels expire with the last of them delivered: a delivery
            -- of another channel still pending or dead stays findable (states, retry).
            local members = p .. ':ch:' .. id
            local all = true
            for _, other in ipairs(redis.call('SMEMBERS', members)) do
                local st = redis.call('HGET', p .. ':dl:' .. id .. ':' .. other, 'status')
                if st and st ~= 'delivered' then all = false end
            end
            if all then redis.call('EXPIRE', members, ttl) end
        end
        if status == 'dead' then
            redis.call('ZADD', p .. ':dead', 0, id .. '\\t' .. ch)
        else  -- buried (its channel disabled) while this holder sent it: not dead after all
            redis.call('ZREM', p .. ':dead', id .. '\\t' .. ch)
        end
    end
end
-- Then the claim: what is due, leased to this holder until lease_until.
local out = {}
if limit > 0 then
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, limit)) do
        local key = p .. ':dl:' .. id .. ':' .. ch
        if redis.call('EXISTS', key) == 0 then
            -- Its delivery is gone (evicted, deleted by hand): nothing to send, and it must
            -- not make every later claim of the channel fail.
            redis.call('ZREM', due, id)
        else
            redis.call('ZADD', due, lease_until, id)
            redis.call('HSET', key, 'lease_owner', owner, 'lease_until', lease_until)
            local f = redis.call('HMGET', key, 'recipient', 'message', 'q', 'accepted_at',
                'retried_at', 'attempts', 'subject')
            table.insert(out,
                {id, f[1], f[2], f[3] or 'null', f[4], f[5] or f[4], f[6], f[7] or ''})
        end
    end
end
return out
""".replace("KEEP", str(HISTORY))

_RELEASE = """
local p, owner = ARGV[1], ARGV[2]
for i = 3, #ARGV, 2 do
    local id, ch = ARGV[i], ARGV[i + 1]
    local key = p .. ':dl:' .. id .. ':' .. ch
    if redis.call('HGET', key, 'lease_owner') == owner then
        redis.call('HDEL', key, 'lease_owner', 'lease_until')
        redis.call('ZADD', p .. ':due:' .. ch, redis.call('HGET', key, 'next_attempt_at'), id)
    end
end
return 1
"""

_RETRY_DEAD = """
local p, id, now = ARGV[1], ARGV[2], ARGV[3]
local retried = 0
for _, ch in ipairs(redis.call('SMEMBERS', p .. ':ch:' .. id)) do
    local key = p .. ':dl:' .. id .. ':' .. ch
    if redis.call('HGET', key, 'status') == 'dead' then
        redis.call('HSET', key, 'status', 'queued', 'next_attempt_at', now, 'retried_at', now)
        redis.call('ZADD', p .. ':due:' .. ch, now, id)
        redis.call('ZREM', p .. ':dead', id .. '\\t' .. ch)
        retried = retried + 1
    end
end
return retried
"""

_BURY = """
local p, ch, err, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local due = p .. ':due:' .. ch
local buried = 0
for _, id in ipairs(redis.call('ZRANGE', due, 0, -1)) do
    local key = p .. ':dl:' .. id .. ':' .. ch
    local lease = tonumber(redis.call('HGET', key, 'lease_until') or '0')
    if lease < now then
        redis.call('HSET', key, 'status', 'dead', 'last_error', err)
        redis.call('ZREM', due, id)
        redis.call('ZADD', p .. ':dead', 0, id .. '\\t' .. ch)
        buried = buried + 1
    end
end
return buried
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisOutbox:
    """The outbox in Redis; see the module docstring. Redis errors are ``TargetError``s
    without Redis's address (which goes to the service's log through ``detail``)."""

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        *,
        lease_seconds: float,
        ttl: float,
        owner: str | None = None,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._lease = lease_seconds
        self._ttl = max(1, round(ttl))
        self._owner = owner or process_token()  # a later process can tell it is gone
        self.path = f"redis {prefix}"
        """What errors and ``/readyz`` call it."""
        self._add = redis.register_script(_ADD)
        self._settle = redis.register_script(_SETTLE)
        self._release = redis.register_script(_RELEASE)
        self._retry_dead = redis.register_script(_RETRY_DEAD)
        self._bury = redis.register_script(_BURY)

    async def open(self) -> None:
        """Give back the leases held by processes of this machine that are gone (a killed
        worker's deliveries are sent again at once, not when their leases end). The
        connection pool connects on first use; Redis down here is not fatal."""
        with contextlib.suppress(TargetError):
            await self._release_leases_of_the_dead()

    async def _release_leases_of_the_dead(self) -> None:
        now = time.time()
        by_owner: dict[str, list[Any]] = {}
        try:
            for channel in await self._redis.smembers(f"{self._prefix}:channels"):
                name = _text(channel)
                leased = await self._redis.zrangebyscore(f"{self._prefix}:due:{name}", now, "+inf")
                for member in leased:
                    notification_id = _text(member)
                    key = f"{self._prefix}:dl:{notification_id}:{name}"
                    owner = await self._redis.hget(key, "lease_owner")
                    if owner is not None and holder_gone(_text(owner)):
                        by_owner.setdefault(_text(owner), []).extend([notification_id, name])
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from None
        for owner, flat in by_owner.items():
            await self._call(self._release, owner, *flat)

    async def close(self) -> None:
        """The client belongs to the stream (``RedisStream``), which closes it."""

    async def _call(self, script: Any, *args: Any) -> Any:
        try:
            return await script(args=[self._prefix, *args])
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from None

    # -- adding and delivering --------------------------------------------------------------

    async def add(self, lines: Sequence[str], channels: Sequence[str]) -> None:
        """Add each line's deliveries; a line's (one notification's, or one request's many)
        in one script call, so all or none of them. A batch may hold many requests of many
        recipients (a backlog after an outage): its lines go in calls of about
        ``ROWS_AT_ONCE`` rows, never a line split, so that no call holds Redis for long.
        Adding again what is there already changes nothing: a retried batch adds the rest."""
        flat: list[Any] = []
        now = time.time()
        for line in lines:
            for fields in notification_rows(line):
                accepted_at, notification_id, email, message, q, subject, _ = fields
                for channel in channels:
                    if for_channel(fields, channel):
                        flat += [notification_id, channel, email, message, json.dumps(q)]
                        flat += [accepted_at, subject or ""]
            if len(flat) >= _ADD_ARGS * ROWS_AT_ONCE:
                await self._call(self._add, now, *flat)
                flat = []
        if flat:
            await self._call(self._add, now, *flat)

    async def settle(
        self, channel: str, finished: Sequence[Outcome], claim: int = 0
    ) -> list[Delivery]:
        """Record ``finished``, then lease up to ``claim`` due deliveries of ``channel``: one
        script (see ``Outbox.settle``)."""
        now = time.time()
        ended: list[Any] = []
        for outcome in finished:
            next_at = outcome.next_attempt_at if outcome.next_attempt_at is not None else 0.0
            ended += [outcome.delivery.id, outcome.status, outcome.error or "", next_at, outcome.at]
        rows = await self._call(
            self._settle, channel, now, self._ttl, now + self._lease, claim, self._owner, *ended
        )
        claimed = [
            Delivery(
                id=_text(notification_id),
                channel=channel,
                recipient=_text(recipient),
                message=_text(message),
                q=json.loads(_text(q)),
                accepted_at=float(_text(accepted_at)),
                since=float(_text(since)),
                attempts=int(_text(attempts)),
                subject=_text(subject) or None,
            )
            for (
                notification_id,
                recipient,
                message,
                q,
                accepted_at,
                since,
                attempts,
                subject,
            ) in rows
        ]
        return sorted(claimed, key=lambda delivery: delivery.accepted_at)

    async def release(self, channel: str, deliveries: Sequence[Delivery]) -> None:
        """Give back the leases of ``deliveries`` this holder holds, unattempted."""
        flat = [value for delivery in deliveries for value in (delivery.id, channel)]
        if flat:
            await self._call(self._release, self._owner, *flat)

    async def bury(self, channel: str, error: str) -> int:
        return int(await self._call(self._bury, channel, error, time.time()))

    async def pause(self, channel: str, until: float, error: str) -> None:
        try:
            await self._redis.hset(f"{self._prefix}:pauses", channel, f"{until!r}\t{error}")
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from None

    async def resume(self, channel: str) -> None:
        try:
            await self._redis.hdel(f"{self._prefix}:pauses", channel)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from None

    async def pauses(self) -> dict[str, Pause]:
        try:
            found = await self._redis.hgetall(f"{self._prefix}:pauses")
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from None
        return {_text(channel): _pause(_text(value)) for channel, value in found.items()}

    async def disable(self, channel: str, reason: str) -> None:
        try:
            await self._redis.hset(f"{self._prefix}:disabled", channel, reason)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from None

    async def enable(self, channels: Sequence[str]) -> list[str]:
        if not channels:
            return []
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                for channel in channels:
                    pipe.hdel(f"{self._prefix}:disabled", channel)
                removed = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from None
        return [channel for channel, count in zip(channels, removed, strict=True) if count]

    async def disabled(self) -> dict[str, str]:
        try:
            found = await self._redis.hgetall(f"{self._prefix}:disabled")
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from None
        return {_text(channel): _text(reason) for channel, reason in found.items()}

    # -- reading, and the operator's retry --------------------------------------------------

    async def states(self, notification_id: str) -> list[DeliveryState]:
        now = time.time()
        try:
            channels = sorted(
                _text(channel)
                for channel in await self._redis.smembers(f"{self._prefix}:ch:{notification_id}")
            )
            states = await self._read_states((notification_id, channel) for channel in channels)
            paused = await self._redis.hmget(f"{self._prefix}:pauses", channels) if channels else []
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from None
        pauses = {
            channel: _pause(_text(value))
            for channel, value in zip(channels, paused, strict=True)
            if value is not None
        }
        return [
            pauses[state.channel].over(state, now) if state.channel in pauses else state
            for state in states
        ]

    async def states_of(self, ids: Sequence[str]) -> dict[str, list[DeliveryState]]:
        """``states`` of many notifications, by id, in three round trips (what the activity
        log shows of a page)."""
        now = time.time()
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for notification_id in ids:
                    pipe.smembers(f"{self._prefix}:ch:{notification_id}")
                channels = await pipe.execute()
            wanted = [
                (notification_id, channel)
                for notification_id, members in zip(ids, channels, strict=True)
                for channel in sorted(_text(member) for member in members)
            ]
            states = await self._read_states(wanted) if wanted else []
            paused = await self.pauses() if wanted else {}
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from None
        found: dict[str, list[DeliveryState]] = {}
        for state in states:
            pause = paused.get(state.channel)
            found.setdefault(state.id, []).append(
                state if pause is None else pause.over(state, now)
            )
        return found

    async def _read_states(self, deliveries: Iterable[tuple[str, str]]) -> list[DeliveryState]:
        """The states of the deliveries ``(notification id, channel)``, in one round trip; a
        hash gone meanwhile (an expired one) is left out."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for notification_id, channel in deliveries:
                pipe.hgetall(f"{self._prefix}:dl:{notification_id}:{channel}")
            found = await pipe.execute()
        return [
            _state({_text(k): _text(v) for k, v in fields.items()}) for fields in found if fields
        ]

    async def listed(
        self, status: DeliveryStatus, *, limit: int, after: str | None
    ) -> list[DeliveryState]:
        if status != "dead":
            raise ValueError("only dead deliveries are listed")
        start = f"({after}\t\xff" if after else "-"
        try:
            members = await self._redis.zrangebylex(
                f"{self._prefix}:dead", start, "+", start=0, num=limit
            )
            parts = (_text(member).partition("\t") for member in members)
            return await self._read_states((id_, channel) for id_, _, channel in parts)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from None

    async def retry_dead(self, notification_id: str) -> int:
        return int(await self._call(self._retry_dead, notification_id, time.time()))

    async def pending(self) -> int:
        try:
            channels = await self._redis.smembers(f"{self._prefix}:channels")
            total = 0
            for channel in channels:
                total += await self._redis.zcard(f"{self._prefix}:due:{_text(channel)}")
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from None
        return total

    async def next_due(self, channel: str) -> float | None:
        try:
            first = await self._redis.zrange(f"{self._prefix}:due:{channel}", 0, 0, withscores=True)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from None
        return float(first[0][1]) if first else None

    async def forget_finished(self, older_than: float) -> None:
        """Delivered deliveries expire by themselves (``ttl``)."""


def _pause(value: str) -> Pause:
    """A ``p:pauses`` field: ``{until}\\t{error}``."""
    until, _, error = value.partition("\t")
    return Pause(float(until), error)


def _unavailable(exc: BaseException) -> TargetError:
    return TargetError(public_redis_error(exc), describe_redis_error(exc))


def _state(fields: dict[str, str]) -> DeliveryState:
    status = fields["status"]
    pending = status in ("queued", "retrying")
    delivered_at = fields.get("delivered_at")
    return DeliveryState(
        id=fields["id"],
        channel=fields["channel"],
        status=status,  # type: ignore[arg-type]
        attempts=int(fields.get("attempts", "0")),
        last_error=fields.get("last_error"),
        accepted_at=float(fields["accepted_at"]),
        next_attempt_at=float(fields["next_attempt_at"]) if pending else None,
        delivered_at=None if delivered_at is None else float(delivered_at),
        recipient=fields.get("recipient", ""),
        history=history_of(fields.get("history")),
    )
