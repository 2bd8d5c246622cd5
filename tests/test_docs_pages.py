"""/docs and /redoc render in a real browser with no network but loopback."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.support.browser import dump_dom, screenshot
from tests.support.server import uvicorn_server

pytestmark = pytest.mark.slow  # a uvicorn subprocess and headless Chromium

ARTIFACTS = Path(
    os.environ.get("NOTIFY_TEST_ARTIFACTS", Path(__file__).parent.parent / ".artifacts")
)


@pytest.mark.parametrize(
    ("page", "rendered"),
    [
        # Swagger UI lists each operation under its tag, with its path.
        ("/docs", 'class="opblock-summary-path"'),
        # ReDoc renders the operations in its own menu.
        ("/redoc", "redoc-wrap"),
    ],
)
async def test_the_api_docs_render_without_internet(
    tmp_path: Path, page: str, rendered: str
) -> None:
    """The page's scripts and styles come from the service itself: rendered offline, it lists
    the operations (the notification endpoint among them). A screenshot is kept."""
    async with uvicorn_server(tmp_path) as server:
        dom = await dump_dom(server.url + page, tmp_path / "profile")
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / f"{page.strip('/')}.png"
        await screenshot(server.url + page, tmp_path / "profile-shot", tmp_path / "page.png")
        shutil.copyfile(tmp_path / "page.png", shot)
    assert rendered in dom
    assert "send-notification" in dom


@pytest.mark.parametrize(
    "page", ["/redoc", "/docs#/notifications/send_notifications_notifications_post"]
)
async def test_the_docs_show_the_shaping_fields_and_many_recipients_with_an_example(
    tmp_path: Path, page: str
) -> None:
    """``POST /notifications`` as a reader sees it (ReDoc; Swagger UI with the operation
    opened): its fields, ``subject`` and ``channels`` among them, the answer's
    ``duplicates``, and the example body."""
    async with uvicorn_server(tmp_path) as server:
        dom = await dump_dom(server.url + page, tmp_path / "profile")
    for shown in ["subject", "channels", "duplicates", "The build is green again"]:
        assert shown in dom, shown
    assert "grace@example.com" in dom
