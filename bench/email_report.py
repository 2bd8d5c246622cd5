"""The email benchmark's arithmetic and table: ratios taken round by round, percentiles,
acknowledged-to-delivered matching, goals and verdicts. No I/O, no clock."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from statistics import median
from typing import Any

from bench.smtp_sink import Arrival

API_GOAL = 0.90
"""The API with email on, at least this share of its req/s with email off."""
DELIVERY_GOAL = 3.0
"""The service's emails per second, at least this many times the guide's way's."""
LATENCY_GOAL_S = 1.0
"""Acknowledged to delivered, p99 at most this, at 500 requests/s with a fast server."""

LOG_ONLY = "log-only"
EMAIL_FAST = "email-fast"
EMAIL_SLOW = "email-slow"
SERVICE = "service"
GUIDE = "guide"
CEILING = "ceiling"


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``math.inf`` counts as larger than everything); NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def paired_ratios(
    by_round: Mapping[int, Mapping[str, float]], row: str, baseline: str
) -> list[float]:
    """``row / baseline`` within each round that has both (and a baseline above 0)."""
    return [
        values[row] / values[baseline]
        for _, values in sorted(by_round.items())
        if row in values and values.get(baseline, 0) > 0
    ]


def median_or_none(values: Iterable[float]) -> float | None:
    listed = list(values)
    return median(listed) if listed else None


def delivery_rate(delivered: int, started: float, arrivals: Sequence[float]) -> float:
    """Emails a second: ``delivered`` from ``started`` (the first request) to the last
    arrival; 0 when nothing arrived."""
    if delivered == 0 or not arrivals:
        return 0.0
    span = max(arrivals) - started
    return delivered / span if span > 0 else math.inf


@dataclass(frozen=True)
class Matched:
    """Acknowledged notifications matched with the SMTP server's arrivals."""

    seconds: list[float]
    """Arrival minus acknowledgement, per delivered notification (may be slightly negative:
    the server can send before the client has read its 200)."""
    missing: int
    """Acknowledged, never arrived: counted as infinitely late."""
    repeats: int
    """Arrivals of an acknowledged notification after its first."""

    @property
    def with_missing(self) -> list[float]:
        return self.seconds + [math.inf] * self.missing


def match_latencies(acks: Sequence[tuple[str, float]], arrivals: Sequence[Arrival]) -> Matched:
    """Per acknowledged notification ``(id, acknowledged at)``: its first arrival's time minus
    the acknowledgement. Arrivals of other notifications (the warmup's) are ignored."""
    acked = dict(acks)
    first: dict[str, float] = {}
    repeats = 0
    for arrival in arrivals:
        nid = arrival.notification_id
        if nid is None or nid not in acked:
            continue
        if nid in first:
            repeats += 1
            first[nid] = min(first[nid], arrival.at)
        else:
            first[nid] = arrival.at
    seconds = [first[nid] - at for nid, at in acked.items() if nid in first]
    return Matched(seconds, len(acked) - len(seconds), repeats)


@dataclass(frozen=True)
class Goal:
    name: str
    target: str
    value: float | None
    shown: str
    met: bool | None
    """None: not measured."""

    @property
    def verdict(self) -> str:
        return {True: "met", False: "NOT met", None: "not measured"}[self.met]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["value"] = None if self.value is None or not math.isfinite(self.value) else self.value
        data["verdict"] = self.verdict
        return data


def at_least(name: str, value: float | None, goal: float) -> Goal:
    shown = "-" if value is None else f"{value:.2f}x"
    met = None if value is None else value >= goal
    return Goal(name, f">= {goal:.2f}x", value, shown, met)


def at_most_seconds(name: str, value: float | None, goal: float) -> Goal:
    if value is None or math.isnan(value):
        return Goal(name, f"<= {goal * 1000:,.0f} ms", None, "-", None)
    shown = "never (missing)" if math.isinf(value) else f"{value * 1000:,.0f} ms"
    return Goal(name, f"<= {goal * 1000:,.0f} ms", value, shown, value <= goal)


def goals(
    api_fast: float | None,
    api_slow: float | None,
    delivery: float | None,
    latency_p99_s: float | None,
) -> list[Goal]:
    return [
        at_least("API, fast SMTP server, vs log-only", api_fast, API_GOAL),
        at_least("API, SMTP server taking 200 ms, vs log-only", api_slow, API_GOAL),
        at_least("delivery, emails/s vs the guide's way", delivery, DELIVERY_GOAL),
        at_most_seconds(
            "acknowledged to delivered p99 at 500 req/s", latency_p99_s, LATENCY_GOAL_S
        ),
    ]


def format_rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain table, columns as wide as their widest cell, the first one left-aligned."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        first, *rest = cells
        return "  ".join(
            [first.ljust(widths[0])]
            + [cell.rjust(width) for cell, width in zip(rest, widths[1:], strict=True)]
        )

    return "\n".join([line(header), *(line(row) for row in rows)])


def format_goals(listed: Sequence[Goal]) -> str:
    return format_rows(
        ("goal", "target", "measured", "verdict"),
        [(goal.name, goal.target, goal.shown, goal.verdict) for goal in listed],
    )
