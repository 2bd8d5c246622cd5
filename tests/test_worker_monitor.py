"""A worker an operator can watch (NOTIFY_WORKER_PORT): its metrics, its health."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support.redis import RedisServer
from tests.support.server import free_port, http_client, running_worker, uvicorn_server
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow  # redis-server, uvicorn and worker subprocesses


async def _until(monitor: httpx.AsyncClient, path: str, status: int, text: str = "") -> str:
    async def answered() -> str:
        try:
            response = await monitor.get(path)
        except httpx.TransportError as error:
            raise AssertionError(f"{path}: {error!r}") from error
        assert response.status_code == status, f"{path}: {response.status_code}"
        assert text in response.text, f"{path}: {response.text[:200]}"
        return response.text

    return await eventually(
        answered, interval=0.05, message=f"{path} answering {status} with {text!r}"
    )


async def test_a_worker_serves_metrics_and_health_and_says_when_redis_is_gone(
    tmp_path: Path,
) -> None:
    """/metrics counts what this worker wrote, under the local backend's names; /healthz is
    200; /readyz is 200, then 503 naming Redis (without its address) once Redis stops."""
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        port = free_port()
        settings = {
            "NOTIFY_BACKEND": "redis",
            "NOTIFY_REDIS_URL": redis.url,
            "NOTIFY_WORKER_PORT": str(port),
            "NOTIFY_REDIS_TIMEOUT": "0.5",
        }
        async with (
            uvicorn_server(tmp_path, settings) as api,
            running_worker(tmp_path, settings),
            http_client(api.url) as client,
            http_client(f"http://127.0.0.1:{port}") as monitor,
        ):
            for number in range(10):
                response = await client.post(f"/send-notification/w{number}@example.com")
                assert response.status_code == 200
            metrics = await _until(
                monitor, "/metrics", 200, "notify_notifications_written_total 10.0"
            )
            assert "notify_write_seconds_count" in metrics
            assert (await monitor.get("/healthz")).json() == {"status": "ok"}
            assert (await monitor.get("/readyz")).json() == {"status": "ready", "reasons": []}
            redis.stop()
            body = await _until(monitor, "/readyz", 503, "redis")
            assert redis.url.removeprefix("redis://").split("/")[0] not in body
    finally:
        redis.stop()
