"""Headless Chromium (Debian's ``chromium``, installed by ``make browser``) for the tests that
look at pages the way a person would.

The browser may reach loopback only: every host name resolves to nothing except 127.0.0.1, so
a page that needs a CDN shows what it shows on a server without internet.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

__all__ = ["chromium", "dump_dom", "screenshot"]

_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--virtual-time-budget=15000",
)


def chromium() -> str:
    """The browser's path; fails clearly when it is not installed."""
    path = shutil.which("chromium")
    assert path is not None, "chromium is not installed: run `make browser` (Debian's package)"
    return path


async def _run(profile: Path, *arguments: str) -> str:
    process = await asyncio.create_subprocess_exec(
        chromium(),
        *_FLAGS,
        f"--user-data-dir={profile}",
        *arguments,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    async with asyncio.timeout(90):
        output, _ = await process.communicate()
    assert process.returncode == 0, f"chromium exited with {process.returncode}"
    return output.decode(errors="replace")


async def dump_dom(url: str, profile: Path) -> str:
    """The page's DOM after its scripts ran (``--dump-dom``)."""
    return await _run(profile, "--dump-dom", url)


async def screenshot(url: str, profile: Path, path: Path) -> None:
    """A PNG of the rendered page at ``path``."""
    await _run(profile, f"--screenshot={path}", "--window-size=1280,1600", url)
    assert path.exists(), "no screenshot was written"
    assert path.stat().st_size > 0, "an empty screenshot"
