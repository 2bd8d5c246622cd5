"""Which batch reached the log: what lets a worker that takes a batch over skip the lines the
killed worker already wrote (``NOTIFY_BACKEND=redis``), exactly.

Every worker writes its log holding an exclusive ``flock`` on it, and, under that lock, just
before each write, records in Redis an **intent**: the file (machine, device, inode), the
offset the write starts at (the file's size: under the lock nothing else appends) and its
length, and, for each line's record id, which intent carries it. The intent becomes the
file's **tail**. The next writer of that file (any worker, under the same lock) first looks at
the tail: if the file's size is still the tail's offset, that write never happened and the
tail's intent is marked **void**; otherwise it happened (nothing else could have moved the size
past it while its writer held the lock). So every intent ends void or written, decided by
the file itself under the lock, and:

- a record whose intent is void, or who has none, was not written: write it;
- a record whose intent is the tail, with the file's size still at its offset, was not
  written (its writer died before writing): void it, and write it;
- any other intent on this file was written: skip the record.

Where the takeover's log is another file than the intent's (another machine, or the log was
rotated since) the answer is unknown and the record is written again: at most one repeat,
by the one worker that takes the batch over. A short write cut by a kill counts as written.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.redis.errors import describe_redis_error, public_redis_error
from service.sinks.core import TargetError

__all__ = ["WriteLedger"]

# ARGV: prefix, file, attempt, offset, length, ttl, ids...
_BEFORE_WRITE = """
local p, file, attempt, offset, length, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local tail = p .. ':tail:' .. file
local previous = redis.call('HMGET', tail, 'attempt', 'offset')
if previous[1] and tonumber(previous[2]) == tonumber(offset) then
    redis.call('SET', p .. ':void:' .. previous[1], 1, 'EX', ttl)
end
redis.call('HSET', tail, 'attempt', attempt, 'offset', offset)
redis.call('EXPIRE', tail, ttl)
redis.call('HSET', p .. ':attempt:' .. attempt, 'file', file, 'offset', offset, 'length', length)
redis.call('EXPIRE', p .. ':attempt:' .. attempt, ttl)
for i = 7, #ARGV do
    redis.call('SET', p .. ':at:' .. ARGV[i], attempt, 'EX', ttl)
end
return 1
"""

# ARGV: prefix, file, size, ttl, ids...  -> the ids already written to this file
_WRITTEN = """
local p, file, size, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local tail = redis.call('HMGET', p .. ':tail:' .. file, 'attempt', 'offset')
local written = {}
for i = 5, #ARGV do
    local attempt = redis.call('GET', p .. ':at:' .. ARGV[i])
    if attempt and redis.call('EXISTS', p .. ':void:' .. attempt) == 0 then
        local at = redis.call('HMGET', p .. ':attempt:' .. attempt, 'file', 'offset')
        if at[1] == file then
            if attempt == tail[1] and tonumber(at[2]) == size then
                redis.call('SET', p .. ':void:' .. attempt, 1, 'EX', ttl)
            else
                table.insert(written, ARGV[i])
            end
        end
    end
end
return written
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class WriteLedger:
    """The intents in Redis, under the stream's name as prefix; see the module docstring.
    Redis errors are ``TargetError``s: a write whose intent cannot be recorded waits."""

    def __init__(self, redis: Redis, prefix: str, *, ttl: float) -> None:
        self._prefix = prefix
        self._ttl = max(1, round(ttl))
        self._before_write = redis.register_script(_BEFORE_WRITE)
        self._written = redis.register_script(_WRITTEN)

    async def before_write(self, file: str, offset: int, length: int, ids: Sequence[str]) -> None:
        """Record the intent of one write (call it holding the file's lock, just before)."""
        attempt = uuid.uuid4().hex
        args: list[str | int] = [self._prefix, file, attempt, offset, length, self._ttl, *ids]
        try:
            await self._before_write(args=args)
        except (RedisError, OSError) as exc:
            raise TargetError(public_redis_error(exc), describe_redis_error(exc)) from None

    async def written(self, file: str, size: int, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` are in ``file``, whose size is ``size`` (call it holding the
        file's lock)."""
        if not ids:
            return set()
        try:
            found = await self._written(args=[self._prefix, file, size, self._ttl, *ids])
        except (RedisError, OSError) as exc:
            raise TargetError(public_redis_error(exc), describe_redis_error(exc)) from None
        return {_text(record_id) for record_id in found}
