"""Fixtures that run the real app, through its lifespan, on real files under ``tmp_path``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from config import Settings
from service.main import create_app
from tests.support.redis import RedisServer, redis_server


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for a test: no ``.env``, the log under ``tmp_path`` unless overridden."""
    values: dict[str, Any] = {"log_path": tmp_path / "log.txt", "shutdown_timeout": 2.0}
    values.update(overrides)
    return Settings(_env_file=None, **values)


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client for the real app; leaving the block runs the shutdown (drain and close)."""
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running(settings) as client:
        yield client


def read_lines(path: Path) -> list[str]:
    """The log's lines, each without its newline; fails if the last line is unfinished."""
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n"), "the log ends in the middle of a line"
    return text.splitlines()


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def root_log() -> Iterator[list[str]]:
    """Every line, DEBUG and up, that reaches the root logger's handlers during the test (with
    its traceback): what a process's log output shows. Not ``caplog``: pytest also attaches it
    to the loggers that do not propagate, such as Apprise's."""
    handler, root = _Lines(), logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler.lines
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture(scope="session")
def redis_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real Redis for the tests that need it, started at the first of them."""
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_session: RedisServer) -> str:
    """The shared Redis, emptied for this test."""
    import redis

    with redis.Redis.from_url(redis_session.url) as client:
        client.flushall()
    return redis_session.url
