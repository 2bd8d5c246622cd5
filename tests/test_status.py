"""The bounded, expiring memory a process keeps of the statuses it accepted."""

from __future__ import annotations

from service.status import NotificationStatus, StatusStore


def test_a_status_goes_from_queued_to_failed_to_written() -> None:
    now = [100.0]
    store = StatusStore(limit=10, ttl=60.0, clock=lambda: now[0])
    store.accepted("a", 100.0)
    store.accepted("b", 100.0)
    assert store.get("a") == NotificationStatus("a", "queued", 100.0)
    store.failed(["a"], "[Errno 28] No space left on device", 1)
    assert store.get("a") == NotificationStatus(
        "a", "failed", 100.0, None, 1, "[Errno 28] No space left on device"
    )
    now[0] = 101.5
    store.written(["a", "b", "unknown"], 2)
    assert store.get("a") == NotificationStatus("a", "written", 100.0, 101.5, 2, None)
    assert store.get("b") == NotificationStatus("b", "written", 100.0, 101.5, 2, None)
    assert store.get("unknown") is None


def test_a_withdrawn_status_is_failed_with_its_reason_and_attempts() -> None:
    store = StatusStore(limit=10, ttl=60.0, clock=lambda: 0.0)
    store.accepted("a", 0.0)
    store.withdrawn("a", "gave up")
    assert store.get("a") == NotificationStatus("a", "failed", 0.0, None, 0, "gave up")
    store.accepted("b", 0.0)
    store.failed(["b"], "EIO", 3)
    store.withdrawn("b", "gave up")
    assert store.get("b") == NotificationStatus("b", "failed", 0.0, None, 3, "gave up")


def test_statuses_are_bounded_and_expire_oldest_first() -> None:
    now = [0.0]
    store = StatusStore(limit=3, ttl=10.0, clock=lambda: now[0])
    for number in range(5):
        store.accepted(str(number), float(number))
    assert [store.get(str(number)) is not None for number in range(5)] == [
        False,
        False,
        True,
        True,
        True,
    ]
    now[0] = 13.0  # "2" and "3" are 10 s old or more: unreadable, and dropped by a batch
    assert store.get("3") is None
    assert store.get("4") is not None
    store.written(["4"], 1)
    assert list(store._accepted) == ["4"]
