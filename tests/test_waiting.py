"""The shared wait (tests/support/waiting.py): what it returns, and how it fails."""

from __future__ import annotations

import pytest

from tests.support.waiting import eventually, wait_until


async def test_eventually_returns_the_first_truthy_value_of_a_sync_or_async_check() -> None:
    calls: list[int] = []

    def counted() -> list[int]:
        calls.append(len(calls))
        return calls if len(calls) >= 3 else []

    async def later() -> str:
        return "ready"

    assert await eventually(counted, interval=0) == [0, 1, 2]
    assert await eventually(later) == "ready"


async def test_an_assertion_error_means_not_yet() -> None:
    seen: list[int] = []

    def check() -> int:
        seen.append(1)
        assert len(seen) > 2, "not yet"
        return len(seen)

    assert await eventually(check, interval=0) == 3


async def test_eventually_fails_with_the_message_and_the_last_result() -> None:
    def never() -> int:
        return 0

    with pytest.raises(AssertionError, match=r"the log's 3 lines: still not true after 0 s"):
        await eventually(never, timeout=0, message="the log's 3 lines")
    with pytest.raises(AssertionError, match=r"last returned 0"):
        await eventually(never, timeout=0)


async def test_the_last_assertion_error_is_kept() -> None:
    def failing() -> bool:
        raise AssertionError("status stayed queued")

    with pytest.raises(AssertionError, match="status stayed queued") as caught:
        await eventually(failing, timeout=0, message=lambda: "written")
    assert isinstance(caught.value.__cause__, AssertionError)


async def test_other_errors_end_the_wait_at_once() -> None:
    def broken() -> bool:
        raise KeyError("status")

    with pytest.raises(KeyError):
        await eventually(broken)


def test_wait_until_is_the_synchronous_twin() -> None:
    values = iter([None, "", "done"])
    assert wait_until(lambda: next(values), interval=0) == "done"
    with pytest.raises(AssertionError, match="zombie: still not true"):
        wait_until(lambda: False, timeout=0, message="zombie")
