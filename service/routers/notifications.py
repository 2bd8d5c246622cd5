"""``POST /send-notification/{email}`` (the guide's endpoint) and ``GET /notifications/{id}``."""

# No ``from __future__ import annotations``: FastAPI evaluates these annotations, and one
# refers to a value of ``build_router`` (the query dependency, bound to the service).
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, HTTPException, Path, Request, Response
from starlette.background import BackgroundTask
from starlette.background import BackgroundTasks as NoTasks
from starlette.convertors import Convertor, register_url_convertor

from config import Settings
from service.deps import (
    BodyReader,
    CoroutineTask,
    idempotency_key,
    query_logger,
    token_checker,
)
from service.emails import Email
from service.schemas import (
    ACKNOWLEDGEMENT,
    Acknowledgement,
    ErrorBody,
    NotificationStatusOut,
)
from service.services import NotificationService

__all__ = ["AcknowledgementResponse", "build_router", "post_options", "register_convertors"]

_ACK_HEADERS = {
    "Location": {"description": "`/notifications/{id}`", "schema": {"type": "string"}},
    "X-Notification-Id": {"description": "The notification's id", "schema": {"type": "string"}},
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    described = {
        401: ("A token is configured and this request has none, or a wrong one.", ErrorBody),
        404: ("No notification with this id (unknown, or expired).", ErrorBody),
        413: ("The body is larger than the configured limit.", ErrorBody),
        503: (
            "The log (or Redis, with the Redis backend) cannot serve this now; retry after "
            "`Retry-After`.",
            ErrorBody,
        ),
    }
    return {
        status: {"model": described[status][1], "description": described[status][0]}
        for status in statuses
    }


class AcknowledgementResponse(Response):
    """The 200 of ``POST``, with ``Location`` and ``X-Notification-Id``.

    The same response ``Response(ACKNOWLEDGEMENT, media_type=..., headers={...})`` gives (a
    test checks), built as bytes directly: everything but the id is constant, and
    ``Response.__init__`` would encode a headers dict and measure the body on every request.
    """

    media_type = "application/json"
    _CONSTANT_HEADERS = (
        (b"content-length", str(len(ACKNOWLEDGEMENT)).encode()),
        (b"content-type", b"application/json"),
    )

    def __init__(self, notification_id: str, background: BackgroundTask | None = None) -> None:
        self.status_code = 200
        self.background = background
        self.body = ACKNOWLEDGEMENT
        id_bytes = notification_id.encode("latin-1")
        self.raw_headers = [
            (b"location", b"/notifications/" + id_bytes),
            (b"x-notification-id", id_bytes),
            *self._CONSTANT_HEADERS,
        ]


def post_options(settings: Settings, body_reader: BodyReader) -> dict[str, Any]:
    """How ``POST /send-notification/{email}`` is declared: its documentation and its token
    guard (only when tokens are configured). Shared with bench's same-signature app."""
    tokens = settings.tokens
    key_parameter = {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": "Up to 255 printable ASCII characters. The same key with the same "
        "request gives the same answer and writes no second line.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    }
    return {
        "response_model": None,
        "dependencies": [Depends(token_checker(tokens))] if tokens else [],
        "openapi_extra": {**body_reader.openapi, "parameters": [key_parameter]},
        "responses": {
            200: {
                "model": Acknowledgement,
                "description": "Accepted; logged next (or already, with ack=write).",
                "headers": _ACK_HEADERS,
            },
            **_errors(*([401] if tokens else []), 413, 503),
        },
        "summary": "Log a notification in the background (or before answering, with ack=write)",
    }


class _AnyText(Convertor[str]):
    """A path segment that may hold "/" and line breaks, so that every address, valid or not,
    reaches the email validator (and a bad one gets its 422, not a 404 from routing)."""

    regex = "(?s:.+)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


def register_convertors() -> None:
    """Make ``{email:address}`` known to Starlette's router (idempotent)."""
    register_url_convertor("address", _AnyText())


def build_router(service: NotificationService, settings: Settings) -> APIRouter:
    """The notification routes, bound to ``service`` and to the configured limits."""
    register_convertors()
    router = APIRouter(tags=["notifications"])
    in_background = settings.ack == "background"
    log_query = query_logger(service, settings.max_query_length, schedule=in_background)
    body_reader = BodyReader(settings.max_message_length, settings.max_body_bytes)

    # An address may hold "/" (a%2Fb@example.com is decoded before routing): see _AnyText.
    @router.post("/send-notification/{email:address}", **post_options(settings, body_reader))
    async def send_notification(
        email: Email,
        background_tasks: BackgroundTasks,
        q: Annotated[str | None, Depends(log_query)],
        request: Request,
    ) -> Response:
        message = await body_reader.message(request)
        key = idempotency_key(request.headers)
        # SinkUnavailable -> 503 and IdempotencyConflict -> 422, raised before any task runs.
        if key is None:
            notification_id = service.accept(query=q is not None)
        else:
            accepted = await service.accept_keyed(
                query=q is not None, key=key, fingerprint=(email, message, q)
            )
            if not accepted.new:  # a replay: same answer, and none of the tasks scheduled above
                return AcknowledgementResponse(accepted.id, background=NoTasks())
            notification_id = accepted.id
        if in_background:
            task = CoroutineTask(service.notify, email, message, notification_id)
            # Without ?q= this is the request's only task: it goes on the response itself, as
            # Starlette's Response(background=...), and FastAPI's BackgroundTasks runner (a
            # coroutine and an OpenTelemetry context lookup per task) is skipped. With ?q= the
            # query's task is already on background_tasks, and the notification goes after it.
            if not background_tasks.tasks:
                return AcknowledgementResponse(notification_id, background=task)
            background_tasks.tasks.append(task)  # after the query's line, as in the guide
        else:
            try:
                await service.notify_written(email, message, q, notification_id)
            except Exception:
                await service.forget(key, notification_id)
                raise
        return AcknowledgementResponse(notification_id)

    @router.get(
        "/notifications/{notification_id}",
        response_model=NotificationStatusOut,
        responses=_errors(404, 503),
        summary="What happened to an accepted notification (kept per process, for a while)",
    )
    async def notification_status(
        notification_id: Annotated[str, Path(max_length=64)],
    ) -> NotificationStatusOut:
        status = await service.status(notification_id)
        if status is None:
            raise HTTPException(
                status_code=404,
                detail=f"no notification {notification_id!r} here (unknown, or expired)",
            )
        return NotificationStatusOut.of(status)

    return router
