"""Service settings, read from ``NOTIFY_*`` environment variables and an optional ``.env``.

This module is the only code that reads the environment. Everything else receives a
``Settings`` instance from the composition root (``service.main.create_app``).
"""

from __future__ import annotations

import base64
import difflib
import os
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self, get_args
from urllib.parse import unquote, urlsplit

from email_validator import EmailNotValidError, validate_email
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "ENCODED_WORD",
    "Settings",
    "SettingsError",
    "SmtpServer",
    "environment_name",
    "load_settings",
    "settings_help",
    "settings_or_exit",
    "unknown_variables",
]

_ENV_PREFIX = "NOTIFY_"

ENCODED_WORD = re.compile(r"=\?[^?\s]*\?[bBqQ]\?[^?\s]*\?=")
"""An RFC 2047 encoded word (``=?utf-8?q?…?=``): in a Subject, mail readers (and Python's
email package) decode it, so it could hide a line break that starts another header."""

LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]
AckMode = Literal["background", "write"]
LogFormat = Literal["text", "jsonl"]
FsyncMode = Literal["never", "batch", "interval"]
Backend = Literal["local", "redis"]
DeliveryMode = Literal["inline", "external"]


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
    log_json: bool = Field(
        default=False,
        description="The service's own log lines as one JSON object each (else aligned "
        "with uvicorn's).",
    )
    opentelemetry: bool = Field(
        default=False,
        description="FastAPI's native OpenTelemetry instrumentation: spans, metrics and logs "
        "through the global providers (set up by your OpenTelemetry SDK, or by FastAPI with "
        "FASTAPI_OTEL_AUTO_CONFIGURE=true). Off: the service's own /metrics only.",
    )
    max_message_length: int = Field(
        default=1000, ge=1, description="Longest accepted `message`, in characters."
    )
    max_query_length: int = Field(
        default=1000, ge=1, description="Longest accepted `q`, in characters."
    )
    max_body_bytes: int = Field(
        default=16 * 1024, ge=1, description="Largest accepted request body (larger gets 413)."
    )
    max_recipients: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Most recipients in one `POST /notifications` (its body may be 320 bytes "
        "larger than max_body_bytes for each).",
    )
    api_tokens: SecretStr = Field(
        default=SecretStr(""),
        description="Comma-separated bearer tokens that may POST; empty means open.",
    )
    status_ttl: float = Field(
        default=3600.0, gt=0, description="Seconds a notification's status stays queryable."
    )
    status_max_entries: int = Field(
        default=100_000,
        ge=1,
        description="Most statuses (and idempotency keys) kept, in memory and in the ledger.",
    )
    idempotency_ttl: float = Field(
        default=3600.0, gt=0, description="Seconds an Idempotency-Key is remembered."
    )
    prometheus_multiproc_dir: Path | None = Field(
        default=None,
        validation_alias="PROMETHEUS_MULTIPROC_DIR",
        description="prometheus-client's own variable (no NOTIFY_ prefix): a directory where "
        "the metrics of several processes meet (--workers N, the delivery process); "
        "notify-service empties it first, and makes a temporary one of its own when unset.",
    )
    ledger_path: Path | None = Field(
        default=None,
        description="With backend=local: the SQLite file of statuses and Idempotency-Keys that "
        "every process on the machine shares (default: <log>.ledger; for a log that is a "
        "device, <log name>.ledger in the spool's directory).",
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
        "and `notify-worker` processes (`make worker`) write the log.",
    )
    delivery: DeliveryMode = Field(
        default="inline",
        description="With backend=local: inline, the API process delivers email and webhooks; "
        "external, it only adds them to the outbox and `notify-deliver` delivers "
        "(`notify-service` runs one).",
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
    worker_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="With backend=redis: the port a worker serves /metrics, /healthz and "
        "/readyz on (0: none).",
    )
    worker_host: str = Field(
        default="127.0.0.1", description="The address a worker serves them on."
    )
    smtp_url: SecretStr | None = Field(
        default=None,
        description="smtp://[user:password@]host[:port] (STARTTLS when offered) or smtps://... "
        "(implicit TLS); unset: no email.",
    )
    smtp_from: str | None = Field(
        default=None, description="Sender address of the emails; needed with smtp_url."
    )
    email_subject: str = Field(
        default="Notification", min_length=1, description="Subject of the emails."
    )
    smtp_require_tls: bool = Field(
        default=False, description="Refuse an smtp:// server that does not offer STARTTLS."
    )
    smtp_connections: int = Field(
        default=64,
        ge=1,
        le=1000,
        description="Most SMTP connections (and sends in flight): the ceiling of the channel's "
        "concurrency, which starts at smtp_connections_min, grows while mail waits and the "
        "server keeps up, and is halved when the server fails (421, refused, timeouts).",
    )
    smtp_connections_min: int = Field(
        default=4,
        ge=1,
        le=1000,
        description="The floor (and start) of the email concurrency (at most smtp_connections).",
    )
    smtp_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds to wait for the SMTP server to connect (TLS and AUTH included) "
        "or to answer a step of a send (MAIL, RCPT, or DATA and the message).",
    )

    smtp_rate: float | None = Field(
        default=None, gt=0, description="At most this many emails a second (unset: no limit)."
    )
    email_domains: str = Field(
        default="",
        description="Comma-separated recipient domains email may go to (a POST for another "
        "gets 422); empty: any.",
    )
    outbox_path: Path | None = Field(
        default=None, description="SQLite outbox of pending deliveries (default: <log>.outbox)."
    )
    outbox_max: int = Field(
        default=1_000_000,
        ge=1,
        description="Pending deliveries the outbox may hold; past it POST gets 503.",
    )
    outbox_batch_delay: float = Field(
        default=0.025,
        ge=0,
        description="Seconds the outbox's intake waits for more notifications before a "
        "transaction (ack=background).",
    )
    delivery_max_age: float = Field(
        default=24 * 3600.0,
        gt=0,
        description="Seconds a delivery is retried after acceptance before it is dead.",
    )
    delivery_retry_max: float = Field(
        default=300.0,
        gt=0,
        description="Longest delay, in seconds, between retries of one delivery the receiver "
        "deferred (SMTP 4xx, HTTP 408/5xx).",
    )
    channel_pause_max: float = Field(
        default=10.0,
        gt=0,
        description="Longest pause, in seconds, between probes of a channel that is down "
        "(unreachable, SMTP 421, HTTP 429/502/503/504): it delivers again within about this "
        "long of the receiver's return.",
    )

    webhook_url: SecretStr | None = Field(
        default=None,
        description="One http(s) URL, or several comma-separated, each notification is POSTed "
        "to (signed, Standard Webhooks); unset: no webhooks. A URL may be named, "
        "name=https://...: its channel's name (lowercase letters, digits, - and _); unnamed, "
        "webhook-<8 hex>. Hidden in errors (it may hold a token).",
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="The signing secret, whsec_ + base64 (Standard Webhooks); two "
        "comma-separated while rotating: every delivery then carries a signature for each.",
    )
    webhook_timeout: float = Field(
        default=15.0, gt=0, description="Seconds one webhook attempt may take, all included."
    )
    webhook_connections: int = Field(
        default=64,
        ge=1,
        le=1000,
        description="Most connections per webhook URL (and requests in flight to it): the "
        "ceiling of its concurrency, which starts at webhook_connections_min, grows while "
        "deliveries wait and the receiver keeps up, and is halved on 429, 502-504, timeouts.",
    )
    webhook_connections_min: int = Field(
        default=4,
        ge=1,
        le=1000,
        description="The floor (and start) of each webhook URL's concurrency (at most "
        "webhook_connections).",
    )
    apprise_urls: SecretStr | None = Field(
        default=None,
        description="Apprise URLs each notification is also sent to, each named, "
        "comma-separated: ops=slack://..., alerts=ntfy://... (a comma inside a URL stays "
        "in it unless a name= follows). The name (required) is the channel's: lowercase "
        "letters, digits, - and _. Unset: no Apprise. Hidden in errors, logs, metrics and "
        "/readyz (the URLs hold tokens).",
    )
    apprise_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds one Apprise send may take, all included (Apprise's own pacing "
        "of a service too); past it the channel pauses and is probed.",
    )
    apprise_connections: int = Field(
        default=32,
        ge=1,
        le=100,
        description="Most sends in flight per Apprise URL, each on a thread of the channel's "
        "own: the ceiling of its concurrency, which starts at apprise_connections_min and "
        "adapts as a webhook URL's does.",
    )
    apprise_connections_min: int = Field(
        default=1,
        ge=1,
        le=100,
        description="The floor (and start) of each Apprise URL's concurrency (at most "
        "apprise_connections).",
    )

    @field_validator("webhook_url")
    @classmethod
    def _webhook_urls_have_their_shape(cls, urls: SecretStr | None) -> SecretStr | None:
        """Each URL's scheme and host, each name's shape, no repeats; the message never
        repeats a URL."""
        if urls is not None:
            listed = [_webhook_entry(entry) for entry in _split(urls.get_secret_value())]
            if not listed:
                raise ValueError("names no URL")
            for number, (name, url) in enumerate(listed, 1):
                problem = _webhook_url_problem(url)
                if problem is None and name is not None:
                    problem = _name_problem(name)
                if problem is not None:
                    raise ValueError(f"URL {number} of {len(listed)} {problem}")
            if len({url for _, url in listed}) != len(listed):
                raise ValueError("names the same URL twice")
            names = [name for name, _ in listed if name is not None]
            if len(set(names)) != len(names):
                raise ValueError("gives two URLs the same name")
        return urls

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secrets_have_their_shape(cls, secrets: SecretStr | None) -> SecretStr | None:
        """``whsec_`` + base64 of at least one byte; the message never repeats a secret."""
        if secrets is not None:
            listed = _split(secrets.get_secret_value())
            if not listed:
                raise ValueError("names no secret")
            for number, secret in enumerate(listed, 1):
                if not _webhook_secret_key(secret):
                    raise ValueError(
                        f"secret {number} of {len(listed)} is not whsec_ followed by base64"
                    )
        return secrets

    @field_validator("apprise_urls")
    @classmethod
    def _apprise_urls_have_their_shape(cls, urls: SecretStr | None) -> SecretStr | None:
        """Each entry ``name=scheme://...``, each name's shape, no repeats; the message never
        repeats a URL. Whether Apprise understands each URL is the channel's to say, when it
        is built (``service.channels.apprise``)."""
        if urls is not None:
            listed = _apprise_entries(urls.get_secret_value())
            if not listed:
                raise ValueError("names no URL")
            for number, (name, url) in enumerate(listed, 1):
                problem = _name_problem(name) if name is not None else _APPRISE_UNNAMED
                if problem is None and not _APPRISE_URL.match(url):
                    problem = "is not an Apprise URL (scheme://...)"  # (no name: a password's?)
                if problem is not None:
                    raise ValueError(f"entry {number} of {len(listed)} {problem}")
            for number, (name, url) in enumerate(listed, 1):
                for earlier, (other, other_url) in enumerate(listed[: number - 1], 1):
                    if other == name:
                        raise ValueError(
                            f"entry {number} of {len(listed)} ({name}) has the name of "
                            f"entry {earlier}"
                        )
                    if other_url == url:
                        raise ValueError(
                            f"entry {number} of {len(listed)} ({name}) is the URL of "
                            f"entry {earlier}"
                        )
        return urls

    @field_validator("smtp_url")
    @classmethod
    def _smtp_url_has_its_shape(cls, url: SecretStr | None) -> SecretStr | None:
        """The URL's scheme, host and port (``SmtpServer.from_url``); the message never
        repeats the URL (it may hold a password)."""
        if url is not None:
            SmtpServer.from_url(url)  # ValueError naming the problem
        return url

    @field_validator("smtp_from")
    @classmethod
    def _smtp_from_is_an_address(cls, sender: str | None) -> str | None:
        if sender is not None:
            try:
                validated = validate_email(sender, check_deliverability=False)
            except EmailNotValidError as exc:
                raise ValueError(f"not a valid sender address: {exc}") from None
            if not validated.local_part.isascii():
                raise ValueError("the sender's local part must be ASCII")
        return sender

    @field_validator("api_tokens")
    @classmethod
    def _tokens_are_ascii(cls, tokens: SecretStr) -> SecretStr:
        """Each token printable ASCII without spaces, as a bearer token is (RFC 6750): a
        token of other characters matched only when a client sent it in latin-1."""
        for number, token in enumerate(_split(tokens.get_secret_value()), 1):
            if not (token.isascii() and token.isprintable()) or " " in token:
                raise ValueError(f"token {number} is not printable ASCII without spaces")
        return tokens

    @field_validator("email_subject")
    @classmethod
    def _subject_is_one_line(cls, subject: str) -> str:
        if not subject.isprintable():
            raise ValueError("the subject must be printable text on one line")
        if ENCODED_WORD.search(subject):
            raise ValueError("the subject must not hold an RFC 2047 encoded word (=?…?=)")
        return subject

    @model_validator(mode="after")
    def _smtp_has_a_sender(self) -> Self:
        if self.smtp_url is not None and self.smtp_from is None:
            raise ValueError("NOTIFY_SMTP_FROM must be set when NOTIFY_SMTP_URL is")
        return self

    @model_validator(mode="after")
    def _webhooks_have_a_secret(self) -> Self:
        if self.webhook_url is not None and self.webhook_secret is None:
            raise ValueError("NOTIFY_WEBHOOK_SECRET must be set when NOTIFY_WEBHOOK_URL is")
        return self

    @model_validator(mode="after")
    def _apprise_names_are_free(self) -> Self:
        """An Apprise URL's name is no webhook URL's: channels' names are unique."""
        webhooks = {name for name, _ in self.webhook_targets if name is not None}
        for number, (name, _) in enumerate(self.apprise_targets, 1):
            if name in webhooks:
                raise ValueError(
                    f"NOTIFY_APPRISE_URLS entry {number} ({name}) has the name of a "
                    "NOTIFY_WEBHOOK_URL"
                )
        return self

    @property
    def webhook_urls(self) -> tuple[str, ...]:
        """The webhook URLs, in the order given (none: webhooks are off)."""
        return tuple(url for _, url in self.webhook_targets)

    @property
    def webhook_targets(self) -> tuple[tuple[str | None, str], ...]:
        """Each webhook URL with the name given to it (``name=https://...``), or None."""
        if self.webhook_url is None:
            return ()
        return tuple(_webhook_entry(entry) for entry in _split(self.webhook_url.get_secret_value()))

    @property
    def apprise_targets(self) -> tuple[tuple[str, str], ...]:
        """Each Apprise URL with its name (``ops=slack://...``), in the order given (none:
        Apprise is off)."""
        if self.apprise_urls is None:
            return ()
        return tuple(
            (name, url)
            for name, url in _apprise_entries(self.apprise_urls.get_secret_value())
            if name is not None
        )

    @property
    def webhook_keys(self) -> tuple[bytes, ...]:
        """The signing keys (the secrets' base64 decoded), in the order given."""
        if self.webhook_secret is None:
            return ()
        return tuple(_webhook_secret_key(s) for s in _split(self.webhook_secret.get_secret_value()))

    @property
    def tokens(self) -> tuple[str, ...]:
        """The configured API tokens (none: the API is open)."""
        raw = self.api_tokens.get_secret_value()
        return tuple(token.strip() for token in raw.split(",") if token.strip())

    @property
    def smtp_server(self) -> SmtpServer | None:
        """Where email goes (``NOTIFY_SMTP_URL``), if email is on."""
        return None if self.smtp_url is None else SmtpServer.from_url(self.smtp_url)

    @property
    def email_on(self) -> bool:
        """Whether notifications are also sent as email."""
        return self.smtp_url is not None

    @property
    def allowed_email_domains(self) -> frozenset[str]:
        """Recipient domains email may go to, lowercased; empty: any."""
        return frozenset(
            domain.strip().lower() for domain in self.email_domains.split(",") if domain.strip()
        )

    def effective_outbox_path(self) -> Path:
        """The SQLite outbox: ``outbox_path``, or beside the log."""
        if self.outbox_path is not None:
            return self.outbox_path
        return self.log_path.with_name(self.log_path.name + ".outbox")

    def effective_ledger_path(self) -> Path:
        """The local backend's ledger: ``ledger_path``, or beside the log (for a log that is a
        device, the runtime puts it in the spool's directory instead)."""
        if self.ledger_path is not None:
            return self.ledger_path
        return self.log_path.with_name(self.log_path.name + ".ledger")

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


