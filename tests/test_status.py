"""The bounded, expiring memory behind statuses and idempotency keys."""

from __future__ import annotations

import time

from service.status import _Expiring


def test_oldest_entries_go_first_at_the_limit() -> None:
    items: _Expiring[int, str] = _Expiring(limit=3, ttl=60.0, clock=lambda: 0.0)
    for key in range(5):
        items.put(key, str(key))
    assert [items.get(key) for key in range(5)] == [None, None, "2", "3", "4"]


def test_entries_expire_after_the_ttl() -> None:
    now = [0.0]
    items: _Expiring[str, int] = _Expiring(limit=10, ttl=5.0, clock=lambda: now[0])
    items.put("a", 1)
    now[0] = 4.0
    items.put("b", 2)
    now[0] = 5.0
    assert items.get("a") is None
    assert items.get("b") == 2
    items.put("c", 3)  # drops the expired "a" from the front
    assert list(items._items) == ["b", "c"]


def _seconds_per_put(items: _Expiring[int, int], first: int, count: int) -> float:
    started = time.perf_counter()
    for key in range(first, first + count):
        items.put(key, key)
    return (time.perf_counter() - started) / count


def test_a_put_at_the_limit_costs_what_one_below_it_does() -> None:
    """Evicting from the front must not get slower as evictions accumulate (a plain dict
    walks every slot deleted since its last resize to find its first entry)."""
    limit = 20_000
    full: _Expiring[int, int] = _Expiring(limit, ttl=3600.0, clock=lambda: 0.0)
    roomy: _Expiring[int, int] = _Expiring(10 * limit, ttl=3600.0, clock=lambda: 0.0)
    below = _seconds_per_put(roomy, 0, 2 * limit)
    _seconds_per_put(full, 0, limit)
    at_limit = _seconds_per_put(full, limit, 2 * limit)
    assert len(full._items) == limit
    assert at_limit < 5 * below
