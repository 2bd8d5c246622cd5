"""Waiting for something to become true, the one way the tests poll.

``await eventually(check)`` calls ``check`` (a function or a coroutine function, no
arguments) until it returns a truthy value, and returns that value. A falsy value or an
``AssertionError`` means "not yet": the next call comes ``interval`` seconds later. Any other
exception ends the wait at once (a bug is not something to wait out).

``timeout`` is only a safety net for a test that would otherwise hang: it is generous, and no
test may depend on how long it is. A test that asserts a real limit on time (a takeover
"within 10 s") measures and asserts that itself. Past the timeout the wait fails with an
``AssertionError`` naming ``message``, the last value ``check`` returned and the last
``AssertionError`` it raised (chained as the cause).

``wait_until`` is the same for a synchronous test, sleeping between calls.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast, overload

T = TypeVar("T")

TIMEOUT_S = 20.0
"""The default safety net: far longer than anything the tests wait for takes."""

INTERVAL_S = 0.01

_NOTHING = object()


def _failure(
    message: str | Callable[[], str] | None,
    timeout: float,
    last_value: object,
    last_error: AssertionError | None,
) -> AssertionError:
    what = message() if callable(message) else message
    text = f"{what or 'the condition'}: still not true after {timeout} s"
    if last_value is not _NOTHING:
        text += f"; the check last returned {last_value!r}"
    if last_error is not None:
        text += f"; it last failed with: {last_error}"
    return AssertionError(text)


@overload
async def eventually(
    check: Callable[[], Awaitable[T]],
    *,
    timeout: float = ...,  # noqa: ASYNC109 (the API the tests share, bounded inside)
    interval: float = ...,
    message: str | Callable[[], str] | None = ...,
) -> T: ...


@overload
async def eventually(
    check: Callable[[], T],
    *,
    timeout: float = ...,  # noqa: ASYNC109 (the API the tests share, bounded inside)
    interval: float = ...,
    message: str | Callable[[], str] | None = ...,
) -> T: ...


async def eventually(
    check: Callable[[], Awaitable[T]] | Callable[[], T],
    *,
    timeout: float = TIMEOUT_S,  # noqa: ASYNC109 (the API the tests share, bounded inside)
    interval: float = INTERVAL_S,
    message: str | Callable[[], str] | None = None,
) -> T:
    """``check()``'s first truthy value (awaited if it is awaitable); a falsy value or an
    ``AssertionError`` means "not yet". Fails with ``message`` after ``timeout`` seconds,
    also when a call of ``check`` is still under way then."""
    last_value: object = _NOTHING
    last_error: AssertionError | None = None
    bound = asyncio.timeout(timeout)
    try:
        async with bound:
            while True:
                try:
                    value = check()
                    if inspect.isawaitable(value):
                        value = await value
                except AssertionError as error:
                    last_error = error
                else:
                    if value:
                        return cast(T, value)
                    last_value, last_error = value, None
                await asyncio.sleep(interval)
    except TimeoutError:
        if not bound.expired():
            raise  # raised by the check itself
        failure = _failure(message, timeout, last_value, last_error)
        raise failure from last_error


def wait_until(
    check: Callable[[], T],
    *,
    timeout: float = TIMEOUT_S,
    interval: float = INTERVAL_S,
    message: str | Callable[[], str] | None = None,
) -> T:
    """``eventually`` for synchronous tests: blocks the calling thread between calls."""
    deadline = time.monotonic() + timeout
    last_value: object = _NOTHING
    last_error: AssertionError | None = None
    while True:
        try:
            value = check()
        except AssertionError as error:
            last_error = error
        else:
            if value:
                return value
            last_value, last_error = value, None
        if time.monotonic() >= deadline:
            failure = _failure(message, timeout, last_value, last_error)
            raise failure from last_error
        time.sleep(interval)
