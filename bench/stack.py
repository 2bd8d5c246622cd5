"""The processes of one run: the API server and, for the redis row, redis-server and a worker.

``running_stack`` starts them in the order they need each other (redis-server answering, the
worker reading the stream, then the API; the caller waits for the API's port) and kills
whatever is still running when the block exits, error or not. ``Stack.stop`` is the orderly
end of a run: the API first (SIGTERM: it hands over what it still holds), then, once the
worker has emptied the stream or after a bound, the worker, then redis-server.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.process import ChildProcess, ServerProcess, running_server
from bench.redis_stack import RedisServer, running_redis, running_worker
from bench.servers import REDIS_STREAM, ServerSpec

_POLL_S = 0.01


@dataclass(frozen=True)
class Stopped:
    """How the processes of a run ended."""

    exit_code: int | None
    """The API's; None when it had to be killed."""
    helper_exits: dict[str, int | None]
    """The worker's and redis-server's, by name (None: killed); empty for other rows."""
    helper_peak_rss_kb: dict[str, int]
    """Their peak RSS, read just before they were stopped."""
    stream_left: int | None
    """Stream entries not yet written when the worker was stopped (redis row only)."""


@dataclass
class Stack:
    server: ServerProcess
    worker: ChildProcess | None = None
    redis: RedisServer | None = None

    @property
    def helpers(self) -> list[ChildProcess]:
        """The processes besides the API, in the order they are stopped."""
        return [process for process in (self.worker, self.redis) if process is not None]

    def helper_cpu_seconds(self) -> dict[str, float]:
        return {process.name: process.cpu_seconds() for process in self.helpers}

    def _wait_for_empty_stream(self, redis: RedisServer, limit: float) -> int:
        """Poll ``XLEN`` until the worker has written everything, died, or ``limit`` s passed."""
        deadline = time.monotonic() + limit
        while True:
            left = redis.stream_length(REDIS_STREAM)
            if left == 0 or time.monotonic() >= deadline:
                return left
            if self.worker is not None and self.worker.popen.poll() is not None:
                return left
            time.sleep(_POLL_S)

    def stop(self, timeout: float, drain_limit: float) -> Stopped:
        """API, then (after the stream drained, at most ``drain_limit`` s) worker, then Redis."""
        exit_code = self.server.stop(timeout)
        left = None if self.redis is None else self._wait_for_empty_stream(self.redis, drain_limit)
        peak_rss_kb = {process.name: process.peak_rss_kb() for process in self.helpers}
        exits = {process.name: process.stop(timeout) for process in self.helpers}
        return Stopped(exit_code, exits, peak_rss_kb, left)


@contextmanager
def running_stack(
    spec: ServerSpec, run_dir: Path, repo_root: Path, ready_timeout: float
) -> Iterator[Stack]:
    """Start the run's processes in ``run_dir``; all of them are killed when the block exits."""
    with ExitStack() as started:
        if not spec.redis:
            yield Stack(started.enter_context(running_server(spec, run_dir, repo_root)))
            return
        redis = started.enter_context(running_redis(run_dir, ready_timeout))
        worker = started.enter_context(
            running_worker(spec, run_dir, repo_root, redis.url, ready_timeout)
        )
        server = started.enter_context(running_server(spec, run_dir, repo_root, redis.url))
        yield Stack(server, worker, redis)
