"""docs/grafana.json: a Grafana dashboard that names only metrics (and labels) the service
exports. The names are checked against a scrape of the real app's ``/metrics``, with email on
so that the delivery metrics are registered; the SMTP server is a local port nobody listens on
(the metrics exist without a delivery)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import make_settings, running
from tests.support.server import free_port
from tests.support.waiting import eventually

DASHBOARD = Path(__file__).resolve().parents[1] / "docs" / "grafana.json"
METRIC = re.compile(r"\bnotify_[a-z_]+")
SERIES_SUFFIX = re.compile(r"_(bucket|count|sum)$")
SELECTOR = re.compile(r"\b(notify_[a-z_]+)\{([^}]*)\}")
MATCHER = re.compile(r"\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*\"(?:[^\"\\]|\\.)*\"\s*")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
# Labels Prometheus adds at scrape time, and the histogram buckets' own.
SCRAPE_LABELS = frozenset({"job", "instance"})

# What the dashboard is for (issue 17): each of these is on a panel.
REQUIRED = frozenset(
    {
        "notify_notifications_accepted_total",
        "notify_notifications_written_total",
        "notify_queue_depth",
        "notify_write_seconds",
        "notify_write_failures_total",
        "notify_sink_up",
        "notify_http_requests_total",
        "notify_http_request_seconds",
        "notify_notifications_rejected_total",
        "notify_deliveries_total",
        "notify_delivery_seconds",
        "notify_outbox_depth",
        "notify_channel_disabled",
    }
)


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return dashboard


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside (collapsed) rows included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression: the panels' queries and the template variables' queries."""
    found = [
        target["expr"]
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            found.append(query["query"] if isinstance(query, dict) else query)
    return found


def family_of(name: str) -> str:
    """A series name as its family is listed on ``# TYPE``: without a histogram's suffix."""
    return SERIES_SUFFIX.sub("", name)


def used_families(expression: str) -> set[str]:
    return {family_of(name) for name in METRIC.findall(expression)}


async def scrape_until(client: httpx.AsyncClient, ready: str) -> str:
    """``/metrics``, once ``ready`` (a sample's start) is in it."""

    async def scraped() -> str:
        response = await client.get("/metrics")
        assert response.status_code == 200
        return response.text if ready in response.text else ""

    return await eventually(scraped, interval=0.02, message=f"{ready} in /metrics")


@pytest.fixture(scope="module")
def exposition(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The real app's ``/metrics`` after one accepted POST, one rejected POST and one email
    delivery attempt (refused: nothing listens on its port), so that labelled families have
    samples too."""
    tmp_path = tmp_path_factory.mktemp("grafana")
    settings = make_settings(
        tmp_path,
        smtp_url=f"smtp://127.0.0.1:{free_port()}",
        smtp_from="notify@service.example",
        smtp_timeout=1.0,
        retry_initial=0.02,
        delivery_retry_max=0.1,
    )

    async def scrape() -> str:
        async with running(settings) as client:
            assert (await client.post("/send-notification/ada@example.com")).status_code == 200
            assert (await client.post("/send-notification/not-an-email")).status_code == 422
            await scrape_until(client, "notify_notifications_written_total 1.0")
            return await scrape_until(client, 'notify_deliveries_total{channel="email"')

    return asyncio.run(scrape())


def exported(exposition: str) -> dict[str, str]:
    """The families of the exposition, from its ``# TYPE`` lines: name to type."""
    families = {}
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.removeprefix("# TYPE ").split()
            families[name] = kind
    return families


def labels_by_family(exposition: str) -> dict[str, set[str]]:
    """The label names each family's samples carry (``le`` aside), for the families that have
    samples; keyed by the ``# TYPE`` name."""
    types = exported(exposition)
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            name = family_of(sample.name)
            if name in types:
                labels.setdefault(name, set()).update(set(sample.labels) - {"le"})
    return labels


def test_the_dashboard_is_a_grafana_json_model_with_a_prometheus_data_source_variable() -> None:
    dashboard = load_dashboard()
    assert dashboard["title"]
    assert dashboard["uid"]
    assert isinstance(dashboard["schemaVersion"], int)
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    source = {"type": "prometheus", "uid": "${datasource}"}
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == source, variable["name"]
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert 0 <= grid["x"] < grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == source, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == source, panel["title"]
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
            assert target["expr"].count("{") == target["expr"].count("}"), target["expr"]


def test_the_dashboard_covers_the_api_and_worker_metrics() -> None:
    used = set().union(*(used_families(e) for e in expressions(load_dashboard())))
    assert sorted(REQUIRED - used) == []


def test_every_metric_on_the_dashboard_is_exported(exposition: str) -> None:
    """Each name in a query, without ``_bucket``/``_count``/``_sum``, is a ``# TYPE`` family of
    the service's ``/metrics``; histogram suffixes only on histograms."""
    families = exported(exposition)
    for expression in expressions(load_dashboard()):
        for name in METRIC.findall(expression):
            family = family_of(name)
            assert family in families, f"{name} (in {expression}) is not exported"
            if family != name:
                assert families[family] == "histogram", f"{name}: {family} is no histogram"


def test_every_label_on_the_dashboard_is_one_its_metric_has(exposition: str) -> None:
    """Label matchers name labels of their metric; ``by (...)`` names labels of a metric of the
    same query (or ``job``, ``instance``, ``le``). Families without samples in this scrape are
    checked for their names only."""
    labels = labels_by_family(exposition)
    for expression in expressions(load_dashboard()):
        for name, matchers in SELECTOR.findall(expression):
            family = family_of(name)
            if family not in labels:
                continue
            for part in filter(None, matchers.split(",")):
                matcher = MATCHER.fullmatch(part)
                assert matcher is not None, f"cannot read {part!r} in {expression}"
                label = matcher.group(1)
                assert label in labels[family] | SCRAPE_LABELS, f"{family} has no {label}"
        known = set().union(*(labels.get(f, set()) for f in used_families(expression)))
        if all(family in labels for family in used_families(expression)):
            for grouping in GROUPING.findall(expression):
                for label in filter(None, (part.strip() for part in grouping.split(","))):
                    assert label in known | SCRAPE_LABELS | {"le"}, f"{label} in {expression}"
