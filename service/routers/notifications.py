"""``POST /send-notification/{email}``: the guide's endpoint, validated and escaped."""

# No ``from __future__ import annotations``: FastAPI evaluates these annotations, and one
# refers to a value of ``build_router`` (the query dependency, bound to the service).
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, Request, Response

from config import Settings
from service.deps import BodyReader, query_logger
from service.emails import Email
from service.schemas import ACKNOWLEDGEMENT, Acknowledgement, ErrorBody
from service.services import NotificationService

__all__ = ["build_router"]


def build_router(service: NotificationService, settings: Settings) -> APIRouter:
    """The notification routes, bound to ``service`` and to the configured limits."""
    router = APIRouter(tags=["notifications"])
    in_background = settings.ack == "background"
    log_query = query_logger(service, settings.max_query_length, schedule=in_background)

    body_reader = BodyReader(settings.max_message_length)

    @router.post(
        "/send-notification/{email}",
        response_model=None,
        openapi_extra=body_reader.openapi,
        responses={
            200: {"model": Acknowledgement, "description": "Accepted; logged next."},
            503: {"model": ErrorBody, "description": "The log cannot take more lines now."},
        },
        summary="Log a notification in the background (or before answering, with ack=write)",
    )
    async def send_notification(
        email: Email,
        background_tasks: BackgroundTasks,
        q: Annotated[str | None, Depends(log_query)],
        request: Request,
    ) -> Response:
        message = await body_reader.message(request)
        if in_background:
            service.admit(query=q is not None)  # SinkUnavailable -> 503, and no task runs
            background_tasks.add_task(service.notify, email, message)
        else:
            await service.notify_written(email, message, q)  # SinkUnavailable -> 503
        return Response(ACKNOWLEDGEMENT, media_type="application/json")

    return router
