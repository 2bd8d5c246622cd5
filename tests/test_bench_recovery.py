"""``python -m bench.recovery --quick``: the smallest outage, end to end, with real servers.

The service (uvicorn, a subprocess) sends webhooks to the harness's receiver, which answers
503 for one second while five notifications are posted, then 200. The harness waits for the
deliveries itself (polling, with a deadline); the test only reads what it saved.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.recovery import QUICK_GIVE_UP_S, RESULT_FILE, main, parse_options


def test_quick_options_are_the_smallest_variant_on_the_local_backend(tmp_path: Path) -> None:
    options = parse_options(["--quick", "--scenarios", "smtp-60s", "--out", str(tmp_path)])
    assert options.backends == ("local",)
    assert options.give_up_s == QUICK_GIVE_UP_S
    [scenario] = options.scenarios
    assert (scenario.name, scenario.outage_s, scenario.notifications, scenario.rate) == (
        "smtp-60s-quick",
        1.0,
        5,
        None,
    )


@pytest.mark.slow
@pytest.mark.timeout(QUICK_GIVE_UP_S + 60)
def test_a_one_second_webhook_outage_loses_nothing(tmp_path: Path) -> None:
    argv = ["--quick", "--scenarios", "webhook-503-10s", "--out", str(tmp_path)]
    assert main(argv) == 0

    data = json.loads((tmp_path / RESULT_FILE).read_text())
    assert data["kind"] == "recovery"
    assert data["settings"]["backends"] == ["local"]
    [run] = data["runs"]
    assert (run["scenario"], run["backend"], run["channel"]) == (
        "webhook-503-10s-quick",
        "local",
        "webhook",
    )
    assert run["accepted"] == run["notifications"] == 5
    assert run["lost"] == 0
    assert run["delivered"] == 5
    assert run["during_outage"] == 0
    assert run["refused"] >= 1  # the service did try while the receiver answered 503
    assert run["outage_s"] >= 1.0
    assert isinstance(run["repeats"], int)
    assert isinstance(run["met"], bool)
    assert run["recovered_s"] is not None
    assert 0 <= run["first_after_return_s"] <= run["recovered_s"]
    assert len(run["arrivals_s"]) == 5
    assert run["arrivals_s"] == sorted(run["arrivals_s"])
    assert "webhook-503-10s-quick" in data["table"]
