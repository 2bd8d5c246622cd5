"""The one retry policy (``Backoff``) and the one failure-episode logger (``Episode``)."""

from __future__ import annotations

import logging
import time

import pytest

from service.retry import Backoff, Episode

LOGGER = "tests.retry"


def _draws(backoff: Backoff, attempt: int, at_least: float | None = None) -> set[float]:
    return {backoff.delay(attempt, at_least=at_least) for _ in range(200)}


@pytest.mark.parametrize("attempt", range(12))
def test_equal_jitter_waits_between_half_and_all_of_the_ceiling(attempt: int) -> None:
    """Each wait is between half and all of min(maximum, initial * 2**attempt), and varies."""
    backoff = Backoff(initial=0.05, maximum=2.0)
    ceiling = min(2.0, 0.05 * 2**attempt)
    delays = _draws(backoff, attempt)
    assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
    assert len(delays) > 1  # jittered, not fixed


@pytest.mark.parametrize("attempt", range(12))
def test_full_jitter_waits_between_nothing_and_the_ceiling(attempt: int) -> None:
    """With full jitter each wait is between 0 and min(maximum, initial * 2**attempt)."""
    backoff = Backoff(initial=0.05, maximum=2.0, jitter="full")
    ceiling = min(2.0, 0.05 * 2**attempt)
    delays = _draws(backoff, attempt)
    assert all(0.0 <= delay <= ceiling for delay in delays)
    assert any(delay < ceiling / 2 for delay in delays)  # not equal jitter's lower half


def test_the_ceiling_doubles_from_initial_up_to_maximum() -> None:
    """The ceiling is initial * 2**attempt until it reaches maximum, then stays there."""
    backoff = Backoff(initial=0.25, maximum=3.0)
    assert [backoff.ceiling(attempt) for attempt in range(6)] == [0.25, 0.5, 1.0, 2.0, 3.0, 3.0]


@pytest.mark.parametrize("attempt", [63, 64, 1_000, 10**9])
@pytest.mark.parametrize(
    ("backoff", "low"),
    [(Backoff(0.05, 2.0, "equal"), 1.0), (Backoff(0.05, 2.0, "full"), 0.0)],
    ids=["equal", "full"],
)
def test_huge_attempt_numbers_wait_at_most_the_maximum(
    attempt: int, backoff: Backoff, low: float
) -> None:
    """However many failures came before, the ceiling is the maximum and nothing overflows."""
    assert backoff.ceiling(attempt) == 2.0
    assert all(low <= delay <= 2.0 for delay in _draws(backoff, attempt))


def test_at_least_is_a_floor_above_the_backoff() -> None:
    """A Retry-After longer than the backoff is waited exactly, even past the maximum."""
    backoff = Backoff(initial=0.05, maximum=2.0)
    assert _draws(backoff, 0, at_least=30.0) == {30.0}
    assert _draws(backoff, 10**6, at_least=2.5) == {2.5}


def test_at_least_below_the_backoff_changes_nothing() -> None:
    """A Retry-After shorter than the backoff leaves the jittered backoff as it is."""
    backoff = Backoff(initial=1.0, maximum=8.0)
    delays = _draws(backoff, 3, at_least=1.0)
    assert all(4.0 <= delay <= 8.0 for delay in delays)
    assert len(delays) > 1


def test_at_least_lifts_only_the_draws_below_it() -> None:
    """A Retry-After inside the jitter range is the least wait; longer draws stay as drawn."""
    backoff = Backoff(initial=1.0, maximum=8.0, jitter="full")
    delays = _draws(backoff, 3, at_least=6.0)
    assert all(6.0 <= delay <= 8.0 for delay in delays)
    assert 6.0 in delays
    assert len(delays) > 1


def _episode() -> Episode:
    return Episode(
        logging.getLogger(LOGGER),
        "disk",
        failing="write failed: {error}; {waiting} waiting",
        recovered="writing again after {seconds:.1f} s; {waited} had waited",
    )


def _lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER]


def test_a_run_of_failures_logs_one_line_when_it_starts(caplog: pytest.LogCaptureFixture) -> None:
    """Only the first failure logs (at ERROR, with its error); ``fail`` says which it was."""
    episode = _episode()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert episode.fail("disk full", waiting=3) is True
        assert episode.fail("still full", waiting=4) is False
        assert episode.fail("gone", waiting=5) is False
    assert _lines(caplog) == [(logging.ERROR, "disk: write failed: disk full; 3 waiting")]
    assert episode.failing
    assert episode.error == "gone"  # the latest error, for /readyz


def test_the_end_of_an_episode_logs_one_line_with_its_length(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``recover`` ends the episode: one INFO line, and it returns how long the episode was."""
    episode = _episode()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        before = time.monotonic()
        episode.fail("disk full", waiting=1)
        assert before <= episode.since <= time.monotonic()
        seconds = episode.recover(waited=7)
        assert episode.recover(waited=8) is None
    assert seconds is not None
    assert seconds >= 0.0
    assert _lines(caplog) == [
        (logging.ERROR, "disk: write failed: disk full; 1 waiting"),
        (logging.INFO, f"disk: writing again after {seconds:.1f} s; 7 had waited"),
    ]
    assert not episode.failing
    assert episode.error is None


def test_recovering_without_a_failure_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """``recover`` while nothing fails returns None and logs nothing."""
    episode = _episode()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        assert episode.recover(waited=0) is None
    assert _lines(caplog) == []
    assert not episode.failing


def test_detail_is_logged_and_error_is_kept(caplog: pytest.LogCaptureFixture) -> None:
    """The log line gets ``detail``; ``error`` (for clients and /readyz) stays the short one."""
    episode = _episode()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        episode.fail("redis unreachable", detail="redis at 10.0.0.1:6379 refused", waiting=0)
    assert _lines(caplog) == [
        (logging.ERROR, "disk: write failed: redis at 10.0.0.1:6379 refused; 0 waiting")
    ]
    assert episode.error == "redis unreachable"


def test_each_new_episode_is_logged_again(caplog: pytest.LogCaptureFixture) -> None:
    """After a recovery the next failure starts a new episode: two lines per episode."""
    episode = Episode(logging.getLogger(LOGGER), "redis")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert episode.fail("down") is True
        first = episode.recover()
        assert episode.fail("down again") is True
        assert episode.fail("still down") is False
        second = episode.recover()
    assert first is not None
    assert second is not None
    assert _lines(caplog) == [
        (logging.ERROR, "redis: failing: down; retrying"),
        (logging.INFO, f"redis: working again after {first:.1f} s"),
        (logging.ERROR, "redis: failing: down again; retrying"),
        (logging.INFO, f"redis: working again after {second:.1f} s"),
    ]
