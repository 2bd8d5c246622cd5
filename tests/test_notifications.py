"""``POST /send-notification/{email}`` through the real app, asserting on the real log."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import pytest

from config import Settings
from tests.conftest import make_settings, read_lines, running
from tests.test_records import unescape

GUIDE_BODY = {"message": "Notification sent in the background"}

#: Hostile values: line breaks of every kind, control characters, escapes, bidi overrides.
INJECTION_CORPUS = [
    "line\nnotification for forged@example.com: forged",
    "cr\rreturn",
    "crlf\r\nnotification for x@example.com: y",
    "vertical\vtab",
    "form\ffeed",
    "file\x1cseparator",
    "group\x1dseparator",
    "record\x1eseparator",
    "next\x85line",
    "line\u2028separator",
    "paragraph\u2029separator",
    "nul\x00byte",
    "escape\x1b[31mred\x1b[0m",
    "bell\x07",
    "delete\x7f",
    "c1\x9bcsi",
    "already\\nescaped",
    "trailing backslash\\",
    "\\u2028 literal",
    "bidi \u202eevil\u202c override",
    "zero\u200bwidth",
    "tab\tseparated",
    "\n",
    "\\",
    "mixed \n\r\u2028\\\x00 end",
]

NOTIFICATION = re.compile(r"notification for (?P<email>[^ ]+@[^ :]+): (?P<message>.*)")
QUERY = re.compile(r"found query: (?P<q>.*)")


async def test_response_is_the_guides_body(client: httpx.AsyncClient) -> None:
    """The endpoint answers 200 with exactly the guide's JSON body."""
    response = await client.post("/send-notification/a@example.com")
    assert response.status_code == 200
    assert response.json() == GUIDE_BODY
    assert response.headers["content-type"] == "application/json"


async def test_query_line_lands_before_notification_line(settings: Settings) -> None:
    """With ``?q=``, ``found query`` is written first, then the notification, as in the guide."""
    async with running(settings) as client:
        response = await client.post("/send-notification/a@example.com", params={"q": "hello"})
        assert response.status_code == 200
    assert read_lines(settings.log_path) == [
        "found query: hello",
        "notification for a@example.com: some notification",
    ]


async def test_body_sets_the_message(settings: Settings) -> None:
    """An optional JSON body ``{"message": ...}`` replaces the default message."""
    async with running(settings) as client:
        await client.post("/send-notification/b@example.com", json={"message": "custom text"})
        await client.post("/send-notification/c@example.com", json={})
    assert read_lines(settings.log_path) == [
        "notification for b@example.com: custom text",
        "notification for c@example.com: some notification",
    ]


async def test_default_log_is_log_txt_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With default settings the log is ``./log.txt``, like the guide's."""
    monkeypatch.chdir(tmp_path)
    async with running(Settings(_env_file=None)) as client:
        await client.post("/send-notification/d@example.com")
    assert read_lines(tmp_path / "log.txt") == ["notification for d@example.com: some notification"]


async def test_separate_query_log(tmp_path: Path) -> None:
    """``query_log_path`` sends ``found query`` lines to their own file."""
    settings = make_settings(tmp_path, query_log_path=tmp_path / "queries.txt")
    async with running(settings) as client:
        await client.post("/send-notification/e@example.com?q=term")
    assert read_lines(tmp_path / "queries.txt") == ["found query: term"]
    assert read_lines(tmp_path / "log.txt") == ["notification for e@example.com: some notification"]


