"""The dependency vocabulary: every dependency the routers use, in one place.

Dependencies that need a long-lived object or a configured limit are built once, when the
router is built, so a request never looks anything up. Annotations here stay evaluable at
definition time (no ``from __future__ import annotations``): FastAPI reads them, and they
refer to values of the enclosing function.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import BackgroundTasks, Query

from service.services import NotificationService

__all__ = ["QueryLogger", "query_logger"]

QueryLogger = Callable[..., Awaitable[str | None]]


def query_logger(service: NotificationService, max_length: int) -> QueryLogger:
    """The guide's ``get_query``: log ``found query: {q}`` in a background task when given."""

    async def log_query(
        background_tasks: BackgroundTasks,
        q: Annotated[
            str | None,
            Query(max_length=max_length, description="Logged as `found query: {q}`."),
        ] = None,
    ) -> str | None:
        if q is not None:
            background_tasks.add_task(service.log_query, q)
        return q

    return log_query
