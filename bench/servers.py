"""The servers under test, one ``ServerSpec`` each: add a row to ``SERVERS`` to add one."""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

LOG_FILE_NAME = "log.txt"
"""The notification log, inside each run's directory (which is also the server's cwd)."""


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server: ``uvicorn {module}:app`` with extra environment.

    ``{run_dir}`` in an env value is replaced by the run's directory, ``{redis_url}`` by the
    URL of the run's redis-server (rows with ``redis``).
    """

    name: str
    module: str
    env: Mapping[str, str] = field(default_factory=dict)
    writes_log: bool = True
    """Whether acknowledged requests must end up as lines in ``log.txt``."""
    default: bool = True
    """Whether a run without ``--servers`` includes it (when its module exists)."""
    redis: bool = False
    """Whether each run also starts a redis-server and one worker, which writes ``log.txt``."""
    workers: int = 1
    """uvicorn's ``--workers``: processes sharing the port (and the service's files)."""

    @property
    def app(self) -> str:
        return f"{self.module}:app"

    def source(self, repo_root: Path) -> Path:
        return repo_root.joinpath(*self.module.split(".")).with_suffix(".py")

    def is_available(self, repo_root: Path) -> bool:
        return self.source(repo_root).is_file()

    def env_for(self, run_dir: Path, redis_url: str = "") -> dict[str, str]:
        return {
            key: value.format(run_dir=run_dir, redis_url=redis_url)
            for key, value in self.env.items()
        }


REDIS_STREAM = "notifications"
"""The stream the redis row's API and worker share (the harness watches its length)."""

_SERVICE_ENV = {"NOTIFY_LOG_PATH": f"{{run_dir}}/{LOG_FILE_NAME}"}
_EMAIL_ENV = {
    **_SERVICE_ENV,
    "NOTIFY_SMTP_URL": "smtp://127.0.0.1:9",  # never connected to: nothing delivers
    "NOTIFY_SMTP_FROM": "bench@example.com",
    "NOTIFY_DELIVERY": "external",
}
_REDIS_ENV = {
    **_SERVICE_ENV,
    "NOTIFY_BACKEND": "redis",
    "NOTIFY_REDIS_URL": "{redis_url}",
    "NOTIFY_REDIS_STREAM": REDIS_STREAM,
}

SERVERS: tuple[ServerSpec, ...] = (
    ServerSpec("bare", "bench.apps.bare", writes_log=False),
    ServerSpec("same-signature", "bench.apps.same_signature", writes_log=False),
    ServerSpec("guide", "bench.apps.guide"),
    ServerSpec("service", "service.main", env=_SERVICE_ENV),
    ServerSpec(
        "service-ack-write",
        "service.main",
        env={**_SERVICE_ENV, "NOTIFY_ACK": "write"},
        default=False,
    ),
    # Email on, delivered by nobody (NOTIFY_DELIVERY=external: the API only takes the
    # deliveries into its outbox): what the intake costs the request path, with nothing
    # sending beside it (python -m bench.email measures the API with delivery on).
    ServerSpec("service-email", "service.main", env=_EMAIL_ENV, default=False),
    ServerSpec("redis", "service.main", env=_REDIS_ENV, default=False, redis=True),
    # --workers 2, side by side (not in make bench: the 2-core machine runs the load too)
    ServerSpec("bare-workers-2", "bench.apps.bare", writes_log=False, default=False, workers=2),
    ServerSpec("service-workers-2", "service.main", env=_SERVICE_ENV, default=False, workers=2),
)

REDIS_MISSING = (
    "redis-server is not installed (the redis row runs one per run): `make redis-server`"
    " installs it"
)


def select_servers(names: Sequence[str] | None, repo_root: Path) -> list[ServerSpec]:
    """The specs to run: the named ones, or every available default one, in table order."""
    if names is None:
        return [spec for spec in SERVERS if spec.default and spec.is_available(repo_root)]
    known = {spec.name: spec for spec in SERVERS}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown server(s) {', '.join(unknown)}; known: {', '.join(known)}")
    missing = [name for name in names if not known[name].is_available(repo_root)]
    if missing:
        raise ValueError(f"server module missing for {', '.join(missing)}")
    if any(known[name].redis for name in names) and shutil.which("redis-server") is None:
        raise ValueError(REDIS_MISSING)
    return [spec for spec in SERVERS if spec.name in names]
