"""``python -m tests.support.otel_probe DIR on|default``: the real app through its lifespan
(``NOTIFY_OPENTELEMETRY`` true, or left at its default), with an OpenTelemetry SDK tracer
provider set globally (spans kept in memory), one request; prints the answer's status and the
spans that ended, as JSON.

A process of its own for each run: OpenTelemetry's global tracer provider can be set once a
process, and it would reach every FastAPI app the test session builds after it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.conftest import make_settings, running

PATH = "/send-notification/ada@example.com?q=probe"


async def probe(directory: Path, on: bool) -> dict[str, object]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    settings = make_settings(directory, **({"opentelemetry": True} if on else {}))
    async with running(settings) as client:
        response = await client.post(PATH, json={"message": "traced"})
    spans = [
        {"name": span.name, "attributes": dict(span.attributes or {})}
        for span in exporter.get_finished_spans()
    ]
    return {"status": response.status_code, "spans": spans}


if __name__ == "__main__":
    sys.stdout.write(json.dumps(asyncio.run(probe(Path(sys.argv[1]), sys.argv[2] == "on"))))
