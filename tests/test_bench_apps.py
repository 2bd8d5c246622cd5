"""The benchmark's reference apps stay what they claim to be."""

from __future__ import annotations

from pathlib import Path

from bench.apps.same_signature import app as same_signature
from bench.writer import run_writer_bench
from service.main import create_app
from tests.conftest import make_settings


def test_same_signature_documents_the_services_operation(tmp_path: Path) -> None:
    """The "same signature" endpoint has the service's parameters, body and responses."""
    service = create_app(make_settings(tmp_path)).openapi()
    reference = same_signature.openapi()
    path = "/send-notification/{email}"
    assert reference["paths"][path] == service["paths"][path]
    for name, schema in reference["components"]["schemas"].items():
        assert schema == service["components"]["schemas"][name], name


def test_writer_benchmark_writes_every_line_both_ways() -> None:
    """The writer micro-benchmark runs, and both ways wrote every byte (checked inside)."""
    result = run_writer_bench(count=5000, repeats=1)
    assert result.lines == 5000
    assert result.sink_lines_per_s > 0
    assert result.plain_lines_per_s > 0
