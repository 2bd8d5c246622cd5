"""The endpoint's body reader agrees with FastAPI's ``Body()`` where FastAPI is clear."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Body, FastAPI
from pydantic import Field

from service.records import escape
from service.schemas import DEFAULT_MESSAGE, NotificationBody
from tests.conftest import make_settings, read_lines, running

JSON = {"content-type": "application/json"}

#: (name, body, headers): requests on which both readers must give the same answer.
AGREEING: list[tuple[str, bytes, dict[str, str]]] = [
    ("no body", b"", {}),
    ("empty body with JSON type", b"", JSON),
    ("message", b'{"message": "hi there"}', JSON),
    (
        "JSON with charset",
        b'{"message": "charset"}',
        {"content-type": "application/json; charset=utf-8"},
    ),
    ("+json media type", b'{"message": "merge"}', {"content-type": "application/merge-patch+json"}),
    ("null", b"null", JSON),
    ("empty object", b"{}", JSON),
    ("unicode", b'{"message": "h\\u00e9llo \\u2028 \\ud83c\\udf89"}', JSON),
    ("wrong type", b'{"message": 5}', JSON),
    ("null message", b'{"message": null}', JSON),
    ("extra field", b'{"message": "a", "x": 1}', JSON),
    ("array", b"[1, 2]", JSON),
    ("string", b'"text"', JSON),
    ("too long", b'{"message": "' + b"x" * 11 + b'"}', JSON),
    ("at the limit", b'{"message": "' + b"x" * 10 + b'"}', JSON),
]

#: Requests where FastAPI's answer is unclear and ours names the problem instead.
IMPROVED: list[tuple[str, bytes, dict[str, str], str]] = [
    ("JSON without content type", b'{"message": "hi"}', {}, "Content-Type"),
    ("JSON as text/plain", b'{"message": "hi"}', {"content-type": "text/plain"}, "Content-Type"),
    ("truncated JSON", b'{"message":', JSON, "Invalid JSON"),
    ("whitespace only", b"   ", JSON, "Invalid JSON"),
    ("invalid UTF-8", b'{"message": "\xff"}', JSON, "Invalid JSON"),
]


class LimitedNotificationBody(NotificationBody):
    """The service's body model with a 10-character limit, as the tests configure it."""

    message: str = Field(default=DEFAULT_MESSAGE, max_length=10)


def reference_app() -> FastAPI:
    """FastAPI's own body handling for the same model, echoing the message it would log."""
    app = FastAPI()

    @app.post("/send-notification/{email}")
    async def endpoint(
        email: str, body: Annotated[LimitedNotificationBody | None, Body()] = None
    ) -> dict[str, str]:
        return {"message": body.message if body is not None else DEFAULT_MESSAGE}

    return app


async def post_both(
    tmp_path: Path, body: bytes, headers: dict[str, str]
) -> tuple[httpx.Response, httpx.Response, list[str]]:
    """The reference's answer, ours, and the lines ours logged."""
    transport = httpx.ASGITransport(app=reference_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://ref") as reference:
        expected = await reference.post(
            "/send-notification/a@example.com", content=body, headers=headers
        )
    settings = make_settings(tmp_path, max_message_length=10)
    async with running(settings) as client:
        actual = await client.post(
            "/send-notification/a@example.com", content=body, headers=headers
        )
    return expected, actual, read_lines(settings.log_path)


def locations(response: httpx.Response) -> list[Any]:
    return [error["loc"] for error in response.json()["detail"]]


@pytest.mark.parametrize(("name", "body", "headers"), AGREEING, ids=[case[0] for case in AGREEING])
async def test_reader_agrees_with_fastapi_body(
    tmp_path: Path, name: str, body: bytes, headers: dict[str, str]
) -> None:
    """Same status and same error locations as ``Body()``; an accepted message is logged."""
    expected, actual, lines = await post_both(tmp_path, body, headers)
    assert actual.status_code == expected.status_code, name
    if expected.status_code == 200:
        message = escape(expected.json()["message"])
        assert lines == [f"notification for a@example.com: {message}"]
    else:
        assert locations(actual) == locations(expected)
        assert lines == []


@pytest.mark.parametrize(
    ("name", "body", "headers", "named"), IMPROVED, ids=[case[0] for case in IMPROVED]
)
async def test_reader_names_problems_fastapi_leaves_vague(
    tmp_path: Path, name: str, body: bytes, headers: dict[str, str], named: str
) -> None:
    """Where FastAPI answers vaguely (or 400), ours is a 422 that names the problem."""
    expected, actual, lines = await post_both(tmp_path, body, headers)
    assert expected.status_code in (400, 422)
    assert actual.status_code == 422
    assert named in actual.json()["detail"][0]["msg"]
    assert lines == []


#: README.md: "The body: none, `null`, or a JSON object (`application/json` or `…+json`), each
#: field optional: `message` (default `some notification`), …"; "`422` … for any other body
#: (another type or field, not JSON, no JSON `Content-Type`) … a value too long" (`subject`
#: and `channels`: tests/test_shaping.py).
README_ACCEPTED: list[tuple[bytes, dict[str, str], str]] = [
    (b"", {}, DEFAULT_MESSAGE),
    (b"null", JSON, DEFAULT_MESSAGE),
    (b"{}", JSON, DEFAULT_MESSAGE),
    (b'{"message": "hi"}', JSON, "hi"),
    (b'{"message": "hi"}', {"content-type": "application/merge-patch+json"}, "hi"),
]
README_REFUSED: list[tuple[bytes, dict[str, str]]] = [
    (b'{"message": 5}', JSON),
    (b'{"message": null}', JSON),
    (b'{"message": "hi", "x": 1}', JSON),
    (b'{"note": "hi"}', JSON),
    (b"[]", JSON),
    (b'"hi"', JSON),
    (b"5", JSON),
    (b'{"message":', JSON),
    (b'{"message": "hi"}', {}),
    (b'{"message": "hi"}', {"content-type": "text/plain"}),
    (b'{"message": "' + b"x" * 11 + b'"}', JSON),
]


async def test_the_bodies_the_readme_promises_are_taken_and_the_rest_refused(
    tmp_path: Path,
) -> None:
    """Exactly the README's statement: those bodies log their message (or the default), every
    other one is 422 and logs nothing."""
    settings = make_settings(tmp_path, max_message_length=10)
    async with running(settings) as client:
        for body, headers, _ in README_ACCEPTED:
            response = await client.post(
                "/send-notification/a@example.com", content=body, headers=headers
            )
            assert response.status_code == 200, (body, headers, response.text)
        for body, headers in README_REFUSED:
            response = await client.post(
                "/send-notification/a@example.com", content=body, headers=headers
            )
            assert response.status_code == 422, (body, headers, response.text)
            assert response.json()["detail"], body
    expected = [f"notification for a@example.com: {escape(m)}" for _, _, m in README_ACCEPTED]
    assert read_lines(settings.log_path) == expected