_DEFAULT_SMTP_PORTS = {"smtp": 25, "smtps": 465}
_SMTP_URL_SHAPE = "smtp://[user:password@]host[:port] or smtps://[user:password@]host[:port]"


@dataclass(frozen=True, slots=True)
class SmtpServer:
    """Where mail goes, from ``NOTIFY_SMTP_URL``. ``str()`` and ``repr()`` show no password
    (and ``str()`` no user)."""

    host: str
    port: int
    implicit_tls: bool = False
    username: str | None = None
    password: SecretStr | None = None

    @classmethod
    def from_url(cls, url: str | SecretStr) -> SmtpServer:
        """Parse ``smtp://[user:password@]host[:port]`` (port 25) or ``smtps://…`` (465).
        User and password are percent-decoded. ``ValueError`` names what is wrong, never
        repeating the URL."""
        raw = url.get_secret_value() if isinstance(url, SecretStr) else url
        try:
            parts = urlsplit(raw.strip())
            port = parts.port
        except ValueError:
            raise ValueError(f"the SMTP URL is not of the form {_SMTP_URL_SHAPE}") from None
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_SMTP_PORTS:
            raise ValueError(
                f"the SMTP URL must start with smtp:// or smtps:// ({_SMTP_URL_SHAPE})"
            )
        if not parts.hostname:
            raise ValueError(f"the SMTP URL names no host ({_SMTP_URL_SHAPE})")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(
                f"the SMTP URL has something after the host and port ({_SMTP_URL_SHAPE})"
            )
        if port == 0:
            raise ValueError("the SMTP URL's port must be 1 to 65535")
        username = unquote(parts.username) if parts.username else None
        password = SecretStr(unquote(parts.password)) if parts.password else None
        if password is not None and username is None:
            raise ValueError("the SMTP URL has a password but no user")
        return cls(
            host=parts.hostname,
            port=port or _DEFAULT_SMTP_PORTS[scheme],
            implicit_tls=scheme == "smtps",
            username=username,
            password=password,
        )

    def __str__(self) -> str:
        scheme = "smtps" if self.implicit_tls else "smtp"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


