"""Statuses and idempotency keys in Redis (``NOTIFY_BACKEND=redis``), shared by every API
process and worker.

Keys, all under the stream's name as prefix:

- ``{stream}:status:{id}``: the status of one line as JSON, for ``NOTIFY_STATUS_TTL`` seconds.
  The API sets ``queued`` (only if absent) just before it publishes a batch; the worker sets
  ``written`` after the write, or ``failed``. A worker also reads them to skip lines already
  written when a batch is delivered again (this is the deduplication the README describes).
- ``{stream}:key:{Idempotency-Key}``: ``<sha256 of the request> <id>``, set with ``SET NX`` (one
  atomic step, so two processes cannot both claim a key), for ``NOTIFY_IDEMPOTENCY_TTL``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.redis.errors import describe_redis_error, public_redis_error
from service.sinks.base import SinkUnavailable
from service.status import (
    Fingerprint,
    NotificationStatus,
    State,
    StatusStore,
    key_holder,
    key_value,
)
from service.wire import WireRecord

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
local ttl, mode = ARGV[#ARGV - 1], ARGV[#ARGV]
for i, key in ipairs(KEYS) do
    if mode == "NX" then
        redis.call("SET", key, ARGV[i], "NX", "EX", ttl)
    elseif mode == "UNLESS_WRITTEN" then
        local current = redis.call("GET", key)
        if not (current and string.find(current, '"status": "written"', 1, true)) then
            redis.call("SET", key, ARGV[i], "EX", ttl)
        end
    else
        redis.call("SET", key, ARGV[i], "EX", ttl)
    end
end
return #KEYS
"""


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
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._status_ttl = max(1, round(status_ttl))
        self._key_ttl = max(1, round(idempotency_ttl))
        self._local = local
        self._set_statuses = redis.register_script(_SET_STATUSES)

    def _status_key(self, notification_id: str) -> str:
        return f"{self._prefix}:status:{notification_id}"

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
            return NotificationStatus(id=notification_id, **json.loads(raw))
        return self._local.get(notification_id) if self._local is not None else None

    # -- what the API and workers record ----------------------------------------------------

    async def queued(self, records: Sequence[WireRecord]) -> None:
        """``records`` are about to be published (a status already there is kept). Redis
        errors propagate as they are: the publisher reports them."""
        await self._set_all(records, "queued", keep=True)

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
    ) -> None:
        """Set the status of every record in one command; ``keep``: only where none is set.
        A ``failed`` never replaces a ``written``: the line is in the log."""
        mode = "NX" if keep else "UNLESS_WRITTEN" if state == "failed" else ""
        keys: list[str] = []
        values: list[str] = []
        for record_id, _, _, accepted_at in records:
            keys.append(self._status_key(record_id))
            status = {
                "status": state,
                "accepted_at": accepted_at,
                "written_at": written_at,
                "attempts": attempts,
                "error": error,
            }
            values.append(json.dumps(status))
        if keys:
            await self._set_statuses(keys=keys, args=[*values, self._status_ttl, mode])
