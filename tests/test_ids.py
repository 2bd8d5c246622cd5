"""Notification ids are valid, distinct UUIDv7s: their creation time first, then random bits."""

from __future__ import annotations

import itertools
import os
import time
import uuid
from collections import Counter

from service.ids import new_id, series, time_key

_TIME_DIGITS = 12  # unix_ts_ms: the first 48 bits


def _milliseconds(text: str) -> int:
    return int(text.replace("-", "")[:_TIME_DIGITS], 16)


def test_ids_are_canonical_uuid7_strings() -> None:
    """Each id parses as a version-7, RFC variant UUID and is in canonical form."""
    for _ in range(2000):  # crosses several refills of the random pool
        text = new_id()
        parsed = uuid.UUID(text)
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text


def test_an_id_begins_with_the_millisecond_it_was_made() -> None:
    """Its first 48 bits are the Unix time in milliseconds when it was made."""
    before = time.time_ns() // 1_000_000
    text = new_id()
    after = time.time_ns() // 1_000_000
    assert before <= _milliseconds(text) <= after


def test_an_id_made_in_a_later_millisecond_sorts_after() -> None:
    """Ids sort by the millisecond they were made in, as text too (what keeps a database
    index keyed by them appending at its end)."""
    first = new_id()
    made = _milliseconds(first)
    while time.time_ns() // 1_000_000 <= made:  # until the clock is in a later millisecond
        pass
    second = new_id()
    assert _milliseconds(second) > made
    assert second > first


def test_ids_are_distinct_and_random_in_every_free_digit() -> None:
    """100,000 ids are all different, and every hex position after the time and version
    takes all 16 values (the variant's, its four)."""
    ids = [new_id().replace("-", "") for _ in range(100_000)]
    assert len(set(ids)) == len(ids)
    for position in range(_TIME_DIGITS, 32):
        digits = Counter(text[position] for text in ids)
        if position == 12:
            assert set(digits) == {"7"}
        elif position == 16:
            assert set(digits) == set("89ab")
        else:
            assert len(digits) == 16, position


def test_a_forked_process_does_not_repeat_the_parents_ids() -> None:
    """After ``fork`` the child draws new random bytes instead of its copy of the pool."""
    new_id()  # the pool now holds bytes for many more ids
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send its next ids and leave at once
        os.write(write_end, "".join(new_id() for _ in range(10)).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as child_output:
        child = child_output.read()
    os.waitpid(pid, 0)
    parent = "".join(new_id() for _ in range(10))
    assert len(child) == len(parent) == 360
    assert {child[i : i + 36] for i in range(0, 360, 36)}.isdisjoint(
        {parent[i : i + 36] for i in range(0, 360, 36)}
    )


def test_a_series_is_valid_distinct_uuid7s_the_same_from_the_same_first() -> None:
    """The ids of one request's recipients: UUIDv7s (time, version and variant kept), all
    distinct, the same series again from the same seed (an Idempotency-Key replay). The seed
    is none of them, and no id follows from another (a recipient, knowing its own id, cannot
    find the others', and so their addresses): not the next or previous number. A seed of an
    earlier version (a UUID4 kept with its key) gives UUID4s."""
    for first, version in [
        (new_id(), 7),
        ("01a2502e-ed3e-7234-8234-fffffffffff0", 7),
        ("12345678-1234-4234-8234-fffffffffff0", 4),
    ]:
        ids = series(first, 1000)
        assert first not in ids
        assert len(set(ids)) == 1000
        assert series(first, 1000) == ids
        lows = [int(value[24:], 16) for value in ids]
        assert all(abs(a - b) != 1 for a, b in itertools.pairwise(lows))
        for value in ids:
            parsed = uuid.UUID(value)
            assert (parsed.version, parsed.variant) == (version, uuid.RFC_4122)
            assert str(parsed) == value
            assert value[:24] == first[:24]


def test_the_time_key_of_a_uuid7_grows_with_time_and_is_none_for_other_texts() -> None:
    """``time_key``: a UUIDv7's first 60 bits, larger for an id of a later millisecond; None
    for a UUID4 and for texts that are no UUID, a 7 at the version's place or not."""
    first = new_id()
    made = _milliseconds(first)
    while time.time_ns() // 1_000_000 <= made:
        pass
    second = new_id()
    first_key, second_key = time_key(first), time_key(second)
    assert first_key is not None
    assert second_key is not None
    assert first_key >> 12 == made
    assert second_key > first_key
    for other in [str(uuid.uuid4()), "zzzzzzzz-zzzz-7zzz-8zzz-zzzzzzzzzzzz", "x" * 14 + "7", ""]:
        assert time_key(other) is None
