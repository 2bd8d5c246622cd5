"""Notification ids: UUIDv7 strings (RFC 9562), cheap enough for every request.

A UUIDv7 begins with its creation time in milliseconds, so ids made one after another sort one
after another: a database keyed by them (the outbox's ``(id, channel)``) adds each new one at
the end of its index, on the page the last one went to, instead of on a random page (a random
UUID4 key dirtied a page per row, each written to SQLite's WAL at every commit: 25 against 7 µs
of the outbox thread's time a row, ad hoc). The other 74 bits are random, from ``os.urandom``
drawn 2.5 KiB at a time and formatted directly (``str(uuid.uuid4())`` makes one ``getrandom``
system call and a ``UUID`` object per id, about 3 µs; this is about 1 µs).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time

__all__ = ["new_id", "series", "time_key"]

_IDS_PER_DRAW = 256
_RANDOM_BYTES = 10  # 80 bits drawn, 74 used: rand_a (12), 2 of the variant's digit, rand_b (60)
_VARIANT_DIGITS = "89ab"  # 10xx: the RFC 9562 variant, keeping two random bits


class _RandomPool:
    def __init__(self) -> None:
        self._bytes = b""
        self._offset = 0
        # A process forked from this one must not hand out the ids left in our pool.
        os.register_at_fork(after_in_child=self._empty)

    def _empty(self) -> None:
        self._bytes, self._offset = b"", 0

    def new_id(self) -> str:
        """A new UUIDv7: the time in milliseconds, then random bits, as its canonical
        36-character string."""
        offset = self._offset
        if offset >= len(self._bytes):
            self._bytes, offset = os.urandom(_RANDOM_BYTES * _IDS_PER_DRAW), 0
        self._offset = offset + _RANDOM_BYTES
        r = self._bytes[offset : offset + _RANDOM_BYTES].hex()
        t = f"{time.time_ns() // 1_000_000:012x}"
        variant = _VARIANT_DIGITS[int(r[3], 16) & 3]
        return f"{t[:8]}-{t[8:]}-7{r[:3]}-{variant}{r[4:7]}-{r[7:19]}"


new_id = _RandomPool().new_id
"""A new UUIDv7, as its canonical 36-character string (one call, no intermediate ``take``:
this runs on every request)."""


def time_key(notification_id: str) -> int | None:
    """The first 60 bits of a UUIDv7 (the millisecond it was made, then 12 random bits) as an
    integer that grows with time, for an index that new ids go to the end of; None for any
    other text (a UUID4 of an earlier version, or something that is no UUID)."""
    if notification_id[14:15] != "7":
        return None
    try:
        return int(notification_id[:8] + notification_id[9:13] + notification_id[15:18], 16)
    except ValueError:
        return None


def series(seed: str, count: int) -> list[str]:
    """The ids of one request's ``count`` recipients, from ``seed`` (an id of ``new_id``,
    kept with the request's Idempotency-Key and given to no one): the same ``seed`` gives the
    same ids (a replay answers with the ids it got). Each keeps ``seed``'s time, version and
    variant and takes its last 48 bits from a hash of ``seed`` and its index, so that no
    recipient can work out another's id from its own (and with it, from ``GET
    /notifications/{id}``, the other's address); all distinct."""
    head, ids, taken = seed[:24], [], set()
    for index in range(count):
        for attempt in itertools.count():  # a clash of 48 bits: the next hash, the same way
            tail = hashlib.blake2b(f"{seed}/{index}/{attempt}".encode(), digest_size=6)
            value = head + tail.hexdigest()
            if value not in taken:
                break
        taken.add(value)
        ids.append(value)
    return ids