def _split(values: str) -> list[str]:
    return [value.strip() for value in values.split(",") if value.strip()]


_WEBHOOK_NAMED = re.compile(r"([^=:/]+)=(.*)", re.DOTALL)
_WEBHOOK_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_RESERVED_NAMES = frozenset({"email", "log"})


def _webhook_entry(entry: str) -> tuple[str | None, str]:
    """``(name, url)`` of one ``NOTIFY_WEBHOOK_URL`` entry: ``name=url``, or a bare URL (a
    URL's own ``=`` comes after its ``://``)."""
    named = _WEBHOOK_NAMED.fullmatch(entry)
    if named is None:
        return None, entry
    return named.group(1).strip(), named.group(2).strip()


def _name_problem(name: str) -> str | None:
    """What is wrong with a channel's name (a webhook or Apprise URL's); None if nothing."""
    if not _WEBHOOK_NAME.fullmatch(name):
        return "has a name that is not 1-32 lowercase letters, digits, - or _, from a letter"
    if name in _RESERVED_NAMES or name.startswith("webhook-"):
        return "has a name kept for another channel (email, log, webhook-...)"
    return None


_APPRISE_SEPARATOR = re.compile(r",(?=\s*[^\s,=/:?&@#]+\s*=|\s*[A-Za-z][A-Za-z0-9+.-]{0,31}://)")
"""A comma that starts the next ``NOTIFY_APPRISE_URLS`` entry: one followed by ``name=``, or
by a URL's ``scheme://`` (an entry without a name: refused, not glued to the one before,
whose receiver would get its credentials). Apprise URLs use commas themselves
(``?to=a@example.com,b@example.com``); those stay."""
_APPRISE_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,31}://")
_APPRISE_UNNAMED = "has no name: write it as name=scheme://..."


