"""Notification ids: random UUID4 strings, cheap enough for every request.

``str(uuid.uuid4())`` makes one ``getrandom`` system call and a ``UUID`` object per id (about
3 µs). Here the same random bits come from ``os.urandom`` 4 KiB at a time and are formatted
directly: 122 random bits, the version and variant bits of RFC 9562, about 0.7 µs.
"""

from __future__ import annotations

import os

__all__ = ["new_id", "series"]

_IDS_PER_DRAW = 256
_VARIANT_DIGITS = "89ab"  # 10xx: the RFC 9562 variant, keeping two random bits


class _RandomPool:
    def __init__(self) -> None:
        self._bytes = b""
        self._offset = 0
        # A process forked from this one must not hand out the ids left in our pool.
        os.register_at_fork(after_in_child=self._empty)

    def _empty(self) -> None:
        self._bytes, self._offset = b"", 0

    def new_id(self) -> str:
        """A new random UUID (version 4), as its canonical 36-character string."""
        offset = self._offset
        if offset >= len(self._bytes):
            self._bytes, offset = os.urandom(16 * _IDS_PER_DRAW), 0
        self._offset = offset + 16
        h = self._bytes[offset : offset + 16].hex()
        variant = _VARIANT_DIGITS[int(h[16], 16) & 3]
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:]}"


new_id = _RandomPool().new_id
"""A new random UUID (version 4), as its canonical 36-character string (one call, no
intermediate ``take16``: this runs on every request)."""


_LOW = 16**12


def series(first: str, count: int) -> list[str]:
    """``count`` ids from ``first`` (an id of ``new_id``), ``first`` itself the first: the
    same ``first`` gives the same ids (a request of many recipients replayed with its
    Idempotency-Key answers with the ids it got). Each adds its index to the last 48 bits of
    ``first``: version and variant stay, and the rest stays random."""
    head, low = first[:24], int(first[24:], 16)
    return [first] + [f"{head}{(low + index) % _LOW:012x}" for index in range(1, count)]
