"""Smoke test of ``python -m bench.distance --quick``: real servers (the service, the guide's
ways, fastapi-mail's), a real SMTP server and webhook receiver; it must finish, lose nothing
and judge every goal (the figures are not asserted: they depend on the machine)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.distance import FASTAPI_MAIL, PARTS, match_arrivals
from bench.smtp_sink import Arrival
from tests.support.bench import quick_results


def test_arrivals_are_matched_by_key_with_repeats_and_losses() -> None:
    arrivals = [
        Arrival(1.0, None, "a@x"),
        Arrival(2.0, None, "b@x"),
        Arrival(1.5, None, "a@x"),  # a repeat: the earlier one counts
        Arrival(3.0, None, "warm@x"),  # not acknowledged in this run: ignored
        Arrival(3.0, None, None),
    ]
    matched = match_arrivals(arrivals, lambda a: a.recipient, ["a@x", "b@x", "c@x"])
    assert matched.first == {"a@x": 1.0, "b@x": 2.0}
    assert (matched.lost, matched.repeats) == (1, 1)
    # With only a count, every keyed arrival counts.
    by_id = match_arrivals([Arrival(1.0, "n1"), Arrival(2.0, "n1")], lambda a: a.notification_id, 2)
    assert (len(by_id.first), by_id.lost, by_id.repeats) == (1, 1, 1)


@pytest.mark.slow  # runs the benchmark's quick mode: servers, for about 40 s
def test_quick_distance_benchmark_loses_nothing_and_judges_every_goal(tmp_path: Path) -> None:
    results = quick_results("distance", tmp_path, timeout=115)
    parts = results["parts"]
    assert list(parts) == [part for part in PARTS if part != "pace"]
    assert (
        list(parts["email-50ms"])
        == list(parts["email-instant"])
        == ["service", "guide", FASTAPI_MAIL]
    )
    assert list(parts["webhook-200ms"]) == ["service", "guide"]
    for run in results["runs"]:
        assert run["lost"] == 0, run
        assert run["delivered"] == run["acked"] == run["posted"], run
        assert run["non_200"] == 0, run
        assert run["all_in_s"] is not None, run
        assert run["all_in_s"] > 0, run
        assert run["warmup_all_arrived"], run
    for receiver, pace in (("lean", results["pace"]), ("aiosmtpd", results["pace_aiosmtpd"])):
        assert pace["receiver"] == receiver
        assert pace["lost"] == 0
        assert pace["repeats"] == 0
        assert pace["acked"] > 0
        assert pace["backlog"] == pace["acked"] - pace["received_by_end"]
        assert pace["service_cores"] > 0
        assert pace["receiver_cores"] > 0
    assert [goal["verdict"] in ("met", "NOT met") for goal in results["goals"]] == [True] * 5
    assert all(goal["command"].startswith("python -m bench.distance") for goal in results["goals"])