def _apprise_entries(urls: str) -> list[tuple[str | None, str]]:
    """``(name, url)`` of each ``NOTIFY_APPRISE_URLS`` entry (None: the entry has no name)."""
    entries = (entry.strip(", \t\n") for entry in _APPRISE_SEPARATOR.split(urls))
    return [_webhook_entry(entry) for entry in entries if entry]


def _webhook_url_problem(url: str) -> str | None:
    """What is wrong with a webhook URL, without repeating it; None if nothing."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "is not a URL"
    if parts.scheme.lower() not in ("http", "https"):
        return "must start with http:// or https://"
    if not parts.hostname:
        return "names no host"
    if port == 0:
        return "has port 0"
    if parts.fragment:
        return "has a #fragment"
    import httpx  # here: the settings load without it until a webhook URL is given

    try:
        _ = httpx.URL(url).host  # what sending will do: IDNA, the characters a URL may hold
    except (httpx.InvalidURL, UnicodeError):  # (the message repeats the URL: not shown)
        return "cannot be sent to (an invalid host name or character)"
    return None


def _webhook_secret_key(secret: str) -> bytes:
    """The key of a ``whsec_<base64>`` secret; empty if it is not one."""
    if not secret.startswith("whsec_"):
        return b""
    try:
        return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except ValueError:
        return b""


class SettingsError(Exception):
    """Settings could not be loaded; ``str()`` is one line naming the variable(s)."""


def _is_secret(field: str) -> bool:
    info = Settings.model_fields.get(field)
    return info is not None and (
        info.annotation is SecretStr or SecretStr in get_args(info.annotation)
    )


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        loc = error["loc"]
        if not loc:  # a check across settings: its message names them
            problems.append(error["msg"])
            continue
        name = environment_name(str(loc[0]))
        # A secret (tokens, an SMTP URL with its password) is never repeated.
        given = "<hidden>" if _is_secret(str(loc[0])) else repr(error.get("input"))
        source = "" if name in os.environ or not _in_dotenv(name) else " (from .env)"
        problems.append(f"{name}={given}{source}: {error['msg']}")
    return "invalid setting " + "; ".join(problems)


def environment_name(field: str) -> str:
    """The variable that sets ``field``: ``NOTIFY_<FIELD>``, or its own alias."""
    info = Settings.model_fields.get(field)
    alias = info.validation_alias if info is not None else None
    if isinstance(alias, str):
        return alias
    return f"{_ENV_PREFIX}{field.upper()}"


def settings_help() -> str:
    """Every setting's variable and description, for a command's ``--help``."""
    lines = ["settings (environment variables, or a .env file in the working directory):"]
    for name, field in Settings.model_fields.items():
        description = field.description or ""
        wrapped = textwrap.fill(description, width=72, subsequent_indent=" " * 6)
        lines.append(f"  {environment_name(name)}\n      {wrapped}")
    return "\n".join(lines)


def _dotenv_names() -> set[str]:
    """The variable names set in ``.env`` (the working directory's), if there is one."""
    path = Path(".env")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return set()
    names = set()
    for line in text.splitlines():
        name, equals, _ = line.strip().removeprefix("export ").partition("=")
        if equals and not name.startswith("#"):
            names.add(name.strip())
    return names


def _in_dotenv(name: str) -> bool:
    return name in _dotenv_names()


def unknown_variables() -> list[str]:
    """One warning per ``NOTIFY_*`` variable (environment or ``.env``) that is no setting,
    naming the closest setting: a typo such as ``NOTIFY_PORTT`` is otherwise ignored."""
    known = {environment_name(field) for field in Settings.model_fields}
    given = {name for name in os.environ if name.startswith(_ENV_PREFIX)}
    given |= {name for name in _dotenv_names() if name.startswith(_ENV_PREFIX)}
    warnings = []
    for name in sorted(given - known):
        closest = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f"; did you mean {closest[0]}?" if closest else ""
        warnings.append(f"unknown setting {name} is ignored{hint}")
    return warnings


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
