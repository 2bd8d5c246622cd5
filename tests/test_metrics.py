"""``GET /metrics``: Prometheus text from prometheus-client, parsed back with its own parser."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.metrics import DirectMetrics, Tallies
from tests.conftest import make_settings, running
from tests.support.server import (
    free_port,
    http_client,
    running_server,
    service_command,
    service_env,
    uvicorn_command,
)
from tests.support.waiting import eventually
from tests.test_file_sink import wait_for_lines

HOST = "127.0.0.1"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


async def writer_failed(client: httpx.AsyncClient) -> None:
    """Wait until ``/readyz`` reports failing writes (not only a full buffer)."""

    async def failing() -> bool:
        reasons: list[str] = (await client.get("/readyz")).json()["reasons"]
        return any("writes failing" in reason for reason in reasons)

    await eventually(failing, interval=0.02, message="/readyz reporting failing writes")


async def test_a_burst_moves_the_counters(tmp_path: Path) -> None:
    """After 40 accepted notifications the counters, histograms and HTTP counts show them."""
    route = "/send-notification/{email}"
    async with running(make_settings(tmp_path)) as client:
        before = await scrape(client)
        for i in range(40):
            assert (await client.post(f"/send-notification/u{i}@example.com")).status_code == 200
        await wait_for_lines(tmp_path / "log.txt", 40)
        after = await scrape(client)
    for name in ("notify_notifications_accepted_total", "notify_notifications_written_total"):
        assert value(after, name) - value(before, name) == 40
    requests = value(after, "notify_http_requests_total", route=route, method="POST", status="200")
    assert requests == 40
    latency = value(after, "notify_http_request_seconds_count", route=route, method="POST")
    assert latency == 40
    assert value(after, "notify_batch_lines_sum") == 40
    assert value(after, "notify_write_seconds_count") >= 1
    sink = str(tmp_path / "log.txt")
    assert value(after, "notify_sink_up", sink=sink) == 1
    assert value(after, "notify_queue_depth", sink=sink) == 0


async def test_rejections_are_counted_by_reason(tmp_path: Path) -> None:
    """422, 413 and 503 answers count as rejected, each under its reason."""
    settings = make_settings(
        tmp_path,
        log_path=Path("/dev/full"),
        spool_path=tmp_path / "spool",
        queue_size=1,
        max_body_bytes=50,
        shutdown_timeout=0.2,
    )
    async with running(settings) as client:
        await client.post("/send-notification/not-an-email")
        await client.post("/send-notification/a@example.com", json={"message": "x" * 100})
        await client.post("/send-notification/a@example.com")  # takes the only place
        await client.post("/send-notification/b@example.com")  # buffer full
        await writer_failed(client)
        samples = await scrape(client)
    for reason in ("invalid", "too_large", "unavailable"):
        assert value(samples, "notify_notifications_rejected_total", reason=reason) == 1, reason
    assert value(samples, "notify_sink_up", sink="/dev/full") == 0
    assert value(samples, "notify_write_failures_total", sink="/dev/full") >= 1
    assert value(samples, "notify_queue_depth", sink="/dev/full") == 1


@pytest.mark.slow
async def test_metrics_add_up_across_workers(tmp_path: Path) -> None:
    """With ``--workers 2`` and PROMETHEUS_MULTIPROC_DIR, /metrics counts both workers' work."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    port = free_port()
    env = service_env(
        {"NOTIFY_LOG_PATH": str(tmp_path / "log.txt"), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    )
    async with (
        running_server(
            [*uvicorn_command(port), "--workers", "2"],
            url=f"http://{HOST}:{port}",
            cwd=tmp_path,
            env=env,
            output_path=tmp_path / "server.txt",
            ready_timeout=60,
        ),
        http_client(f"http://{HOST}:{port}", connections=32) as client,
    ):
        responses = await asyncio.gather(
            *(client.post(f"/send-notification/w{i}@example.com") for i in range(300))
        )
        assert {response.status_code for response in responses} == {200}
        pids = {int(path.stem.split("_")[-1]) for path in metrics_dir.glob("counter_*.db")}
        samples = await scrape(client)
    assert len(pids) == 2, "both workers served requests"
    assert value(samples, "notify_notifications_accepted_total") == 300


async def test_every_request_is_counted_under_the_route_template_it_matched(
    tmp_path: Path,
) -> None:
    """Each route notes its template (a custom APIRoute class; the schema, the static files):
    a refused request counts under its route, one no route took under ``<unmatched>``; a
    method HTTP does not define under ``OTHER``."""
    async with running(make_settings(tmp_path)) as client:
        assert (await client.post("/send-notification/not-an-email")).status_code == 422
        assert (await client.get("/openapi.json")).status_code == 200
        assert (await client.get("/docs")).status_code == 200
        assert (await client.get("/static-docs/swagger-ui.css")).status_code == 200
        assert (await client.get("/no/such/page")).status_code == 404
        assert (await client.delete("/healthz")).status_code == 405
        for n in range(3):  # methods no HTTP defines (h11 passes any token): one series
            assert (await client.request(f"X{n:05d}", "/healthz")).status_code == 405
        samples = await scrape(client)
        assert "X00001" not in (await client.get("/metrics")).text

    def count(route: str, method: str, status: str) -> float:
        return value(
            samples, "notify_http_requests_total", route=route, method=method, status=status
        )

    assert count("/send-notification/{email}", "POST", "422") == 1
    assert count("/openapi.json", "GET", "200") == 1
    assert count("/docs", "GET", "200") == 1
    assert count("/static-docs/{path}", "GET", "200") == 1
    assert count("<unmatched>", "GET", "404") == 1
    assert count("<unmatched>", "DELETE", "405") == 1
    assert count("<unmatched>", "OTHER", "405") == 3


@pytest.mark.slow
async def test_notify_service_workers_share_a_private_multiprocess_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``notify-service --workers 2`` without PROMETHEUS_MULTIPROC_DIR: its workers share a
    temporary directory it makes, so /metrics counts both workers' work; it is removed when
    notify-service exits."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    port = free_port()
    env = service_env(
        {
            "NOTIFY_LOG_PATH": str(tmp_path / "log.txt"),
            "NOTIFY_HOST": HOST,
            "NOTIFY_PORT": str(port),
            "TMPDIR": str(temporary),
        }
    )
    async with (
        running_server(
            [*service_command(), "--workers", "2"],
            url=f"http://{HOST}:{port}",
            cwd=tmp_path,
            env=env,
            output_path=tmp_path / "server.txt",
            ready_timeout=60,
        ) as server,
        http_client(f"http://{HOST}:{port}", connections=32) as client,
    ):
        responses = await asyncio.gather(
            *(client.post(f"/send-notification/w{i}@example.com") for i in range(300))
        )
        assert {response.status_code for response in responses} == {200}
        [private] = temporary.iterdir()
        pids = {int(path.stem.split("_")[-1]) for path in private.glob("counter_*.db")}
        samples = await scrape(client)
    assert server.returncode == 0
    assert len(pids) == 2, "both workers served requests"
    assert value(samples, "notify_notifications_accepted_total") == 300
    assert list(temporary.iterdir()) == []


def test_tallies_expose_what_prometheus_client_objects_do() -> None:
    """The single-process fast path (plain numbers, a collector) and prometheus-client's own
    Counter and Histogram give the same samples for the same requests, bucket edges included
    (but the objects' ``_created`` series, which the collector API does not document)."""
    requests = [
        ("/send-notification/{email}", "POST", 200, 0.0004),
        ("/send-notification/{email}", "POST", 200, 0.0005),  # exactly on a bucket's bound
        ("/send-notification/{email}", "POST", 422, 0.003),
        ("/send-notification/{email}", "POST", 200, 0.25),
        ("/readyz", "GET", 503, 2.0),  # above every bound: +Inf only
    ]
    fast, slow = CollectorRegistry(), CollectorRegistry()
    tallies, direct = Tallies(), DirectMetrics(slow)
    fast.register(tallies)
    for request in requests:
        tallies.observe_http(*request)
        direct.observe_http(*request)
    for _ in range(3):
        tallies.count_accepted()
        direct.count_accepted()

    def comparable(registry: CollectorRegistry) -> Samples:
        samples = parse(generate_latest(registry).decode())
        # _created (when each series began) is prometheus-client's own objects' addition
        return {key: v for key, v in samples.items() if not key[0].endswith("_created")}

    assert comparable(fast) == comparable(slow)
    assert value(comparable(fast), "notify_notifications_accepted_total") == 3


async def test_written_counts_notifications_and_query_lines_apart(tmp_path: Path) -> None:
    """10 notifications with ?q= are 10 written notifications (as accepted), and 10 + 10
    lines by kind: accepted and written can be compared."""
    async with running(make_settings(tmp_path)) as client:
        for number in range(10):
            response = await client.post(f"/send-notification/m{number}@example.com?q=x")
            assert response.status_code == 200

        async def both_batches_recorded() -> Samples:
            samples = await scrape(client)
            assert value(samples, "notify_lines_written_total", kind="query") >= 10
            return samples

        samples = await eventually(both_batches_recorded, message="10 query lines written")
    assert value(samples, "notify_notifications_accepted_total") == 10
    assert value(samples, "notify_notifications_written_total") == 10
    assert value(samples, "notify_lines_written_total", kind="notification") == 10
    assert value(samples, "notify_lines_written_total", kind="query") == 10
