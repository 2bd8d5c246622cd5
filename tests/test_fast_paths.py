"""Each fast path on the request path gives exactly what the general code it replaces gives."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest
from fastapi import Response
from starlette.background import BackgroundTask, BackgroundTasks

from service.deps import CoroutineTask
from service.records import Record, notification_renderer, render_jsonl, render_text
from service.routers.notifications import AcknowledgementResponse
from service.schemas import ACKNOWLEDGEMENT
from service.services.deadlines import Deadlines, wait_all
from service.sinks.base import SinkUnavailable


def test_the_acknowledgement_is_the_response_starlette_would_build() -> None:
    notification_id = "0f8fad5b-d9cb-469f-a165-70867728950e"
    background = BackgroundTasks()
    fast = AcknowledgementResponse(notification_id, background)
    slow = Response(
        ACKNOWLEDGEMENT,
        media_type="application/json",
        headers={
            "location": f"/notifications/{notification_id}",
            "x-notification-id": notification_id,
        },
        background=background,
    )
    assert (fast.status_code, fast.body, fast.background) == (
        slow.status_code,
        slow.body,
        slow.background,
    )
    assert fast.raw_headers == slow.raw_headers
    assert fast.media_type == slow.media_type
    assert AcknowledgementResponse(notification_id).background is None


def test_a_coroutine_task_is_the_background_task_starlette_would_build() -> None:
    calls: list[tuple[str, int]] = []

    async def work(name: str, number: int) -> None:
        calls.append((name, number))

    fast, slow = CoroutineTask(work, "a", 1), BackgroundTask(work, "a", 1)
    assert (fast.func, fast.args, fast.kwargs, fast.is_async) == (
        slow.func,
        slow.args,
        slow.kwargs,
        slow.is_async,
    )
    asyncio.run(fast())
    asyncio.run(slow())
    assert calls == [("a", 1), ("a", 1)]


@pytest.mark.parametrize("render", [render_text, render_jsonl])
@pytest.mark.parametrize(
    ("email", "message"),
    [("a@example.com", "hi"), ("b@example.com", "two\nlines \\ \u2028 \x1b[31m"), ("", "")],
)
def test_a_notification_renders_as_its_record_would(
    render: Callable[[Record], str], email: str, message: str
) -> None:
    notification_id = "0f8fad5b-d9cb-469f-a165-70867728950e"
    record = Record("notification", email=email, message=message, id=notification_id)
    fast = notification_renderer(render)(email, message, notification_id)
    if render is render_jsonl:  # its record is stamped when made: compare all but the time
        fast_fields, slow_fields = json.loads(fast), json.loads(render(record))
        del fast_fields["time"], slow_fields["time"]
        assert fast_fields == slow_fields
    else:
        assert fast == render(record)


async def _outcome(awaitable: Awaitable[object]) -> str:
    try:
        await awaitable
    except asyncio.CancelledError:
        return "cancelled"
    except Exception as exc:
        return repr(exc)
    return "done"


@pytest.mark.parametrize("outcome", ["result", "exception", "cancelled"])
async def test_waiting_for_one_future_is_what_gather_gives(outcome: str) -> None:
    loop = asyncio.get_running_loop()
    results = []
    for wait in (lambda f: wait_all([f]), lambda f: asyncio.gather(f)):
        future: asyncio.Future[None] = loop.create_future()
        waiting = asyncio.ensure_future(_outcome(wait(future)))
        await asyncio.sleep(0)
        if outcome == "result":
            future.set_result(None)
        elif outcome == "exception":
            future.set_exception(SinkUnavailable("no"))
        else:
            future.cancel()
        results.append(await waiting)
    assert results[0] == results[1]


async def test_deadlines_cancel_what_is_late_as_a_timeout_would() -> None:
    """Each future is cancelled ``timeout`` s after it was added unless done; the one timer
    is armed again for later additions, after firing with and without futures left."""
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(0.05)
    on_time: asyncio.Future[None] = loop.create_future()
    late: asyncio.Future[None] = loop.create_future()
    deadlines.add([on_time, late])
    await asyncio.sleep(0.02)
    later: asyncio.Future[None] = loop.create_future()
    deadlines.add([later])
    on_time.set_result(None)
    await asyncio.sleep(0.045)
    assert on_time.result() is None
    assert late.cancelled()
    assert not later.done()  # its own deadline is 0.02 s after theirs
    await asyncio.sleep(0.03)
    assert later.cancelled()
    again: asyncio.Future[None] = loop.create_future()
    deadlines.add([again])
    await asyncio.sleep(0.07)
    assert again.cancelled()


async def test_deadlines_keep_only_waits_still_in_flight() -> None:
    """Waits that finished in time are dropped as new ones come, not kept for the timeout."""
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(timeout=60)
    for _ in range(1000):
        finished = loop.create_future()
        deadlines.add([finished])
        finished.set_result(None)
    waiting = loop.create_future()
    deadlines.add([waiting])
    assert len(deadlines) == 1
    assert not waiting.cancelled()
