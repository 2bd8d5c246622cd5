"""``POST /send-notification/{email}`` (the guide's endpoint) and ``GET /notifications/{id}``."""

# No ``from __future__ import annotations``: FastAPI evaluates these annotations, and one
# refers to a value of ``build_router`` (the query parameter, bound to the limits).
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, cast

from fastapi import (
    APIRouter,
    BackgroundTasks,
    Depends,
    HTTPException,
    Path,
    Query,
    Request,
    Response,
)
from fastapi.exceptions import RequestValidationError
from pydantic import Field
from starlette.convertors import Convertor, register_url_convertor

from config import Settings
from service.deps import BodyReader, idempotency_key, token_checker
from service.emails import Email
from service.metrics import TemplatedRoute
from service.records import escape
from service.runtime import Current
from service.schemas import (
    ACKNOWLEDGEMENT,
    MANY_ACCEPTED,
    Acknowledgement,
    ActivityOut,
    EnabledOut,
    ErrorBody,
    ManyAccepted,
    ManyNotificationsBody,
    NotificationBody,
    NotificationStatusOut,
    RetriedOut,
    ValidationErrors,
)
from service.services import QueryLine
from service.services.notifications import Channels
from service.status import ActivityQuery, ActivityStatus, BadCursor, Fingerprint

__all__ = ["build_router", "register_convertors"]

