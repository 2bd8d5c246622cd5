"""Reference (2) "same signature": this service's exact validation, body and dependencies,
scheduling nothing. Comparing it with the service isolates what the background work costs.

It is built from the service's own pieces (``Email``, ``BodyReader``, ``idempotency_key``, the
route's declaration, the limits in ``Settings``); ``tests/test_bench_apps.py`` checks that its
OpenAPI operation is the service's.
"""

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, Query, Request, Response

from config import Settings
from service.deps import BodyReader, idempotency_key
from service.emails import Email
from service.routers.notifications import post_options, register_convertors
from service.schemas import ACKNOWLEDGEMENT

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
    return Response(ACKNOWLEDGEMENT, media_type="application/json")


# Routes passed flat, as the service's are.
app = FastAPI(title="same signature", routes=router.routes)
