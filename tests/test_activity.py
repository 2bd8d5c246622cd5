"""The activity log, ``GET /notifications?email=&status=&channel=&since=&limit=&after=``, on the
local backend, through the real app (the Redis backend's: tests/test_redis_activity.py)."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from config import Settings
from tests.conftest import make_settings, running
from tests.support.smtp import smtp_server
from tests.support.waiting import eventually
from tests.test_email_delivery import email_settings, until_email_status


async def listing(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    """``GET /notifications`` with ``params``, answered 200."""
    response = await client.get("/notifications", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def listed_ids(client: httpx.AsyncClient, count: int, **params: Any) -> list[str]:
    """The ids ``GET /notifications`` lists once it lists ``count`` (the ledger takes a batch
    at a time)."""

    async def complete() -> list[str]:
        ids = [item["id"] for item in (await listing(client, **params))["items"]]
        assert len(ids) == count, ids
        return ids

    return await eventually(complete, message=f"{count} listed for {params}")


async def post(client: httpx.AsyncClient, email: str) -> str:
    response = await client.post(f"/send-notification/{email}")
    assert response.status_code == 200, response.text
    return response.headers["x-notification-id"]


async def test_a_recipients_notifications_newest_first_from_any_process(tmp_path: Path) -> None:
    """Ada's notifications, and only hers, newest first, with their log status; the other
    process (one ledger) lists the same."""
    settings = make_settings(tmp_path)
    async with running(settings) as first, running(settings) as second:
        ada = [await post(first, "ada@example.com") for _ in range(3)]
        await post(first, "bob@example.com")
        await post(second, "Ada@Example.com")  # another address: the local part's case counts
        ids = await listed_ids(second, 3, email="ada@example.com", status="written")
        body = await listing(first, email="ada@example.com")
    assert ids == ada[::-1]
    assert [item["id"] for item in body["items"]] == ada[::-1]
    assert {item["email"] for item in body["items"]} == {"ada@example.com"}
    assert body["items"][0]["channels"]["log"]["status"] == "written"
    assert body["next"] is None


@pytest.mark.parametrize("count", [7, 6])
async def test_pages_follow_next_without_gaps_or_repeats(tmp_path: Path, count: int) -> None:
    """``limit`` and ``next`` walk every notification once, newest first; the last page's
    ``next`` is null, also when that page is exactly ``limit`` long (no empty page after)."""
    async with running(make_settings(tmp_path)) as client:
        posted = [await post(client, f"u{i}@example.com") for i in range(count)]
        await listed_ids(client, count)
        seen: list[str] = []
        pages = 0
        after = None
        while True:
            params = {"limit": 3} | ({"after": after} if after else {})
            page = await listing(client, **params)
            seen += [item["id"] for item in page["items"]]
            pages += 1
            after = page["next"]
            if after is None:
                break
    assert seen == posted[::-1]
    assert pages == -(-count // 3)  # 7: three pages; 6: two, not a third empty one


async def test_since_and_status_filter(tmp_path: Path) -> None:
    """``since`` keeps those accepted at or after it; ``status=failed`` those whose write
    failed (none here), ``channel=log&status=written`` all."""
    async with running(make_settings(tmp_path)) as client:
        before = await post(client, "a@example.com")
        await listed_ids(client, 1)
        accepted_at = (await client.get(f"/notifications/{before}")).json()["accepted_at"]
        # A millisecond after the first (shown to the millisecond); the others come after its
        # batch is in the ledger, which lingers longer than that.
        since = datetime.fromisoformat(accepted_at) + timedelta(milliseconds=1)
        after = [await post(client, "a@example.com") for _ in range(2)]
        newer = await listed_ids(client, 2, since=since.isoformat())
        assert await listed_ids(client, 3, channel="log", status="written")
        failed = await listing(client, status="failed")
    assert newer == after[::-1]
    assert failed["items"] == []


@pytest.mark.parametrize(
    ("params", "name", "says"),
    [
        ({"status": "lost"}, "status", "queued"),
        ({"channel": "sms"}, "channel", "log"),
        ({"since": "yesterday"}, "since", "datetime"),
        ({"limit": 1001}, "limit", "1000"),
        ({"limit": 0}, "limit", "1"),
        ({"after": "not-a-cursor"}, "after", "next"),
        ({"after": "9999999999999999999"}, "after", "next"),  # past SQLite's integers
        ({"after": "\u00b2"}, "after", "next"),  # a digit to str.isdigit, not to int()
        ({"email": "not an address"}, "email", ""),
    ],
)
async def test_bad_filters_are_422_naming_them(
    tmp_path: Path, params: dict[str, Any], name: str, says: str
) -> None:
    """An unknown status or channel, a malformed ``since``, ``after`` or email, or a page
    size out of range: 422 naming the parameter (and what is allowed)."""
    async with running(make_settings(tmp_path)) as client:
        response = await client.get("/notifications", params=params)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["query", name]
    assert says in error["msg"]


async def test_the_activity_log_needs_the_token_when_tokens_are_set(tmp_path: Path) -> None:
    async with running(make_settings(tmp_path, api_tokens="s3cret")) as client:
        assert (await client.get("/notifications")).status_code == 401
        authorized = await client.get("/notifications", headers={"Authorization": "Bearer s3cret"})
    assert authorized.json() == {"items": [], "next": None}


# -- with email -------------------------------------------------------------------------------


def email_on(tmp_path: Path, url: str, **overrides: Any) -> Settings:
    return email_settings(tmp_path, url, **overrides)


@pytest.mark.slow
async def test_why_ada_did_not_get_her_email_is_one_request(tmp_path: Path) -> None:
    """A 550 for ada: one ``GET /notifications?email=ada@example.com`` shows her notification,
    its log status, and its email dead with each attempt (when, how, the 550); the dead
    letters and the email channel's filter list it too, and the delivered one is not dead."""
    with smtp_server() as server:
        server.recorder.rcpt_replies["ada@example.com"] = "550 5.1.1 no such mailbox"
        async with running(email_on(tmp_path, server.url())) as client:
            ada = await post(client, "ada@example.com")
            bob = await post(client, "bob@example.com")
            await until_email_status(client, ada, "dead")
            await until_email_status(client, bob, "delivered")
            await listed_ids(client, 2)  # both in the ledger
            [found] = (await listing(client, email="ada@example.com"))["items"]
            dead = await listing(client, status="dead")
            by_channel = await listing(client, channel="email", status="dead")
            delivered = await listing(client, channel="email", status="delivered")
    assert found["id"] == ada
    assert found["email"] == "ada@example.com"
    email = found["channels"]["email"]
    assert email["status"] == "dead"
    [attempt] = email["history"]
    assert attempt["outcome"] == "dead"
    assert "550" in attempt["error"]
    assert attempt["at"].endswith("Z")
    assert found["channels"]["log"]["status"] in ("queued", "written")
    assert [item["id"] for item in dead["items"]] == [ada]
    assert [item["id"] for item in by_channel["items"]] == [ada]
    assert [item["id"] for item in delivered["items"]] == [bob]


@pytest.mark.slow
async def test_a_notification_whose_email_is_still_retrying_outlives_its_ttl(
    tmp_path: Path,
) -> None:
    """Past NOTIFY_STATUS_TTL a notification stays in the activity log while its email is
    pending (an unreachable server): expiry has run (a key with a shorter TTL is gone), and
    ada's notification is still found by her address."""
    port = 9  # discard: nothing listens
    settings = email_on(tmp_path, f"smtp://127.0.0.1:{port}", status_ttl=0.05, idempotency_ttl=0.05)
    async with running(settings) as client:
        ada = await post(client, "ada@example.com")
        keyed = await client.post(
            "/send-notification/key@example.com", headers={"Idempotency-Key": "k"}
        )
        assert keyed.status_code == 200
        await until_email_status(client, ada, "retrying")

        def key_expired() -> bool:
            with sqlite3.connect(tmp_path / "log.txt.ledger") as db:
                (count,) = db.execute("SELECT count(*) FROM idempotency_keys").fetchone()
                return int(count) == 0

        await eventually(key_expired, message="expiry has run")
        [found] = (await listing(client, email="ada@example.com"))["items"]
    assert found["id"] == ada
    assert found["channels"]["email"]["status"] == "retrying"
