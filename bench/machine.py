"""A description of the machine and software a benchmark ran on."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from pathlib import Path
from typing import Any

_PACKAGES = ("fastapi", "starlette", "uvicorn", "pydantic", "h11", "anyio")


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    models = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return models[0] if models else None


def machine_info() -> dict[str, Any]:
    """Where and with what the benchmark ran; uvicorn's ``auto`` picks what is importable."""
    uvloop = find_spec("uvloop") is not None
    httptools = find_spec("httptools") is not None
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {package: _version(package) for package in _PACKAGES},
        "uvloop_importable": uvloop,
        "httptools_importable": httptools,
        "uvicorn_loop": "uvloop" if uvloop else "asyncio",
        "uvicorn_http": "httptools" if httptools else "h11",
    }
