"""Records and their line formats: pure functions, no I/O.

A record is what one accepted request asks us to log. It keeps the user's values as they were
sent; the line format escapes them so that one record is always exactly one line (CWE-117).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from service.ids import new_id

__all__ = [
    "RENDERERS",
    "Kind",
    "NotificationRenderer",
    "Record",
    "escape",
    "notification_renderer",
    "notification_text",
    "render_jsonl",
    "render_text",
    "rfc3339",
]

Kind = Literal["notification", "query"]

# Escapes that read better than their \xNN form. Every other character that is not printable
# (str.isprintable: categories Cc, Cf, Cs, Co, Cn, Zl, Zp and Zs except the space) is written
# as \xNN, \uNNNN or \UNNNNNNNN. That covers \n \r \v \f \x1c-\x1e \x85 \u2028 \u2029, every
# other control character, and the bidi overrides that can make a line read differently.
_SHORT_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(char: str) -> str:
    short = _SHORT_ESCAPES.get(char)
    if short is not None:
        return short
    if char.isprintable():
        return char
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape(value: str) -> str:
    """Return ``value`` with the backslash and every non-printable character escaped.

    The result holds no line separator of any kind, and ``escape`` is injective: two different
    inputs never give the same output, because the backslash itself is escaped.
    """
    if value.isprintable() and "\\" not in value:  # the common case: nothing to do
        return value
    return "".join(map(_escape_char, value))


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs 2 µs more
class Record:
    """One thing to log, with the user's values unescaped."""

    kind: Kind
    email: str | None = None
    message: str | None = None
    q: str | None = None
    id: str = field(default_factory=new_id)
    accepted_at: float = field(default_factory=time.time)


def render_text(record: Record) -> str:
    """The guide's line format, escaped: ``notification for {email}: {message}``."""
    if record.kind == "query":
        return f"found query: {escape(record.q or '')}\n"
    return notification_text(record.email or "", record.message or "")


def notification_text(email: str, message: str, notification_id: str = "") -> str:
    """``render_text`` of a notification, from its values (the text line has no id)."""
    return f"notification for {escape(email)}: {escape(message)}\n"


NotificationRenderer = Callable[[str, str, str], str]
"""``(email, message, id)`` to the notification's line."""


def notification_renderer(render: Callable[[Record], str]) -> NotificationRenderer:
    """``render`` for notifications, given their values: with ``render_text`` the line is made
    without a ``Record`` (which costs a call to ``time.time`` the text format never reads)."""
    if render is render_text:
        return notification_text

    def render_notification(email: str, message: str, notification_id: str) -> str:
        return render(Record("notification", email=email, message=message, id=notification_id))

    return render_notification


def rfc3339(timestamp: float) -> str:
    """``timestamp`` as RFC 3339 in UTC, to the millisecond: ``2026-11-24T08:00:00.000Z``."""
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def render_jsonl(record: Record) -> str:
    """One JSON object per line. ``ensure_ascii`` escapes every non-ASCII character, U+2028,
    U+2029 and NEL included, and JSON escapes the control characters: one line, always."""
    fields = {
        "id": record.id,
        "time": rfc3339(record.accepted_at),
        "kind": record.kind,
        "email": record.email,
        "message": record.message,
        "q": record.q,
    }
    return json.dumps(fields, ensure_ascii=True, separators=(",", ":")) + "\n"


RENDERERS = {"text": render_text, "jsonl": render_jsonl}
"""Line formats by ``NOTIFY_LOG_FORMAT``."""
