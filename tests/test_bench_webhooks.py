"""The webhook benchmark's pure parts on made-up numbers, its receiver, and the guide's way of
sending (no timing is asserted)."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from bench import webhooks as webhook_bench
from bench.apps import guide_webhook
from bench.email import DeliveryRun, delivery_summary, format_delivery
from bench.email_report import GUIDE, SERVICE, format_goals
from bench.webhook_sink import parse_request_head, webhook_sink
from config.settings import Settings


def test_request_heads_give_length_id_and_whether_to_close() -> None:
    head = (
        b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 42\r\n"
        b"webhook-id: n-1\r\nConnection: keep-alive"
    )
    request = parse_request_head(head)
    assert (request.length, request.webhook_id, request.close) == (42, "n-1", False)
    closing = parse_request_head(b"POST /hook HTTP/1.1\r\nconnection: close")
    assert (closing.length, closing.webhook_id, closing.close) == (0, None, True)
    assert parse_request_head(b"POST /hook HTTP/1.0\r\ncontent-length: 1").close
    for bad in (
        b"POST /hook HTTP/1.1\r\ntransfer-encoding: chunked",
        b"POST /hook HTTP/1.1\r\ncontent-length: -1",
        b"POST /hook HTTP/1.1\r\ncontent-length: many",
        b"POST /hook HTTP/1.1\r\nno colon here",
        b"garbage",
    ):
        with pytest.raises(ValueError, match=r"."):
            parse_request_head(bad)


def test_the_secret_is_one_the_service_takes() -> None:
    secret = webhook_bench.new_secret()
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    settings = Settings(webhook_url="http://127.0.0.1:9/hook", webhook_secret=secret)
    assert settings.webhook_keys == (base64.b64decode(secret.removeprefix("whsec_")),)


def test_the_receiver_counts_requests_on_kept_alive_and_new_connections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three requests over one kept-alive connection, then the guide's ``httpx.post`` (a new
    connection), signed as the Standard Webhooks reference library verifies."""
    secret = webhook_bench.new_secret()
    with webhook_sink() as sink:
        with httpx.Client() as client:
            for number in range(3):
                response = client.post(
                    sink.url, content=b"{}", headers={"webhook-id": f"k{number}"}
                )
                assert (response.status_code, response.text) == (200, "ok")
        monkeypatch.setattr(guide_webhook, "URL", sink.url)
        monkeypatch.setattr(guide_webhook, "KEY", base64.b64decode(secret.removeprefix("whsec_")))
        guide_webhook.send_webhook("ada@example.com", "notification for ada: hi\n", None)
        assert sink.recorder.wait_for(lambda count: count == 4, timeout=10)
        ids = [arrival.notification_id for arrival in sink.recorder.arrivals()]
        assert ids[:3] == ["k0", "k1", "k2"]
        body, headers = guide_webhook.signed_request("ada@example.com", "hi", "q1")
        event = Webhook(secret).verify(body, headers)
        assert (event["type"], event["email"], event["q"]) == (
            "notification",
            "ada@example.com",
            "q1",
        )
        assert headers["webhook-id"] == event["id"]


def test_a_request_it_cannot_read_gets_400() -> None:
    with webhook_sink() as sink:
        response = httpx.post(sink.url, content=iter([b"chunked"]))
        assert response.status_code == 400
        assert sink.recorder.count() == 0


def _delivery(way: str, round_index: int, rate: float, complete: bool = True) -> DeliveryRun:
    return DeliveryRun(
        way=way,
        round=round_index,
        posted=100,
        acked=100,
        delivered=100 if complete else 90,
        complete=complete,
        post_s=0.1,
        deliver_s=100 / rate,
        rate=rate,
        api_rps=1000.0,
        server_cpu_s=0.5,
    )


def test_delivery_ratios_are_taken_round_by_round_without_a_ceiling() -> None:
    runs = [
        _delivery(SERVICE, 1, 1200.0),
        _delivery(GUIDE, 1, 300.0),
        _delivery(SERVICE, 2, 900.0),
        _delivery(GUIDE, 2, 450.0),
        _delivery(SERVICE, 3, 1000.0, complete=False),  # not all arrived: counts as 0
        _delivery(GUIDE, 3, 250.0),
    ]
    summary = delivery_summary(runs, (SERVICE, GUIDE))
    service = summary["ways"][SERVICE]
    assert service["vs_guide_per_round"] == [4.0, 2.0, 0.0]
    assert summary["service_vs_guide"] == 2.0
    assert service["of_ceiling"] is None
    assert not service["all_delivered"]
    table = format_delivery(summary, 100, "webhooks")
    assert "webhooks/s" in table.splitlines()[0]
    assert "2.00x" in table


def test_goals_and_verdicts() -> None:
    listed = webhook_bench.goals(delivery=3.4, api_slow=0.85)
    assert [goal.verdict for goal in listed] == ["met", "NOT met"]
    assert [goal.verdict for goal in webhook_bench.goals(None, None)] == ["not measured"] * 2
    assert "NOT met" in format_goals(listed)


def test_options(tmp_path: Path) -> None:
    quick = webhook_bench.parse_options(["--quick", "--parts", "delivery", "--out", str(tmp_path)])
    assert quick.parts == ("delivery",)
    assert (quick.delivery_rounds, quick.api_rounds) == (1, 1)
    full = webhook_bench.parse_options(["--concurrency", "8", "--out", str(tmp_path)])
    assert (full.concurrency, full.warmup, full.out) == (8, 32, tmp_path)
    assert full.parts == webhook_bench.PARTS
    with pytest.raises(SystemExit):
        webhook_bench.parse_options(["--parts", "api,nope"])
