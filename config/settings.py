"""Service settings, read from ``NOTIFY_*`` environment variables and an optional ``.env``.

This module is the only code that reads the environment. Everything else receives a
``Settings`` instance from the composition root (``service.main.create_app``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "SettingsError", "load_settings", "settings_or_exit"]

_ENV_PREFIX = "NOTIFY_"

LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]
AckMode = Literal["background", "write"]
LogFormat = Literal["text", "jsonl"]
FsyncMode = Literal["never", "batch", "interval"]
Backend = Literal["local", "redis"]


class Settings(BaseSettings):
    """Every knob of the service; each field is ``NOTIFY_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix=_ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        populate_by_name=True,
        extra="ignore",
        frozen=True,
    )

    log_path: Path = Field(
        default=Path("log.txt"),
        description="File the notification lines are appended to (relative to the working dir).",
    )
    query_log_path: Path | None = Field(
        default=None,
        description="File for 'found query' lines; unset means the same file as log_path.",
    )
    log_format: LogFormat = Field(
        default="text", description="text: the guide's lines; jsonl: one JSON object per line."
    )
    host: str = Field(default="127.0.0.1", description="Address `python -m service` binds.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port `python -m service` binds.")
    graceful_timeout: int = Field(
        default=5,
        ge=0,
        description="Seconds `python -m service` gives requests in progress when stopping.",
    )
    log_level: LogLevel = Field(default="info", description="Level of the service's own logs.")
    max_message_length: int = Field(
        default=1000, ge=1, description="Longest accepted `message`, in characters."
    )
    max_query_length: int = Field(
        default=1000, ge=1, description="Longest accepted `q`, in characters."
    )
    max_body_bytes: int = Field(
        default=16 * 1024, ge=1, description="Largest accepted request body (larger gets 413)."
    )
    api_tokens: SecretStr = Field(
        default=SecretStr(""),
        description="Comma-separated bearer tokens that may POST; empty means open.",
    )
    status_ttl: float = Field(
        default=3600.0, gt=0, description="Seconds a notification's status stays queryable."
    )
    status_max_entries: int = Field(
        default=100_000, ge=1, description="Most statuses (and idempotency keys) kept in memory."
    )
    idempotency_ttl: float = Field(
        default=3600.0, gt=0, description="Seconds an Idempotency-Key is remembered."
    )
    prometheus_multiproc_dir: Path | None = Field(
        default=None,
        validation_alias="PROMETHEUS_MULTIPROC_DIR",
        description="prometheus-client's own variable (no NOTIFY_ prefix): with --workers N, "
        "a directory where the workers' metrics meet.",
    )
    queue_size: int = Field(
        default=100_000, ge=1, description="Records a log writer may hold before it refuses more."
    )
    batch_size: int = Field(
        default=4096, ge=1, description="Most records one write appends to the log."
    )
    batch_delay: float = Field(
        default=0.005,
        ge=0,
        description="Seconds a writer waits for more lines before a write (ack=background).",
    )
    shutdown_timeout: float = Field(
        default=10.0, ge=0, description="Seconds shutdown waits for the writers to drain."
    )
    spool_path: Path | None = Field(
        default=None,
        description="Where lines not written by the shutdown deadline go (default: <log>.spool).",
    )
    ack: AckMode = Field(
        default="background",
        description="background: answer, then write (the guide); write: answer once written.",
    )
    ack_timeout: float = Field(
        default=5.0, gt=0, description="With ack=write, seconds to wait for the write before 503."
    )
    fsync: FsyncMode = Field(
        default="never", description="never, after every batch, or every fsync_interval seconds."
    )
    fsync_interval: float = Field(
        default=1.0, gt=0, description="Seconds between fsyncs when fsync=interval."
    )
    retry_initial: float = Field(
        default=0.05, gt=0, description="First delay, in seconds, before retrying a failed write."
    )
    retry_max: float = Field(
        default=2.0, gt=0, description="Longest delay, in seconds, between write retries."
    )
    file_check_interval: float = Field(
        default=1.0,
        gt=0,
        description="Seconds between checks that a log was not moved or deleted from outside.",
    )
    rotate_bytes: int = Field(
        default=0, ge=0, description="Rotate a log at this size in bytes; 0 never rotates."
    )
    rotate_keep: int = Field(
        default=5, ge=1, description="Rotated files kept: log.txt.1 (newest) to log.txt.N."
    )
    backend: Backend = Field(
        default="local",
        description="local: this process writes the log; redis: records go to a Redis stream "
        "(taskiq) and `make worker` processes write the log.",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", description="Redis for backend=redis."
    )
    redis_stream: str = Field(
        default="notifications",
        min_length=1,
        description="Stream the records go to; its keys (statuses, idempotency) share the prefix.",
    )
    redis_idle_timeout: float = Field(
        default=5.0,
        gt=0,
        description="Seconds a delivered batch may stay unacknowledged before another worker "
        "takes it over (a worker that died).",
    )
    redis_reclaim_interval: float = Field(
        default=1.0, gt=0, description="Seconds between a worker's checks for such batches."
    )
    redis_timeout: float = Field(
        default=2.0, gt=0, description="Seconds to wait for Redis to connect or answer."
    )

    @property
    def tokens(self) -> tuple[str, ...]:
        """The configured API tokens (none: the API is open)."""
        raw = self.api_tokens.get_secret_value()
        return tuple(token.strip() for token in raw.split(",") if token.strip())

    @property
    def effective_query_log_path(self) -> Path:
        """Where ``found query`` lines go."""
        return self.query_log_path if self.query_log_path is not None else self.log_path

    def queue_spool(self) -> Path:
        """With backend=redis, where the API keeps records Redis did not take by shutdown."""
        return self.log_path.with_name(self.log_path.name + ".queue-spool")

    def spool_for(self, log_path: Path) -> Path:
        """The spool of one log file: ``spool_path`` for the main log, else beside the log."""
        if self.spool_path is not None and log_path == self.log_path:
            return self.spool_path
        return log_path.with_name(log_path.name + ".spool")


class SettingsError(Exception):
    """Settings could not be loaded; ``str()`` is one line naming the variable(s)."""


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"])
        given = error.get("input")
        problems.append(f"{_ENV_PREFIX}{field.upper()}={given!r}: {error['msg']}")
    return "invalid setting " + "; ".join(problems)


def load_settings() -> Settings:
    """Read settings from the environment, raising ``SettingsError`` with one clear line."""
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


def settings_or_exit() -> Settings:
    """The environment's settings, or exit with one line naming the bad variable (for the
    command-line entry points)."""
    try:
        return load_settings()
    except SettingsError as exc:
        raise SystemExit(f"error: {exc}") from None
