"""The escaping that keeps one record on one line."""

from __future__ import annotations

import codecs

import pytest

from service.records import Record, escape, render_text

#: Every character the design names, each of which some reader treats as a line break.
LINE_BREAKERS = ["\n", "\r", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


def unescape(escaped: str) -> str:
    """Undo ``escape``: its escapes are Python's, so ``unicode_escape`` reads them back."""
    return codecs.decode(escaped.encode("ascii", "backslashreplace"), "unicode_escape")


@pytest.mark.parametrize("char", LINE_BREAKERS)
def test_line_breakers_are_escaped(char: str) -> None:
    """Each named line-breaking character comes out as a visible escape."""
    escaped = escape(f"a{char}b")
    assert char not in escaped
    assert len(f"x {escaped}\n".splitlines()) == 1
    assert escaped.startswith("a\\")
    assert escaped.endswith("b")


def test_every_control_character_is_escaped() -> None:
    """No C0, DEL or C1 control character survives escaping."""
    controls = "".join(chr(c) for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)])
    escaped = escape(controls)
    assert escaped.isascii()
    assert escaped.isprintable()


def test_backslash_is_escaped_so_escapes_cannot_be_forged() -> None:
    """A literal backslash-n in the input stays distinguishable from a real newline."""
    assert escape("a\\nb") == "a\\\\nb"
    assert escape("a\nb") == "a\\nb"
    assert escape("a\\nb") != escape("a\nb")


def test_plain_text_is_unchanged() -> None:
    """Printable text, non-ASCII letters and emoji included, passes through as it is."""
    for text in ["hello world", "café ünïcödé", "日本語", "emoji 🎉", "quotes \" ' `"]:
        assert escape(text) == text


def test_escape_round_trips_over_a_wide_range_of_code_points() -> None:
    """Unescaping gives back the input, for every code point up to U+3000 and beyond."""
    text = "".join(chr(c) for c in range(0x3000) if not 0xD800 <= c <= 0xDFFF)
    text += "\U0001f600\U000e0001\ud800\U0010ffff"
    escaped = escape(text)
    assert unescape(escaped) == text
    assert len(escaped.splitlines()) == 1


def test_render_text_uses_the_guides_formats() -> None:
    """Notification and query lines read like the guide's, each ending in one newline."""
    note = Record("notification", email="a@example.com", message="hi\nthere")
    query = Record("query", q="x\u2028y")
    assert render_text(note) == "notification for a@example.com: hi\\nthere\n"
    assert render_text(query) == "found query: x\\u2028y\n"


def test_records_get_distinct_ids() -> None:
    """Every record has its own id."""
    assert len({Record("query", q="x").id for _ in range(1000)}) == 1000
