"""Each fast path on the request path gives exactly what the general code it replaces gives."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest

from service.records import Record, notification_renderer, render_jsonl, render_text
from service.services.deadlines import Deadlines, wait_all
from service.sinks.base import SinkUnavailable


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


async def test_deadlines_cancel_what_is_late_in_the_order_it_was_added() -> None:
    """A future not done by its deadline is cancelled, one done in time never is; late ones
    go in the order they were added; the one timer is armed again for later additions."""
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(0.01)
    on_time: asyncio.Future[None] = loop.create_future()
    late: asyncio.Future[None] = loop.create_future()
    deadlines.add([on_time, late])
    on_time.set_result(None)
    later: asyncio.Future[None] = loop.create_future()
    deadlines.add([later])
    order: list[str] = []
    late.add_done_callback(lambda _: order.append("late"))
    later.add_done_callback(lambda _: order.append("later"))
    await asyncio.wait([late, later])
    assert on_time.result() is None
    assert late.cancelled()
    assert later.cancelled()
    assert order == ["late", "later"]
    again: asyncio.Future[None] = loop.create_future()
    deadlines.add([again])  # after the timer fired with nothing left
    await asyncio.wait([again])
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
