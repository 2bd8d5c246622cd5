"""Notification ids are valid, distinct UUID4s."""

from __future__ import annotations

import os
import uuid
from collections import Counter

from service.ids import new_id, series


def test_ids_are_canonical_uuid4_strings() -> None:
    """Each id parses as a version-4, RFC variant UUID and is in canonical form."""
    for _ in range(2000):  # crosses several refills of the random pool
        text = new_id()
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text


def test_ids_are_distinct_and_random_in_every_free_digit() -> None:
    """100,000 ids are all different, and every free hex position takes all 16 values."""
    ids = [new_id().replace("-", "") for _ in range(100_000)]
    assert len(set(ids)) == len(ids)
    for position in range(32):
        digits = Counter(text[position] for text in ids)
        if position == 12:
            assert set(digits) == {"4"}
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


def test_a_series_is_valid_distinct_uuid4s_the_same_from_the_same_first() -> None:
    """The ids of one request's recipients: UUID4s (version and variant kept), all distinct,
    the first given first, and the same series again from it (an Idempotency-Key replay);
    also where the low 48 bits wrap around."""
    for first in [new_id(), "12345678-1234-4234-8234-fffffffffff0"]:
        ids = series(first, 1000)
        assert ids[0] == first
        assert len(set(ids)) == 1000
        assert series(first, 1000) == ids
        for value in ids:
            parsed = uuid.UUID(value)
            assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
            assert str(parsed) == value
