"""The request-reading vocabulary of the routers, in one place.

Dependencies that need a long-lived object or a configured limit are built once, when the
router is built, so a request never looks anything up. Annotations here stay evaluable at
definition time (no ``from __future__ import annotations``): FastAPI reads them, and they
refer to values of the enclosing function.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import BackgroundTasks, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import Field, TypeAdapter, ValidationError, create_model
from starlette.datastructures import Headers

from service.schemas import DEFAULT_MESSAGE, NotificationBody
from service.services import NotificationService

__all__ = ["BodyReader", "QueryLogger", "query_logger"]

QueryLogger = Callable[..., Awaitable[str | None]]


def query_logger(service: NotificationService, max_length: int, *, schedule: bool) -> QueryLogger:
    """The guide's ``get_query``: log ``found query: {q}`` in a background task when given.

    With ``schedule=False`` (``NOTIFY_ACK=write``) it only reads ``q``; the endpoint writes the
    query line itself, before the notification and before answering.
    """

    async def log_query(
        background_tasks: BackgroundTasks,
        q: Annotated[
            str | None,
            Query(max_length=max_length, description="Logged as `found query: {q}`."),
        ] = None,
    ) -> str | None:
        if schedule and q is not None:
            background_tasks.add_task(service.log_query, q)
        return q

    return log_query


def _sends_body(headers: Headers) -> bool:
    length = headers.get("content-length")
    return (length is not None and length != "0") or "transfer-encoding" in headers


def _is_json(content_type: str) -> bool:
    media_type = content_type.partition(";")[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


class BodyReader:
    """Reads the optional ``{"message": ...}`` body, and only when the request has one.

    Called by the endpoint instead of a ``Body()`` parameter: FastAPI awaits the body of every
    request and validates it through its dependency solver; most requests here send none.
    Errors are ``RequestValidationError``s located in ``body`` as FastAPI's would be, and
    clearer where FastAPI's are not: a JSON body sent without a JSON ``Content-Type`` is named
    as such, and undecodable bytes are a 422 ``json_invalid`` rather than a 400.
    """

    def __init__(self, max_length: int) -> None:
        model = create_model(
            "NotificationBody",
            __base__=NotificationBody,
            message=(str, Field(DEFAULT_MESSAGE, max_length=max_length, description="The text.")),
        )
        optional: Any = model | None
        self._adapter: TypeAdapter[NotificationBody | None] = TypeAdapter(optional)
        self.openapi: dict[str, Any] = {
            "requestBody": {
                "required": False,
                "content": {"application/json": {"schema": model.model_json_schema()}},
            }
        }

    async def message(self, request: Request) -> str:
        """The message to log: the body's, or the default when no body was sent."""
        if not _sends_body(request.headers):
            return DEFAULT_MESSAGE
        raw = await request.body()
        if not raw:
            return DEFAULT_MESSAGE
        content_type = request.headers.get("content-type", "")
        if not _is_json(content_type):
            raise RequestValidationError(
                [
                    {
                        "type": "content_type",
                        "loc": ("header", "content-type"),
                        "msg": "A body must be JSON, sent with Content-Type: application/json",
                        "input": content_type,
                    }
                ]
            )
        try:
            body = self._adapter.validate_json(raw)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            for error in errors:
                error["loc"] = ("body", *error["loc"])
                if isinstance(error["input"], bytes):  # undecodable JSON: echo it readably
                    error["input"] = error["input"].decode("utf-8", "replace")
            raise RequestValidationError(errors) from None
        return DEFAULT_MESSAGE if body is None else body.message
