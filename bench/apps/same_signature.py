"""Reference (2) "same signature": this service's exact request and response, scheduling and
recording nothing. Comparing it with the service isolates what the background work costs.

Same request: the service's validation and body reading (``Email``, ``BodyReader``,
``idempotency_key``, the limits in ``Settings``) and the ``q`` query parameter declared as
the service's is. Same response: the endpoint answers as the service's does, Starlette's
``Response`` of the guide's body (encoded once) with a fresh notification id in ``Location`` and
``X-Notification-Id`` and the request's (empty) ``BackgroundTasks`` as its background,
from the service's app class behind its HTTP metrics middleware (metrics are on by default),
with FastAPI's native telemetry as the service sets it (``NOTIFY_OPENTELEMETRY``).
The route's declaration (its OpenAPI operation) is this module's own;
``tests/test_bench_apps.py`` checks that its parameters and request body are the service's and
that it answers with the same status, body and headers.

What it leaves out is the background machinery: admission to the log's buffer, the status
record, the Idempotency-Key ledger, the background task, the line and the writer. And the
token guard: the benchmark configures no tokens.
"""

from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Query, Request, Response

from config import Settings
from service.deps import BodyReader, idempotency_key
from service.emails import Email
from service.ids import new_id
from service.main import NotificationApp, telemetry
from service.metrics import HttpMetrics, Metrics, TemplatedRoute
from service.routers.notifications import register_convertors

settings = Settings()
body_reader = BodyReader(settings.max_message_length, settings.max_body_bytes)

KEY_PARAMETER: dict[str, Any] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Up to 255 printable ASCII characters. The same key with the same "
    "request gives the same answer and writes no second line.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}
"""Read by ``idempotency_key`` from the headers, so declared by hand, as the service does."""

RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Accepted (here: nothing is scheduled or recorded).",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"message": {"type": "string"}},
                    "required": ["message"],
                }
            }
        },
        "headers": {
            "Location": {"description": "`/notifications/{id}`", "schema": {"type": "string"}},
            "X-Notification-Id": {
                "description": "The notification's id",
                "schema": {"type": "string"},
            },
        },
    },
    413: {"description": "The body is larger than the configured limit."},
}


ACKNOWLEDGEMENT_JSON = b'{"message":"Notification sent in the background"}'

register_convertors()
router = APIRouter(tags=["notifications"], route_class=TemplatedRoute)


@router.post(
    "/send-notification/{email:address}",
    response_model=None,
    openapi_extra={**body_reader.openapi, "parameters": [KEY_PARAMETER]},
    responses=RESPONSES,
    summary="The service's request and response, scheduling and recording nothing",
)
async def send_notification(
    email: Email,
    background_tasks: BackgroundTasks,
    request: Request,
    q: Annotated[
        str | None,
        Query(max_length=settings.max_query_length, description="Logged as `found query: {q}`."),
    ] = None,
) -> Response:
    await body_reader.read(request)
    idempotency_key(request.headers)
    notification_id = new_id()
    headers = {
        "Location": f"/notifications/{notification_id}",
        "X-Notification-Id": notification_id,
    }
    return Response(
        ACKNOWLEDGEMENT_JSON,
        media_type="application/json",
        headers=headers,
        background=background_tasks,
    )


# Routes passed flat, as the service's are.
app = NotificationApp(title="same signature", routes=router.routes, telemetry=telemetry(settings))
app.add_middleware(HttpMetrics, metrics=Metrics())
