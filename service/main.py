"""The composition root: ``create_app(settings)`` builds the app; each lifespan run builds
the ``Runtime`` it owns.

``uvicorn service.main:app`` reads the settings from the environment when it first asks for
``app``; importing this module does nothing else.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from fastapi.telemetry import TelemetryConfig
from starlette.types import Message, Receive, Scope, Send

from config import Settings, settings_or_exit, unknown_variables
from service.logs import configure_logging
from service.metrics import HttpMetrics, Metrics
from service.routers import health, notifications
from service.routers.docs import docs_routes
from service.runtime import Current, Runtime, StartupError
from service.sinks import SinkUnavailable
from service.status import IdempotencyConflict

__all__ = ["NotificationApp", "create_app", "telemetry"]

logger = logging.getLogger("service")

RETRY_AFTER_SECONDS = 1
TITLE = "Notification service"


class NotificationApp(FastAPI):
    """FastAPI, with a failed startup reported in one line instead of a traceback."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            send = _one_line_startup_errors(send)
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application: routes, metrics and a lifespan that builds, per run, the
    runtime it owns. No I/O happens here."""
    settings = settings if settings is not None else settings_or_exit()
    configure_logging(settings.log_level, json_lines=settings.log_json)
    for warning in unknown_variables():
        logger.warning(warning)
    metrics = Metrics(settings.prometheus_multiproc_dir)
    current = Current()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with fewer_collections():
            async with Runtime(settings, metrics) as runtime:
                current.set(runtime)
                try:
                    yield
                finally:
                    current.set(None)

    routers = [notifications.build_router(settings, current), health.build_router(metrics, current)]
    app = NotificationApp(
        title=TITLE,
        summary="FastAPI's Background Tasks notification endpoint, production-grade.",
        version="0.1.0",
        lifespan=lifespan,
        telemetry=telemetry(settings),
        # The routers' routes, flat (FastAPI's documented `routes` parameter): FastAPI 0.165's
        # `include_router` keeps each router as a level that every request walks through
        # again (two route matches a request instead of one, measured in bench/).
        routes=[
            *(route for router in routers for route in router.routes),
            *docs_routes(TITLE, "/openapi.json", "/docs/oauth2-redirect"),
        ],
        # /docs and /redoc are served from the package (service/routers/docs.py), not a CDN,
        # and the schema by a route of ours (it notes its template for the HTTP metrics).
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        exception_handlers={
            SinkUnavailable: _unavailable,
            IdempotencyConflict: _idempotency_conflict,
        },
    )
    app.add_middleware(HttpMetrics, metrics=metrics)
    return app


GC_THRESHOLD = 7_000
"""Allocations between two young-generation collections while the app runs (Python's
default is 700)."""


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Python's cyclic garbage collector less often while the app runs, as it was after.

    With ``NOTIFY_ACK=write`` each request waits for its write, so dozens are in flight at
    once; with the default threshold a young collection nearly always finds their objects
    alive and moves them to an older generation, whose collections then walk the whole heap
    (the app, its schemas, every module). That cost 83,000 instructions a request, 9 % of
    the server's (10x the threshold: none left; docs/architecture.md). Memory is still freed
    as soon as it is unused, by reference counting; only cycles wait longer.
    ``gc.set_threshold`` is Python's documented knob; the other two thresholds are kept.
    """
    before = gc.get_threshold()
    gc.set_threshold(max(before[0], GC_THRESHOLD), *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


def telemetry(settings: Settings) -> TelemetryConfig:
    """FastAPI's native OpenTelemetry, on or off as a whole (``NOTIFY_OPENTELEMETRY``).

    Off by default: the service has its own metrics, and with it on FastAPI looks for
    configured providers on every request, which costs 3 % of one when there are none
    (``bench/README.md``).
    """
    on = settings.opentelemetry
    return {"tracing": on, "metrics": on, "logs": on}


async def _unavailable(request: Request, exc: Exception) -> Response:
    """A sink that cannot take the request's lines: 503, retry shortly, nothing logged."""
    return JSONResponse(
        {"detail": f"not accepted: {exc}"},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


async def _idempotency_conflict(request: Request, exc: Exception) -> Response:
    """A reused Idempotency-Key with a different request: 422, shaped like FastAPI's."""
    error = {
        "type": "idempotency_conflict",
        "loc": ["header", "idempotency-key"],
        "msg": str(exc),
        "input": request.headers.get("idempotency-key"),
    }
    return JSONResponse({"detail": [error]}, status_code=422)


def _one_line_startup_errors(send: Send) -> Send:
    """Wrap a lifespan ``send`` so that a ``StartupError`` is reported as its one line.

    Starlette reports a failed startup with the whole traceback; for an operator's error such
    as an unwritable log path, the line naming the path and the reason is all that helps.
    """

    async def send_one_line(message: Message) -> None:
        text = message.get("message", "")
        if message["type"] == "lifespan.startup.failed" and text:
            last = text.strip().splitlines()[-1]
            prefix = f"{StartupError.__module__}.{StartupError.__qualname__}: "
            if last.startswith(prefix):
                message = {**message, "message": last.removeprefix(prefix)}
        await send(message)

    return send_one_line


def __getattr__(name: str) -> FastAPI:
    # `uvicorn service.main:app` looks `app` up: build it then, from the environment, once.
    if name == "app":
        app = create_app()
        globals()["app"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
