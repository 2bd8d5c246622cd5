"""What a worker shows an operator (``NOTIFY_WORKER_PORT``): ``/metrics`` (the write side's
metrics, with the local backend's names), ``/healthz`` and ``/readyz`` (Redis answers, and the
worker's logs can be written), served on ``NOTIFY_WORKER_HOST``.

The server is uvicorn, in a thread of its own with its own event loop: the worker's loop
handles SIGTERM and SIGINT itself (uvicorn would take them over), and nothing here may slow
its deliveries.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

import uvicorn
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.metrics import CONTENT_TYPE, Metrics
from service.redis.errors import public_redis_error
from service.sinks.base import SinkHealth

__all__ = ["WorkerMonitor"]

logger = logging.getLogger("service.redis.worker")


def monitor_app(
    metrics: Metrics, health: Callable[[], Sequence[SinkHealth]], redis_url: str, timeout: float
) -> FastAPI:
    """The worker's three endpoints."""
    app = FastAPI(title="Notification worker", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        reasons = [state.problem for state in health() if state.problem is not None]
        try:
            async with Redis.from_url(
                redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
            ) as redis:
                await redis.ping()
        except (RedisError, OSError) as exc:
            reasons.append(f"redis: {public_redis_error(exc)}")
        status = "unavailable" if reasons else "ready"
        return JSONResponse({"status": status, "reasons": reasons}, 503 if reasons else 200)

    return app


class WorkerMonitor:
    """uvicorn serving ``monitor_app`` in a thread, from ``start`` to ``stop``."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="worker monitor", daemon=True)
        self.address = f"http://{host}:{port}"

    def start(self) -> None:
        self._thread.start()
        logger.info("worker metrics and health on %s", self.address)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)
