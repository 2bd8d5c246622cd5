"""Liveness, readiness and metrics."""

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from service.metrics import CONTENT_TYPE, Metrics, TemplatedRoute
from service.runtime import Current
from service.schemas import ChannelState, Health, Readiness, SinkState

__all__ = ["build_router"]


def build_router(metrics: Metrics, current: Current) -> APIRouter:
    """``/metrics`` of the app, and the health of the current run's sinks."""
    router = APIRouter(tags=["health"], route_class=TemplatedRoute)

    @router.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format."}},
        summary="Prometheus metrics (all workers' in multiprocess mode)",
    )
    async def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    @router.get("/healthz", response_model=Health, summary="The process is up")
    async def healthz() -> Health:
        return Health(status="ok")

    @router.get(
        "/readyz",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "A writer cannot take lines."}},
        summary="Every log writer is running and its file is open",
    )
    async def readyz() -> JSONResponse:
        health = current.health
        states = health.writers()
        reasons = [state.problem for state in states if state.problem is not None]
        channels = [
            ChannelState(
                name=channel.name,
                error=channel.error,
                target=channel.target,
                disabled=channel.disabled,
            )
            for channel in await health.channels()
        ]
        body = Readiness(
            status="unavailable" if reasons else "ready",
            reasons=reasons,
            sinks=[SinkState.model_validate(state, from_attributes=True) for state in states],
            channels=channels,
        )
        return JSONResponse(body.model_dump(), status_code=503 if reasons else 200)

    return router