async def test_paths_to_the_same_file_share_one_writer(tmp_path: Path) -> None:
    """Two spellings of one file (a ``..`` path, a symlink) give one writer, not three."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "alias.txt").symlink_to(tmp_path / "log.txt")
    for other in [tmp_path / "sub" / ".." / "log.txt", tmp_path / "alias.txt"]:
        settings = make_settings(tmp_path, query_log_path=other)
        async with running(settings) as client:
            ready = (await client.get("/readyz")).json()
        logs = [sink for sink in ready["sinks"] if not sink["name"].startswith("ledger ")]
        assert len(logs) == 1


@pytest.mark.parametrize(
    "email",
    ["not-an-email", "a@", "@example.com", "a b@example.com", "a@exa mple.com", "a@@example.com"],
)
async def test_invalid_email_is_422_naming_the_field(
    client: httpx.AsyncClient, email: str, settings: Settings
) -> None:
    """A malformed address gets 422 whose error points at the ``email`` path parameter."""
    response = await client.post(f"/send-notification/{email}")
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["path", "email"]
    assert "email" in error["msg"]


async def test_an_address_of_bytes_that_are_not_utf8_is_422(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """``%FF`` in the address decodes to U+FFFD: two different addresses sent would be one
    address here. 422 naming it, nothing written."""
    response = await client.post("/send-notification/%FF@example.com")
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["path", "email"]
    assert "not UTF-8" in error["msg"]
    assert read_lines(settings.log_path) == []


async def test_newline_in_email_is_rejected(client: httpx.AsyncClient) -> None:
    """A ``%0A`` in the address cannot forge a line: it is not a valid email."""
    response = await client.post("/send-notification/a%0Anotification for x@example.com")
    assert response.status_code == 422


async def test_overlong_message_and_query_are_422(tmp_path: Path) -> None:
    """``message`` and ``q`` longer than their limits get 422 naming the field."""
    settings = make_settings(tmp_path, max_message_length=10, max_query_length=5)
    async with running(settings) as client:
        ok = await client.post(
            "/send-notification/a@example.com?q=12345", json={"message": "x" * 10}
        )
        long_message = await client.post(
            "/send-notification/a@example.com", json={"message": "x" * 11}
        )
        long_query = await client.post("/send-notification/a@example.com?q=123456")
    assert ok.status_code == 200
    assert long_message.status_code == 422
    assert long_message.json()["detail"][0]["loc"] == ["body", "message"]
    assert long_query.status_code == 422
    assert long_query.json()["detail"][0]["loc"] == ["query", "q"]
    assert len(read_lines(settings.log_path)) == 2


@pytest.mark.parametrize(
    "body", [{"message": 5}, {"message": None}, {"msg": "typo"}, ["message"], "text"]
)
async def test_malformed_body_is_422(client: httpx.AsyncClient, body: object) -> None:
    """A body that is not ``{"message": <string>}`` gets 422 and logs nothing."""
    response = await client.post("/send-notification/a@example.com", json=body)
    assert response.status_code == 422


async def test_injection_corpus_gives_one_line_per_record(settings: Settings) -> None:
    """Hostile messages and queries each give exactly one well-formed, reversible line."""
    assert len(INJECTION_CORPUS) >= 20
    async with running(settings) as client:
        for value in INJECTION_CORPUS:
            response = await client.post(
                "/send-notification/victim@example.com",
                params={"q": value},
                json={"message": value},
            )
            assert response.status_code == 200, value
    lines = read_lines(settings.log_path)
    assert len(lines) == 2 * len(INJECTION_CORPUS)
    for value, query_line, note_line in zip(INJECTION_CORPUS, lines[::2], lines[1::2], strict=True):
        query, note = QUERY.fullmatch(query_line), NOTIFICATION.fullmatch(note_line)
        assert query is not None, query_line
        assert note is not None, note_line
        assert note["email"] == "victim@example.com"
        assert unescape(query["q"]) == value
        assert unescape(note["message"]) == value


async def test_concurrent_requests_give_whole_lines(settings: Settings) -> None:
    """2,000 concurrent requests give exactly 2,000 well-formed lines, none interleaved."""
    count = 2000
    async with running(settings) as client:

        async def send(i: int) -> int:
            message = f"message {i} " + "x" * (i % 300)
            response = await client.post(
                f"/send-notification/u{i}@example.com", json={"message": message}
            )
            return response.status_code

        statuses = await asyncio.gather(*(send(i) for i in range(count)))
    assert statuses == [200] * count
    lines = read_lines(settings.log_path)
    assert len(lines) == count
    seen = set()
    for line in lines:
        match = NOTIFICATION.fullmatch(line)
        assert match is not None, line
        i = int(match["email"][1 : match["email"].index("@")])
        assert match["message"] == f"message {i} " + "x" * (i % 300)
        seen.add(i)
    assert seen == set(range(count))


async def test_an_address_with_a_slash_is_accepted(settings: Settings) -> None:
    """``a/b@example.com`` is a valid address: routed to the endpoint, not a 404."""
    async with running(settings) as client:
        response = await client.post("/send-notification/a%2Fb@example.com")
    assert response.status_code == 200
    assert read_lines(settings.log_path) == ["notification for a/b@example.com: some notification"]


@pytest.mark.parametrize("number", ["1e999", "-1e400", "NaN", "Infinity"])
async def test_non_finite_numbers_in_the_body_are_422_not_500(
    client: httpx.AsyncClient, number: str
) -> None:
    """A body JSON cannot answer back (1e999, NaN) still gets a clean 422."""
    response = await client.post(
        "/send-notification/a@example.com",
        content=f'{{"message": {number}}}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "message"]
