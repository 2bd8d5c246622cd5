"""Reference (2) "same signature": this service's exact request and response, scheduling and
recording nothing. Comparing it with the service isolates what the background work costs.

Same request: the service's validation, body and dependencies (``Email``, ``BodyReader``,
``idempotency_key``, the route's declaration, the limits in ``Settings``). Same response: the
guide's body with a fresh notification id in ``Location`` and ``X-Notification-Id``, from the
service's app class behind its HTTP metrics middleware (metrics are on by default).
``tests/test_bench_apps.py`` checks that its OpenAPI operation is the service's and that it
answers with the same headers.

What it leaves out is the background machinery: admission to the log's buffer, the status
record, the Idempotency-Key ledger, the background task, the line and the writer.
"""

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, Query, Request, Response

from config import Settings
from service.deps import BodyReader, idempotency_key
from service.emails import Email
from service.ids import new_id
from service.main import NotificationApp
from service.metrics import HttpMetrics, Metrics
from service.routers.notifications import AcknowledgementResponse, post_options, register_convertors

settings = Settings()
body_reader = BodyReader(settings.max_message_length, settings.max_body_bytes)


async def read_query(
    background_tasks: BackgroundTasks,
    q: Annotated[
        str | None,
        Query(max_length=settings.max_query_length, description="Logged as `found query: {q}`."),
    ] = None,
) -> str | None:
    """The service's query dependency, minus the task it would schedule."""
    return q


register_convertors()
router = APIRouter(tags=["notifications"])


@router.post("/send-notification/{email:address}", **post_options(settings, body_reader))
async def send_notification(
    email: Email,
    background_tasks: BackgroundTasks,
    q: Annotated[str | None, Depends(read_query)],
    request: Request,
) -> Response:
    await body_reader.message(request)
    idempotency_key(request.headers)
    return AcknowledgementResponse(new_id())


# Routes passed flat, as the service's are.
app = NotificationApp(title="same signature", routes=router.routes)
app.add_middleware(HttpMetrics, metrics=Metrics())