_ACK_HEADERS = {
    "Location": {"description": "`/notifications/{id}`", "schema": {"type": "string"}},
    "X-Notification-Id": {"description": "The notification's id", "schema": {"type": "string"}},
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    described = {
        401: ("A token is configured and this request has none, or a wrong one.", ErrorBody),
        404: ("No notification with this id (unknown, or expired).", ErrorBody),
        413: ("The body is larger than the configured limit.", ErrorBody),
        422: (
            'Not accepted, nothing kept: each problem in `detail`, located (`["body", '
            '"to", 3]`: the fourth recipient); or the Idempotency-Key was used with another '
            "request.",
            ValidationErrors,
        ),
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


def _key_parameter() -> dict[str, Any]:
    """The ``Idempotency-Key`` header, as the POSTs' OpenAPI declares it."""
    return {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": "Up to 255 printable ASCII characters. The same key with the same "
        "request gives the same answer and writes no second line.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    }


def _post_options(settings: Settings, body_reader: BodyReader) -> dict[str, Any]:
    """How ``POST /send-notification/{email}`` is declared: its documentation and its token
    guard (only when tokens are configured)."""
    tokens = settings.tokens
    return {
        "response_model": None,
        "dependencies": [Depends(token_checker(tokens))] if tokens else [],
        "openapi_extra": {**body_reader.openapi, "parameters": [_key_parameter()]},
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


def build_router(settings: Settings, current: Current) -> APIRouter:
    """The notification routes, with the configured limits. The service they call is the
    current run's (``current``, set by each lifespan run)."""
    register_convertors()
    router = APIRouter(tags=["notifications"], route_class=TemplatedRoute)
    in_background = settings.ack == "background"
    query_parameter = Query(
        max_length=settings.max_query_length, description="Logged as `found query: {q}`."
    )
    body_reader = BodyReader(settings.max_message_length, settings.max_body_bytes)
    allowed_domains = settings.allowed_email_domains if settings.email_on else frozenset()

    # An address may hold "/" (a%2Fb@example.com is decoded before routing): see _AnyText.
    @router.post("/send-notification/{email:address}", **_post_options(settings, body_reader))
    async def send_notification(
        email: Email,
        background_tasks: BackgroundTasks,
        request: Request,
        q: Annotated[str | None, query_parameter] = None,
    ) -> Response:
        service = current.notifications
        query = None
        if q is not None:  # the guide's get_query; its line is the request's first task
            query = QueryLine(q)
            if in_background:  # (with ack=write, written below before the notification)
                background_tasks.add_task(service.log_query, query)
        if allowed_domains and not _domain_allowed(email, allowed_domains):
            raise _recipient_not_allowed(email, allowed_domains)
        body = await body_reader.read(request)
        message = body.message
        key = idempotency_key(request.headers)
        subject = channels = None
        if body.shaped:
            subject, channels = _shaped(body, service.channels)
        # SinkUnavailable -> 503 and IdempotencyConflict -> 422, raised before any task runs.
        if key is None:
            notification_id = service.accept(email, query, channels)
        else:
            fingerprint: Fingerprint = (email, message, q)
            if body.shaped:  # (the guide's requests keep the fingerprint they had)
                fingerprint += (body.subject, channels)
            accepted = await service.accept_keyed(
                email,
                query,
                key=key,
                fingerprint=fingerprint,
                channels=channels,
                hold=not in_background,  # copies wait for the write, not only the admission
            )
            notification_id = accepted.id
            if not accepted.new:  # a replay: the same answer, and no line written again
                return _acknowledge(notification_id, background_tasks)
        if in_background:  # (q: the webhooks' payload carries it)
            background_tasks.add_task(
                service.notify,
                email,
                message,
                notification_id,
                q,
                subject=subject,
                channels=channels,
            )
        else:
            try:
                await service.notify_written(
                    email, message, q, notification_id, subject=subject, channels=channels
                )
            except BaseException:  # 503, or cancelled (a shutdown's timeout): not acknowledged
                await service.forget(key, notification_id)  # (then its copies go on, as new)
                raise
            service.done_with(key)  # written: its copies go on, as replays
        return _acknowledge(notification_id, background_tasks)

    @router.get(
        "/notifications/{notification_id}",
        response_model=NotificationStatusOut,
        responses=_errors(404, 503),
        summary="What happened to an accepted notification (kept for NOTIFY_STATUS_TTL)",
    )
    async def notification_status(
        notification_id: Annotated[str, Path(max_length=64)],
    ) -> NotificationStatusOut:
        service = current.notifications
        status = await service.status(notification_id)
        deliveries = await service.deliveries(notification_id)
        if status is None:
            if deliveries:  # its log status expired (or was dropped) before its deliveries
                return NotificationStatusOut.of_deliveries(notification_id, deliveries)
            raise HTTPException(
                status_code=404,
                detail=f"no notification {notification_id!r} here (unknown, or expired)",
            )
        return NotificationStatusOut.of(status, deliveries, service.channels)

    guarded = [Depends(token_checker(settings.tokens))] if settings.tokens else []

    many_reader = BodyReader(
        settings.max_message_length,
        settings.max_body_bytes + 320 * settings.max_recipients,
        model=ManyNotificationsBody,
        required=True,
        to=(
            list[Email],
            Field(
                min_length=1,
                max_length=settings.max_recipients,
                description=ManyNotificationsBody.model_fields["to"].description,
            ),
        ),
    )

    @router.post(
        "/notifications",
        response_model=ManyAccepted,
        dependencies=guarded,
        openapi_extra={**many_reader.openapi, "parameters": [_key_parameter()]},
        responses={
            200: {"description": "Every recipient accepted: logged and delivered next."},
            **_errors(*([401] if settings.tokens else []), 413, 422, 503),
        },
        summary="Notify many recipients at once: all accepted, or none",
    )
    async def send_notifications(
        request: Request, background_tasks: BackgroundTasks
    ) -> ManyAccepted:
        body = cast(ManyNotificationsBody, await many_reader.read(request))
        if allowed_domains:
            _check_domains(body.to, allowed_domains)
        service = current.notifications
        emails, positions, duplicates = _unique(body.to)
        subject, channels = _shaped(body, service.channels)
        key = idempotency_key(request.headers)
        # SinkUnavailable -> 503 and IdempotencyConflict -> 422, before anything is handed over.
        if key is None:
            ids, seed = service.accept_many(emails, channels), ""  # (no key to forget)
        else:
            fingerprint: Fingerprint = ("to", tuple(emails), body.message, body.subject, channels)
            ids, new, seed = await service.accept_many_keyed(
                emails,
                key=key,
                fingerprint=fingerprint,
                channels=channels,
                hold=not in_background,
            )
            if not new:  # a replay: the same answer, nothing written again
                return _many_accepted(ids, positions, duplicates)
        if in_background:
            background_tasks.add_task(
                service.notify_many, ids, emails, body.message, subject=subject, channels=channels
            )
        else:
            try:
                await service.notify_many_written(
                    ids, emails, body.message, subject=subject, channels=channels
                )
            except BaseException:  # 503, or cancelled (a shutdown's timeout): not acknowledged
                await service.forget(key, seed)  # (then its copies go on, as new)
                raise
            service.done_with(key)  # written: its copies go on, as replays
        return _many_accepted(ids, positions, duplicates)

    @router.get(
        "/notifications",
        response_model=ActivityOut,
        dependencies=guarded,
        responses=_errors(*([401] if settings.tokens else []), 503),
        summary="The activity log: notifications, newest first, by page (kept for "
        "NOTIFY_STATUS_TTL, and while a delivery of theirs is pending or dead)",
    )
    async def activity(
        email: Annotated[Email | None, Query(description="Only those to this address.")] = None,
        status: Annotated[
            ActivityStatus | None,
            Query(
                description="Only those whose log status or any delivery's (the `channel`'s, "
                "when given) is this; `dead`: the dead letters."
            ),
        ] = None,
        channel: Annotated[
            str | None,
            Query(max_length=64, description="A channel's name: `log`, `email`, a webhook's…"),
        ] = None,
        since: Annotated[
            datetime | None,
            Query(
                description="Only those accepted at or after this time (RFC 3339; UTC if "
                "no offset)."
            ),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000, description="Page size.")] = 100,
        after: Annotated[
            str | None, Query(max_length=400, description="The `next` of the previous page.")
        ] = None,
    ) -> ActivityOut:
        service = current.notifications
        if channel is not None and channel != "log" and channel not in service.channels:
            raise _invalid_query(
                "channel",
                channel,
                "channel must be one of: " + ", ".join(["log", *service.channels]),
            )
        query = ActivityQuery(
            email=email,
            status=status,
            channel=channel,
            since=None if since is None else _timestamp(since),
            limit=limit,
            after=after,
        )
        try:
            entries, after_next = await service.activity(query)
        except BadCursor as exc:
            raise _invalid_query("after", after, f"after: {exc}") from None
        items = [
            NotificationStatusOut.of_deliveries(entry.id, entry.deliveries)
            if entry.status is None
            else NotificationStatusOut.of(entry.status, entry.deliveries, service.channels)
            for entry in entries
        ]
        return ActivityOut(items=items, next=after_next)

    @router.post(
        "/notifications/{notification_id}/retry",
        response_model=RetriedOut,
        dependencies=guarded,
        responses=_errors(*([401] if settings.tokens else []), 404, 503),
        summary="Send a dead notification's deliveries again",
    )
    async def retry(notification_id: Annotated[str, Path(max_length=64)]) -> RetriedOut:
        retried = await current.notifications.retry(notification_id)
        if not retried:
            raise HTTPException(
                status_code=404,
                detail=f"notification {notification_id!r} has no dead delivery to retry",
            )
        return RetriedOut(id=notification_id, retried=retried)

    @router.post(
        "/webhooks/enable",
        response_model=EnabledOut,
        dependencies=guarded,
        responses=_errors(*([401] if settings.tokens else []), 503),
        summary="Deliver again to webhook URLs disabled by a 410 Gone",
        tags=["webhooks"],
    )
    async def enable_webhooks(
        channel: Annotated[
            list[str] | None,
            Query(description="Only these channels (`webhook-…`); all when absent."),
        ] = None,
    ) -> EnabledOut:
        return EnabledOut(enabled=await current.health.enable(channel))

    return router


def _shaped(body: NotificationBody, configured: Sequence[str]) -> tuple[str | None, Channels]:
    """The body's subject, one line (escaped as the log escapes a value, when it is not
    printable), and the delivery channels it names among ``configured`` (None: all of them;
    ``()``: the log only); 422 naming each unknown channel."""
    subject = body.subject
    if subject is not None and not subject.isprintable():
        subject = escape(subject)
    if body.channels is None:
        return subject, None
    known = {"log", *configured}
    listed = ", ".join(["log", *configured])
    unknown = [
        {
            "type": "unknown_channel",
            "loc": ("body", "channels", index),
            "msg": f"no channel {name!r} here; the channels are: {listed}",
            "input": name,
        }
        for index, name in enumerate(body.channels)
        if name not in known
    ]
    if unknown:
        raise RequestValidationError(unknown)
    named = set(body.channels)
    channels = tuple(name for name in configured if name in named)
    return subject, None if len(channels) == len(configured) else channels


def _invalid_query(name: str, value: object, message: str) -> RequestValidationError:
    """A 422 naming the query parameter ``name``, as FastAPI's own."""
    return RequestValidationError(
        [{"type": "value_error", "loc": ("query", name), "msg": message, "input": value}]
    )


def _timestamp(moment: datetime) -> float:
    """``moment`` as ``time.time()`` counts; without an offset, UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _domain_allowed(email: str, allowed: frozenset[str]) -> bool:
    """Whether ``email``'s domain (as given, or in its IDNA form) is one of ``allowed``."""
    domain = email.rpartition("@")[2].lower()
    if domain in allowed:
        return True
    try:
        return domain.encode("idna").decode("ascii") in allowed
    except UnicodeError:
        return False


def _recipient_not_allowed(email: str, allowed: frozenset[str]) -> RequestValidationError:
    return RequestValidationError([_domain_error(("path", "email"), email, allowed)])


def _domain_error(
    location: tuple[str | int, ...], email: str, allowed: frozenset[str]
) -> dict[str, Any]:
    return {
        "type": "recipient_domain",
        "loc": location,
        "msg": "email may go only to these domains: " + ", ".join(sorted(allowed)),
        "input": email,
    }


def _check_domains(emails: Sequence[str], allowed: frozenset[str]) -> None:
    """422 naming each of ``emails`` whose domain is not one of ``allowed``."""
    refused = [
        _domain_error(("body", "to", index), email, allowed)
        for index, email in enumerate(emails)
        if not _domain_allowed(email, allowed)
    ]
    if refused:
        raise RequestValidationError(refused)


def _unique(emails: Sequence[str]) -> tuple[list[str], list[int], list[int]]:
    """``emails`` each once, in order of first appearance; for each entry of ``emails`` the
    index of its address in that list; the indexes of the entries that repeat one."""
    first: dict[str, int] = {}
    positions: list[int] = []
    duplicates: list[int] = []
    for index, email in enumerate(emails):
        position = first.get(email)
        if position is None:
            position = first[email] = len(first)
        else:
            duplicates.append(index)
        positions.append(position)
    return list(first), positions, duplicates


def _many_accepted(
    ids: Sequence[str], positions: Sequence[int], duplicates: list[int]
) -> ManyAccepted:
    return ManyAccepted(
        message=MANY_ACCEPTED, ids=[ids[position] for position in positions], duplicates=duplicates
    )


_ACKNOWLEDGEMENT_JSON = json.dumps({"message": ACKNOWLEDGEMENT}, separators=(",", ":")).encode()
"""The guide's body, encoded once: every 200 of ``POST`` is these bytes."""


def _acknowledge(notification_id: str, background: BackgroundTasks) -> Response:
    """The guide's answer, with where to follow the notification. The request's tasks run
    after it is sent, as its background (Starlette's documented ``Response(background=...)``):
    the query's line first, then the notification's. A replay's query task writes nothing."""
    headers = {
        "Location": f"/notifications/{notification_id}",
        "X-Notification-Id": notification_id,
    }
    return Response(
        _ACKNOWLEDGEMENT_JSON, media_type="application/json", headers=headers, background=background
    )
