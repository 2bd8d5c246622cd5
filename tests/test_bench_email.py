"""The email benchmark's arithmetic on made-up numbers, and its SMTP server with the guide's
way of sending (no timing is asserted)."""

from __future__ import annotations

import math
import smtplib
from email.message import EmailMessage
from pathlib import Path

import pytest

from bench import email as email_bench
from bench.apps import guide_email
from bench.email_report import (
    EMAIL_FAST,
    LOG_ONLY,
    delivery_rate,
    format_goals,
    goals,
    match_latencies,
    median_or_none,
    paired_ratios,
    percentile,
)
from bench.openloop import OpenLoopResult, header_value
from bench.process import HOST
from bench.smtp_sink import Arrival, notification_id, smtp_sink


def test_percentile_is_nearest_rank_and_counts_missing_as_infinite() -> None:
    values = [float(n) for n in range(1, 101)]  # 1..100
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([3.0, 1.0, 2.0], 0.0) == 1.0
    assert math.isnan(percentile([], 0.99))
    # 2 missing of 100: the p99 is one of them.
    with_missing = [float(n) for n in range(98)] + [math.inf, math.inf]
    assert percentile(with_missing, 0.99) == math.inf
    assert percentile(with_missing, 0.98) == 97.0


def test_paired_ratios_are_taken_round_by_round() -> None:
    by_round = {
        2: {LOG_ONLY: 1000.0, EMAIL_FAST: 950.0},
        1: {LOG_ONLY: 2000.0, EMAIL_FAST: 1000.0},
        3: {EMAIL_FAST: 500.0},  # no baseline that round: left out
        4: {LOG_ONLY: 0.0, EMAIL_FAST: 500.0},  # a baseline of 0: left out
    }
    assert paired_ratios(by_round, EMAIL_FAST, LOG_ONLY) == [0.5, 0.95]
    # The median of the ratios, not the ratio of the medians.
    three = {1: {"a": 100.0, "b": 50.0}, 2: {"a": 100.0, "b": 90.0}, 3: {"a": 300.0, "b": 10.0}}
    assert median_or_none(paired_ratios(three, "b", "a")) == 0.5
    assert median_or_none([]) is None


def test_delivery_rate_runs_from_the_first_request_to_the_last_arrival() -> None:
    assert delivery_rate(100, 10.0, [10.5, 12.0, 11.0]) == 50.0
    assert delivery_rate(0, 10.0, []) == 0.0


def test_latencies_match_by_notification_id() -> None:
    acks = [("a", 1.0), ("b", 2.0), ("c", 3.0)]
    arrivals = [
        Arrival(0.99, "a"),  # before the client read its 200: slightly negative
        Arrival(2.5, "b"),
        Arrival(2.7, "b"),  # a repeat: the first counts
        Arrival(9.0, "warmup-1"),  # not a measured notification
        Arrival(9.0, None),
    ]
    matched = match_latencies(acks, arrivals)
    assert matched.seconds == pytest.approx([-0.01, 0.5])
    assert (matched.missing, matched.repeats) == (1, 1)
    assert matched.with_missing[-1] == math.inf


def test_goals_and_verdicts() -> None:
    listed = goals(api_fast=0.95, api_slow=0.89, delivery=3.0, latency_p99_s=0.2)
    assert [goal.verdict for goal in listed] == ["met", "NOT met", "met", "met"]
    assert listed[3].shown == "200 ms"
    missing = goals(api_fast=None, api_slow=None, delivery=2.99, latency_p99_s=math.inf)
    verdicts = [goal.verdict for goal in missing]
    assert verdicts == ["not measured", "not measured", "NOT met", "NOT met"]
    assert missing[3].to_json()["value"] is None
    assert "NOT met" in format_goals(missing)
    slow = goals(None, None, None, 1.001)[3]
    assert not slow.met
    assert goals(None, None, None, math.nan)[3].verdict == "not measured"


def test_notification_id_is_read_from_the_header_section_only() -> None:
    message = b"From: a@example.com\r\nx-NOTIFICATION-id:  abc123 \r\nSubject: s\r\n\r\nbody\r\n"
    assert notification_id(message) == "abc123"
    in_body = b"From: a@example.com\r\n\r\nX-Notification-Id: forged\r\n"
    assert notification_id(in_body) is None
    assert notification_id(b"") is None


def test_response_header_value() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nX-Notification-Id: n1\r\n"
    assert header_value(head.rstrip(b"\r\n"), "x-notification-id") == "n1"
    assert header_value(b"HTTP/1.1 200 OK\r\ncontent-length: 2", "x-notification-id") is None


def test_open_loop_result_round_trips_through_json() -> None:
    result = OpenLoopResult(rate=500.0, seconds=2.0, warmup_seconds=1.0, sent=3)
    result.acks.append(("n1", 12.5))
    result.statuses[200] += 1
    result.statuses[0] += 2
    result.first_send, result.last_send = 10.0, 11.0
    data = result.to_json()
    assert data["achieved_rate"] == 2.0
    assert OpenLoopResult.from_json(data) == result


def test_options(tmp_path: Path) -> None:
    quick = email_bench.parse_options(["--quick", "--parts", "api,latency"])
    assert quick.parts == ("api", "latency")
    assert quick.api_rounds == 1
    full = email_bench.parse_options(["--concurrency", "8", "--out", str(tmp_path)])
    assert (full.concurrency, full.warmup, full.out) == (8, 32, tmp_path)
    assert full.parts == email_bench.PARTS
    with pytest.raises(SystemExit):
        email_bench.parse_options(["--parts", "api,nope"])


@pytest.mark.slow
def test_the_guides_way_sends_one_email_through_the_benchs_smtp_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The guide's smtplib task reaches the bench's SMTP server, which records the message;
    the X-Notification-Id of a message that has one is recorded too."""
    with smtp_sink() as sink:
        monkeypatch.setattr(guide_email, "SMTP_PORT", sink.port)
        guide_email.send_email("ada@example.com", "notification for ada@example.com: hi\n")
        assert sink.recorder.wait_for(lambda count: count == 1, timeout=10)
        (arrival,) = sink.recorder.arrivals()
        assert arrival.notification_id is None
        sink.recorder.clear()
        assert sink.recorder.count() == 0
        mail = EmailMessage()
        mail["From"], mail["To"], mail["Subject"] = "b@example.com", "ada@example.com", "s"
        mail["X-Notification-Id"] = "n-42"
        mail.set_content("hi")
        with smtplib.SMTP(HOST, sink.port) as smtp:
            smtp.send_message(mail)
        assert sink.recorder.wait_for(lambda count: count == 1, timeout=10)
        assert [arrival.notification_id for arrival in sink.recorder.arrivals()] == ["n-42"]
