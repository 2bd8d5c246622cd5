"""Follow a notification log as it grows and check it against the acknowledged emails.

Polling only reads the appended bytes and counts notification lines, which is cheap enough
to do every 2 ms; lines are parsed into emails later, when timing no longer matters. The
log is append-only, so its size at a moment identifies exactly what it held then.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

_PREFIX = b"notification for "
_SEPARATOR = b": "


def email_of(line: bytes) -> str | None:
    """The email of a ``notification for {email}: {message}`` line, else None."""
    if not line.startswith(_PREFIX):
        return None
    email, separator, _ = line[len(_PREFIX) :].partition(_SEPARATOR)
    return email.decode("utf-8", errors="replace") if separator else None


def file_size(path: Path) -> int:
    """The size of ``path`` in bytes, 0 when it does not exist yet."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


@dataclass(frozen=True)
class ExactlyOnce:
    """How the log compares with the acknowledged emails."""

    expected: int
    missing: int
    duplicated: int
    """Acknowledged emails that have more than one line."""
    unexpected: int
    """Notification lines for emails that were never acknowledged."""

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.duplicated == 0


class LogTail:
    """The log read so far: a cheap running line count, and an index built on demand."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines = 0
        """Complete notification lines read so far."""
        self._data = bytearray()
        self._counted = 0
        self._indexed = 0
        self._first_end: dict[str, int] = {}
        self._counts: Counter[str] = Counter()

    def poll(self) -> int:
        """Read what was appended since the last call; return ``lines``."""
        try:
            with self.path.open("rb") as log:
                log.seek(len(self._data))
                self._data += log.read()
        except FileNotFoundError:
            return self.lines
        complete = self._data.rfind(b"\n") + 1
        if complete > self._counted:
            self.lines += self._data.count(_PREFIX, self._counted, complete)
            self._counted = complete
        return self.lines

    def _index(self) -> None:
        """Parse the complete lines not parsed yet: first line end and count per email."""
        start = self._indexed
        while (end := self._data.find(b"\n", start) + 1) > 0:
            email = email_of(bytes(self._data[start : end - 1]))
            if email is not None:
                self._first_end.setdefault(email, end)
                self._counts[email] += 1
            start = end
        self._indexed = start

    def has_all(self, emails: Collection[str]) -> bool:
        self._index()
        return all(email in self._first_end for email in emails)

    def pending_at(self, size: int, emails: Collection[str]) -> int:
        """How many ``emails`` had no complete line in the first ``size`` bytes of the log."""
        self._index()
        return sum(1 for email in emails if self._first_end.get(email, size + 1) > size)

    def check(self, acked: Collection[str]) -> ExactlyOnce:
        self._index()
        acked_set = set(acked)
        return ExactlyOnce(
            expected=len(acked_set),
            missing=sum(1 for email in acked_set if email not in self._counts),
            duplicated=sum(1 for email in acked_set if self._counts[email] > 1),
            unexpected=sum(n for email, n in self._counts.items() if email not in acked_set),
        )
