"""Expiring-store micro-benchmark: a ``put`` that evicts (store at its limit) against one that
does not (store with room), per second, as a ratio.

Statuses and Idempotency-Keys are held in ``ExpiringMap`` stores that drop their oldest entry
on every ``put`` once full. A plain ``dict`` emptied from the front makes that drop walk every
slot deleted since its last resize (tens of µs a put at 20,000 entries); the ratio shows
whether eviction stays as cheap as insertion.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from service.status import ExpiringMap

LIMIT = 20_000


@dataclass(frozen=True)
class StoreResult:
    limit: int
    puts: int
    roomy_puts_per_s: float
    full_puts_per_s: float
    final_size: int
    """Entries the full store held at the end (its limit, if eviction works)."""

    @property
    def ratio(self) -> float:
        return self.full_puts_per_s / self.roomy_puts_per_s

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


def _seconds(items: ExpiringMap[int, int], first: int, count: int) -> float:
    started = time.perf_counter()
    for key in range(first, first + count):
        items.put(key, key)
    return time.perf_counter() - started


def run_store_bench(limit: int = LIMIT, repeats: int = 3) -> StoreResult:
    """Best of ``repeats``: ``2 * limit`` puts into a store with room for all of them, and
    ``2 * limit`` puts into a store already holding ``limit`` (every put evicts one)."""
    puts = 2 * limit
    roomy_s, full_s = [], []
    final_size = 0
    for _ in range(repeats):
        roomy: ExpiringMap[int, int] = ExpiringMap(10 * limit, ttl=3600.0, clock=lambda: 0.0)
        roomy_s.append(_seconds(roomy, 0, puts))
        full: ExpiringMap[int, int] = ExpiringMap(limit, ttl=3600.0, clock=lambda: 0.0)
        _seconds(full, 0, limit)
        full_s.append(_seconds(full, limit, puts))
        final_size = len(full)
    return StoreResult(limit, puts, puts / min(roomy_s), puts / min(full_s), final_size)


def format_store(result: StoreResult) -> str:
    return (
        f"expiring store: {result.puts:,} puts, limit {result.limit:,}: with room "
        f"{result.roomy_puts_per_s:,.0f} puts/s, at the limit (each evicts) "
        f"{result.full_puts_per_s:,.0f} puts/s, ratio {result.ratio:.2f}"
    )


def main() -> int:
    """``python -m bench.stores``: print the comparison and save it beside latest.json."""
    from bench.paths import RESULTS_DIR, save_json

    result = run_store_bench()
    print(format_store(result))
    save_json(RESULTS_DIR / "stores.json", result.to_json())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
