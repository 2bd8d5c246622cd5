"""``NOTIFY_BACKEND=redis``: the API hands lines to a real Redis stream and real worker
processes (``notify-worker``) write the log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from service.redis.stream import GROUP, RECORDS
from tests.conftest import read_lines
from tests.support.redis import RedisServer
from tests.support.server import (
    http_client,
    post_notifications,
    run_until_exit,
    running_worker,
    service_env,
    uvicorn_server,
    worker_command,
)
from tests.support.waiting import eventually
from tests.support.webhooks import webhook_receiver

pytestmark = pytest.mark.slow  # redis-server, uvicorn and worker subprocesses

ACKNOWLEDGEMENT = b'{"message":"Notification sent in the background"}'
STREAM = "notifications"


def _backend(url: str, **settings: str) -> dict[str, str]:
    return {"NOTIFY_BACKEND": "redis", "NOTIFY_REDIS_URL": url, **settings}


def _lines(path: Path) -> list[str]:
    return read_lines(path) if path.exists() else []


async def _wait_for_lines(path: Path, count: int) -> list[str]:
    """The log once it has at least ``count`` lines."""

    def enough() -> list[str]:
        lines = _lines(path)
        return lines if len(lines) >= count else []

    return await eventually(
        enough,
        interval=0.05,
        message=lambda: f"{count} lines in the log (it has {len(_lines(path))})",
    )


async def _wait_for_every_line(path: Path, expected: set[str]) -> None:
    """Return once the log holds every line of ``expected`` (repeats allowed). A count of
    lines is not enough once lines can repeat."""
    await eventually(
        lambda: expected.issubset(_lines(path)),
        interval=0.05,
        message=lambda: f"{len(expected.difference(_lines(path)))} lines still missing",
    )


async def _until_stopped(pid: int) -> None:
    """Return once every thread of ``pid`` is stopped (SIGSTOP is delivered asynchronously:
    ``kill`` returns before the process has stopped)."""

    def stopped() -> bool:
        states = []
        for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
            with contextlib.suppress(FileNotFoundError):  # a thread that just ended
                states.append(stat.read_text().rpartition(")")[2].split()[0])
        return bool(states) and all(state in ("T", "t") for state in states)

    await eventually(stopped, message=f"every thread of {pid} stopped")


async def _just_after_a_ping(redis_url: str) -> None:
    """Return as soon as Redis has answered another PING (the API's idle check)."""
    async with aioredis.Redis.from_url(redis_url) as redis:

        async def pings() -> int:
            stats = await redis.info("commandstats")
            calls: int = stats.get("cmdstat_ping", {}).get("calls", 0)
            return calls

        before = await pings()

        async def another_ping() -> bool:
            return await pings() > before

        await eventually(another_ping, interval=0.005, message="another PING")


async def _until_ready(client: httpx.AsyncClient) -> None:
    """Return once ``/readyz`` answers 200."""

    async def ready() -> bool:
        return (await client.get("/readyz")).status_code == 200

    await eventually(ready, interval=0.05, message="/readyz answering 200")


async def _until_nothing_is_held(client: httpx.AsyncClient) -> None:
    """Return once ``/readyz`` (200 or 503) says the API holds no line: each one it took was
    handed over to Redis or withdrawn (a 503 after the ack timeout)."""

    async def nothing_held() -> bool:
        sinks = (await client.get("/readyz")).json()["sinks"]
        return all(sink["queued"] == 0 for sink in sinks)

    await eventually(nothing_held, interval=0.02, message="the API holding no line")


async def _until_the_stream_is_empty(redis_url: str) -> None:
    """Return once the stream holds no message: a worker wrote every batch handed over and
    deleted it with its acknowledgement."""
    async with aioredis.Redis.from_url(redis_url) as redis:

        async def empty() -> bool:
            return await redis.xlen(STREAM) == 0

        await eventually(empty, interval=0.05, message=f"an empty {STREAM} stream")


def _assert_not_ready_for_redis(ready: httpx.Response) -> None:
    assert ready.status_code == 503
    assert "redis stream notifications" in ready.json()["reasons"][0]


async def _wait_for_status(
    client: httpx.AsyncClient, notification_id: str, status: str
) -> dict[str, object]:
    async def reached() -> dict[str, object]:
        response = await client.get(f"/notifications/{notification_id}")
        body: dict[str, object] = response.json() if response.status_code == 200 else {}
        assert body.get("status") == status, body
        return body

    return await eventually(reached, interval=0.05, message=f"status {status}")


async def _stream_batches(redis_url: str) -> list[list[list[Any]]]:
    """The records of each entry in the stream (the JSON form of ``WireRecord``)."""
    async with aioredis.Redis.from_url(redis_url) as redis:
        entries: Any = await redis.xrange(STREAM)
    return [json.loads(fields[RECORDS.encode()]) for _, fields in entries]


async def test_a_worker_writes_what_the_api_accepted_in_order(
    tmp_path: Path, redis_url: str
) -> None:
    """The guide's two lines, query first, reach the log through Redis and a worker."""
    settings = _backend(redis_url)
    async with (
        uvicorn_server(tmp_path, settings) as api,
        running_worker(tmp_path, settings),
        http_client(api.url) as client,
    ):
        response = await client.post(
            "/send-notification/ada@example.com", params={"q": "hi"}, json={"message": "hello"}
        )
        assert response.status_code == 200
        assert response.json() == {"message": "Notification sent in the background"}
        lines = await _wait_for_lines(tmp_path / "log.txt", 2)
        assert lines == ["found query: hi", "notification for ada@example.com: hello"]
        status = await _wait_for_status(client, response.headers["x-notification-id"], "written")
        assert status["attempts"] == 1


async def test_ack_write_answers_once_redis_holds_the_record(
    tmp_path: Path, redis_url: str
) -> None:
    """With ack=write the 200 means Redis has the record: it is in the stream before any
    worker runs, and a worker started later writes it."""
    settings = _backend(redis_url, NOTIFY_ACK="write")
    async with uvicorn_server(tmp_path, settings) as api, http_client(api.url) as client:
        response = await client.post("/send-notification/bob@example.com")
        assert response.status_code == 200
        batches = await _stream_batches(redis_url)
        assert [record[2] for batch in batches for record in batch] == [
            "notification for bob@example.com: some notification\n"
        ]
        notification_id = response.headers["x-notification-id"]
        assert (await client.get(f"/notifications/{notification_id}")).json()["status"] == (
            "queued"
        )
        async with running_worker(tmp_path, settings):
            lines = await _wait_for_lines(tmp_path / "log.txt", 1)
            await _wait_for_status(client, notification_id, "written")
    assert lines == ["notification for bob@example.com: some notification"]


async def test_status_and_idempotency_keys_work_across_api_processes(
    tmp_path: Path, redis_url: str
) -> None:
    """Two API processes share statuses and Idempotency-Keys through Redis: 50 copies of one
    request with one key, sent at once to both, get one id and write one line."""
    settings = _backend(redis_url)
    async with (
        uvicorn_server(tmp_path, settings, output_name="a.txt") as first,
        uvicorn_server(tmp_path, settings, output_name="b.txt") as second,
        running_worker(tmp_path, settings),
        http_client(first.url) as a,
        http_client(second.url) as b,
    ):
        key = {"Idempotency-Key": "order-17"}
        answers = await asyncio.gather(
            *(
                client.post("/send-notification/cy@example.com", headers=key)
                for _ in range(25)
                for client in (a, b)
            )
        )
        assert {response.status_code for response in answers} == {200}
        assert len({response.headers["x-notification-id"] for response in answers}) == 1
        one = answers[0]
        other = await b.post(
            "/send-notification/cy@example.com", headers=key, json={"message": "changed"}
        )
        assert other.status_code == 422
        assert "different request" in other.text
        await _wait_for_status(b, one.headers["x-notification-id"], "written")
        # Every line either API took is in Redis, and every batch in Redis is written: a
        # second line, if there were one, would be in the log now.
        for client in (a, b):
            await _until_nothing_is_held(client)
        await _until_the_stream_is_empty(redis_url)
    assert read_lines(tmp_path / "log.txt") == [
        "notification for cy@example.com: some notification"
    ]


async def test_redis_down_gets_503_and_the_service_recovers_by_itself(tmp_path: Path) -> None:
    """Redis stopped: once the API notices, POST answers 503 naming Redis and /readyz says
    why; what it took before noticing is held. Redis back: both recover without a restart,
    and every acknowledged line is written."""
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        settings = _backend(redis.url)
        async with (
            uvicorn_server(tmp_path, settings) as api,
            running_worker(tmp_path, settings),
            http_client(api.url) as client,
        ):
            for n in range(3):
                response = await client.post(f"/send-notification/before{n}@example.com")
                assert response.status_code == 200
            redis.stop()
            # Until the API notices (its next hand-over, or its check within a second), a
            # request is still taken: held in memory and handed over once Redis is back.
            held: list[str] = []

            async def refused_at_last() -> httpx.Response:
                email = f"during{len(held)}@example.com"
                response = await client.post(f"/send-notification/{email}")
                if response.status_code != 200:
                    return response
                held.append(email)
                raise AssertionError(f"{email} was taken")

            refused = await eventually(
                refused_at_last, interval=0.02, message="a POST refused once Redis is gone"
            )
            assert refused.status_code == 503
            assert "redis" in refused.json()["detail"]
            assert refused.headers["retry-after"] == "1"
            ready = await client.get("/readyz")
            _assert_not_ready_for_redis(ready)
            # Clients learn that Redis is unavailable, not where it is; the log says where.
            address = redis.url.removeprefix("redis://").split("/")[0]
            port = address.rsplit(":", 1)[1]  # redis-py also names it as ('127.0.0.1', port)
            for text in (refused.text, ready.text):
                assert address not in text
                assert port not in text
            redis.start()
            await _until_ready(client)
            after = await client.post("/send-notification/after@example.com")
            assert after.status_code == 200
            lines = await _wait_for_lines(tmp_path / "log.txt", 4 + len(held))
            assert api.output().count("write failed") == 1
            assert "Traceback" not in api.output()
    finally:
        redis.stop()
    assert sorted(lines) == sorted(
        [f"notification for before{n}@example.com: some notification" for n in range(3)]
        + [f"notification for {email}: some notification" for email in held]
        + ["notification for after@example.com: some notification"]
    )


async def test_a_failing_xadd_is_retried_and_reported_not_the_end_of_the_sender(
    tmp_path: Path, redis_url: str
) -> None:
    """Redis refuses the XADD itself (here the stream's key holds a string: WRONGTYPE) after
    the statuses were set. It is a failed hand-over like any other (under taskiq it was once
    taskiq's own SendTaskError, which ended the sender task silently while POST went on
    answering 200): logged once, 503 naming the error, retried, and handed over once Redis
    takes it."""
    async with aioredis.Redis.from_url(redis_url) as redis:
        await redis.set(STREAM, "not a stream")
        settings = _backend(redis_url)
        async with uvicorn_server(tmp_path, settings) as api, http_client(api.url) as client:
            taken = await client.post("/send-notification/first@example.com")
            assert taken.status_code == 200

            async def not_ready() -> httpx.Response:
                response = await client.get("/readyz")
                assert response.status_code != 200
                return response

            # until the sender's hand-over has failed
            ready = await eventually(not_ready, interval=0.02, message="/readyz not 200")
            assert "WRONGTYPE" in ready.json()["reasons"][0], ready.text
            refused = await client.post("/send-notification/second@example.com")
            assert refused.status_code == 503
            assert "WRONGTYPE" in refused.json()["detail"]
            await redis.delete(STREAM)
            await _until_ready(client)
            batches = await _stream_batches(redis_url)
            assert api.output().count("write failed") == 1
            assert "Traceback" not in api.output()
    assert [record[2] for batch in batches for record in batch] == [
        "notification for first@example.com: some notification\n"
    ]


async def test_ack_write_503_while_redis_is_down_means_the_line_is_never_handed_over(
    tmp_path: Path,
) -> None:
    """With ack=write, a request taken just before the API noticed Redis was gone waits for
    the hand-over, gets 503 after NOTIFY_ACK_TIMEOUT, and its line is left out of the retried
    batch: once Redis is back the stream holds only what was acknowledged."""
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        settings = _backend(
            redis.url,
            NOTIFY_ACK="write",
            NOTIFY_ACK_TIMEOUT="0.5",
            NOTIFY_FILE_CHECK_INTERVAL="2",
        )
        async with uvicorn_server(tmp_path, settings) as api, http_client(api.url) as client:
            await _until_ready(client)
            # Stop Redis just after the API's idle check: the next one is 2 s away, so the POST
            # is taken (not refused at once) and its hand-over is what finds Redis gone.
            await _just_after_a_ping(redis.url)
            redis.stop()
            given_up = await client.post("/send-notification/given.up@example.com")
            assert given_up.status_code == 503
            assert "did not confirm" in given_up.json()["detail"]
            # The sender's next retry leaves the withdrawn line out (and gives its room back)
            # before Redis is back: no attempt still under way can carry it there.
            await _until_nothing_is_held(client)
            redis.start()
            await _until_ready(client)
            after = await client.post("/send-notification/after@example.com")
            assert after.status_code == 200
            batches = await _stream_batches(redis.url)
            assert "Traceback" not in api.output()
    finally:
        redis.stop()
    assert [record[2] for batch in batches for record in batch] == [
        "notification for after@example.com: some notification\n"
    ]


@pytest.mark.parametrize("channel", [False, True], ids=["log-only", "webhook"])
async def test_api_and_worker_start_without_redis_and_serve_once_it_comes(
    tmp_path: Path, channel: bool
) -> None:
    """Redis not there at start: the API and a worker start anyway (with a delivery channel
    too: the outbox's first count waits for Redis), the API refuses with 503 and is not ready;
    Redis started: both carry on by themselves and what the API accepts is written (and
    delivered)."""
    redis = RedisServer(tmp_path / "redis")  # a free port, nothing listening yet
    with webhook_receiver() as hooks:
        try:
            settings = _backend(redis.url)
            if channel:
                settings["NOTIFY_WEBHOOK_URL"] = hooks.url()
                settings["NOTIFY_WEBHOOK_SECRET"] = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVg=="
            async with (
                uvicorn_server(tmp_path, settings) as api,
                running_worker(tmp_path, settings) as worker,
                http_client(api.url) as client,
            ):
                _assert_not_ready_for_redis(await client.get("/readyz"))
                refused = await client.post("/send-notification/early@example.com")
                assert refused.status_code == 503
                assert "redis" in refused.json()["detail"]
                redis.start()
                await _until_ready(client)
                accepted = await client.post("/send-notification/later@example.com")
                assert accepted.status_code == 200
                lines = await _wait_for_lines(tmp_path / "log.txt", 1)
                if channel:
                    await eventually(lambda: len(hooks.receiver.on("/hook")) == 1)
                assert "Traceback" not in worker.output() + api.output()
        finally:
            redis.stop()
    assert lines == ["notification for later@example.com: some notification"]


async def _pending_records(redis: aioredis.Redis) -> tuple[str, set[str]]:
    """The one consumer holding messages, and the ids of the lines in those messages."""
    consumers = await redis.xinfo_consumers(STREAM, GROUP)
    holders = [consumer for consumer in consumers if consumer["pending"] > 0]
    assert len(holders) == 1, consumers
    name = holders[0]["name"]
    name = name.decode() if isinstance(name, bytes) else name
    pending = await redis.xpending_range(STREAM, GROUP, "-", "+", 10_000, consumername=name)
    ids: set[str] = set()
    for entry in pending:
        entries: Any = await redis.xrange(STREAM, entry["message_id"], entry["message_id"])
        for _, fields in entries:
            ids.update(record[0] for record in json.loads(fields[RECORDS.encode()]))
    return name, ids


async def test_a_killed_workers_batches_are_written_by_another_within_10_s(
    tmp_path: Path, redis_url: str
) -> None:
    """5,000 notifications, no further traffic; the worker writing them is frozen right after
    a write (SIGSTOP once lines appear), then SIGKILLed. Another worker takes its batches over
    by itself (the reclaim timer) within 10 s: every acknowledged line is in the log exactly
    once, the killed worker's written-but-unacknowledged lines included (service.redis.writes)."""
    settings = _backend(redis_url, NOTIFY_ACK="write", NOTIFY_BATCH_SIZE="50")
    log = tmp_path / "log.txt"
    emails = [f"n{number:05d}@example.com" for number in range(5000)]
    async with uvicorn_server(tmp_path, settings) as api:
        async with asyncio.timeout(60):
            posted = await post_notifications(
                api.url, emails, concurrency=32, acknowledgement=ACKNOWLEDGEMENT
            )
    assert len(posted.acknowledged) == 5000, posted.unexpected[:3]

    async with (
        aioredis.Redis.from_url(redis_url) as redis,
        running_worker(tmp_path, settings, output_name="first.txt") as first,
    ):
        await _wait_for_lines(log, 200)
        os.killpg(first.pid, signal.SIGSTOP)  # freeze it mid-stream, then kill it there
        await _until_stopped(first.pid)
        _, in_flight = await _pending_records(redis)
        os.killpg(first.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        async with asyncio.timeout(5):
            await first.process.wait()
        written_by_first = Counter(read_lines(log))
        assert 200 <= sum(written_by_first.values()) < 5000
        assert in_flight, "the killed worker held no batch: nothing to redeliver"
        expected = {f"notification for {email}: some notification" for email in emails}
        async with running_worker(tmp_path, settings, output_name="second.txt") as second:
            await _wait_for_every_line(log, expected)
            redelivered = time.monotonic() - killed_at
            assert "took over" in second.output()
            await _until_the_stream_is_empty(redis_url)  # acknowledged batches are deleted
            counts = Counter(read_lines(log))  # every batch acknowledged: the log is final

    assert set(counts) == expected
    repeated = {line: n for line, n in counts.items() if n > 1}
    assert repeated == {}
    assert redelivered < 10


async def test_a_stopped_worker_finishes_what_it_read_and_exits_0(
    tmp_path: Path, redis_url: str
) -> None:
    """SIGTERM while a worker writes a backlog: it writes and acknowledges every batch it had
    read, holds none, exits 0; each line is either in the log, once, or still in the stream."""
    settings = _backend(redis_url, NOTIFY_ACK="write", NOTIFY_BATCH_SIZE="20")
    log = tmp_path / "log.txt"
    emails = [f"t{number:04d}@example.com" for number in range(2000)]
    async with uvicorn_server(tmp_path, settings) as api:
        async with asyncio.timeout(60):
            posted = await post_notifications(
                api.url, emails, concurrency=32, acknowledgement=ACKNOWLEDGEMENT
            )
    assert len(posted.acknowledged) == len(emails), posted.unexpected[:3]
    async with (
        aioredis.Redis.from_url(redis_url) as redis,
        running_worker(tmp_path, settings) as worker,
    ):
        await _wait_for_lines(log, 1)
        worker.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await worker.wait_exit() == 0
        assert "worker stopped" in worker.output()
        assert "Traceback" not in worker.output()
        consumers = await redis.xinfo_consumers(STREAM, GROUP)
        assert [consumer["pending"] for consumer in consumers] == [0]
        left = [record[2] for batch in await _stream_batches(redis_url) for record in batch]
    written = Counter(read_lines(log))
    assert max(written.values()) == 1
    assert sorted([*written, *(line.removesuffix("\n") for line in left)]) == sorted(
        f"notification for {email}: some notification" for email in emails
    )


async def test_the_api_spools_what_redis_did_not_take_by_shutdown_and_sends_it_next_start(
    tmp_path: Path,
) -> None:
    """Redis gone before a lingering batch was handed over: shutdown spools it (the 200s are
    kept), and the next start hands it over to Redis before anything else."""
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        settings = _backend(redis.url, NOTIFY_BATCH_DELAY="3", NOTIFY_SHUTDOWN_TIMEOUT="0.5")
        async with uvicorn_server(tmp_path, settings, output_name="first.txt") as api:
            async with http_client(api.url) as client:
                for n in range(3):
                    response = await client.post(f"/send-notification/s{n}@example.com")
                    assert response.status_code == 200
            redis.stop()
        spool = tmp_path / "log.txt.queue-spool"
        assert len(spool.read_text().splitlines()) == 3
        redis.start()
        async with uvicorn_server(tmp_path, settings, output_name="second.txt") as api:
            await eventually(  # claimed (renamed) at start, deleted once handed over
                lambda: not list(tmp_path.glob("log.txt.queue-spool*")),
                interval=0.05,
                message="the spool handed over",
            )
            batches = await _stream_batches(redis.url)
            assert "spooled by an earlier run" in api.output()
    finally:
        redis.stop()
    assert sorted(record[2] for batch in batches for record in batch) == [
        f"notification for s{n}@example.com: some notification\n" for n in range(3)
    ]


def test_a_worker_that_cannot_open_its_log_stops_with_one_line(tmp_path: Path) -> None:
    """``make worker`` with an unusable log path exits 1 at once, naming the path and why,
    instead of a worker process that retries for ever."""
    (tmp_path / "a-file").write_text("")
    log = tmp_path / "a-file" / "log.txt"
    env = service_env({"NOTIFY_BACKEND": "redis", "NOTIFY_LOG_PATH": str(log)})
    exited = run_until_exit(
        worker_command(), cwd=tmp_path, env=env, output_path=tmp_path / "out.txt", timeout=20
    )
    assert exited.returncode == 1
    assert exited.output.strip() == f"error: cannot open log file {log}: File exists ({log.parent})"
