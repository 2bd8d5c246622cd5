"""A record as it travels between processes (the Redis stream) and rests on disk (a spool).

One record is one line to log: ``(id, kind, line, accepted_at)``, as a JSON array. Pure
functions, no I/O.
"""

from __future__ import annotations

import json

from service.records import Kind

__all__ = ["WireRecord", "decode_record", "encode_record", "parse_wire_record"]

WireRecord = tuple[str, Kind, str, float]
"""One line as it travels: ``(id, kind, line, accepted_at)``; JSON turns it into a list."""


def parse_wire_record(raw: object) -> WireRecord:
    """A ``WireRecord`` from its JSON form; ``ValueError`` naming the problem if it is not one.

    The line must be exactly one line (printable, one final newline): the API escaped it, and
    whatever else put it on the queue, it cannot add a line to the log.
    """
    if not isinstance(raw, list | tuple) or len(raw) != 4:
        raise ValueError("a record is [id, kind, line, accepted_at]")
    record_id, kind, line, accepted_at = raw
    if not isinstance(record_id, str) or not 0 < len(record_id) <= 64:
        raise ValueError("the id must be a string of 1 to 64 characters")
    if kind not in ("notification", "query"):
        raise ValueError(f"unknown kind {kind!r}")
    if not isinstance(line, str) or not line.endswith("\n") or not line[:-1].isprintable():
        raise ValueError("the line must be printable text ending in one newline")
    if not isinstance(accepted_at, int | float) or isinstance(accepted_at, bool):
        raise ValueError("accepted_at must be a number")
    return record_id, kind, line, float(accepted_at)


def encode_record(record: WireRecord) -> str:
    """``record`` as one line of JSON, newline included."""
    return json.dumps(record) + "\n"


def decode_record(text: str) -> WireRecord:
    """The record of one line written by ``encode_record``; ``ValueError`` if it is not one."""
    return parse_wire_record(json.loads(text))
