"""A real webhook receiver for the tests: a small ASGI app under uvicorn, on its own thread and
event loop, on a free loopback port.

Every request is verified with the reference library ``standardwebhooks`` (not the service's
code), once per secret the receiver knows, and recorded with the time it arrived and its
headers. A receiver that knows no secret takes every request unverified (what Apprise's
``json://``, ``form://`` and ``ntfy://`` send). The receiver
can be told what to answer, per path: a script of answers used in order (``script``), then a
standing answer (``answer``, 200 unless told): any status, with ``Retry-After``, or ``hang``
(hold the request until ``release``, past the client's timeout). ``hold_all`` holds every
request until released (what a slow receiver does to the requests in flight).

Nothing here sleeps on a timer: tests wait for what the receiver saw (``wait_for``), with a
deadline.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import httpx
import uvicorn
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.types import Receive, Scope, Send

from service.channels.webhook import channel_name
from tests.support.server import HOST, free_port
from tests.support.waiting import eventually

__all__ = [
    "Answer",
    "Received",
    "Receiver",
    "disabled_and_enabled_from_the_api",
    "readyz_channel",
    "until",
    "until_status",
    "webhook_receiver",
]

_WAIT_S = 5.0


@dataclass(frozen=True)
class Answer:
    """What the receiver answers to one request."""

    status: int = 200
    retry_after: str | None = None
    hang: bool = False
    """Hold the request until ``Receiver.release`` (then answer ``status``)."""
    location: str | None = None


@dataclass(frozen=True)
class Received:
    """One request, as it arrived."""

    path: str
    query: str
    at: float
    """``time.time()`` on arrival."""
    webhook_id: str
    timestamp: str
    signature: str
    body: bytes
    verified_with: tuple[int, ...]
    """Which of the receiver's secrets (by index) verified it with ``standardwebhooks``."""
    answered: int
    headers: tuple[tuple[str, str], ...] = ()
    """Every header, names lowercase, in order."""

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        """The body as an ``application/x-www-form-urlencoded`` form (one value a field)."""
        return dict(parse_qsl(self.body.decode(), keep_blank_values=True, strict_parsing=True))

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (any case), if sent."""
        return dict(self.headers).get(name.lower())


@dataclass
class Receiver:
    """The ASGI app and what it saw; set the answers before the requests come."""

    secrets: tuple[str, ...]
    received: list[Received] = field(default_factory=list)
    hold_all: bool = False
    held: int = 0
    _scripts: dict[str, deque[Answer]] = field(default_factory=dict)
    _standing: dict[str, Answer] = field(default_factory=dict)
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _release: asyncio.Event | None = None
    loop: asyncio.AbstractEventLoop | None = None

    def script(self, path: str, *answers: Answer) -> None:
        """Answer the next requests to ``path`` with ``answers``, in order."""
        with self._changed:
            self._scripts.setdefault(path, deque()).extend(answers)

    def answer(self, path: str, answer: Answer) -> None:
        """Answer every request to ``path`` (after its script) with ``answer``."""
        with self._changed:
            self._standing[path] = answer

    def wait_for(self, condition: Callable[[Receiver], bool], timeout: float = _WAIT_S) -> bool:
        """Block (up to ``timeout`` s) until ``condition(self)``; call it through
        ``asyncio.to_thread``."""
        with self._changed:
            return self._changed.wait_for(lambda: condition(self), timeout=timeout)

    def on(self, path: str) -> list[Received]:
        """The requests to ``path`` so far, in order of arrival."""
        with self._changed:
            return [request for request in self.received if request.path == path]

    def release(self) -> None:
        """Let every held request (and those to come) be answered."""
        self.hold_all = False
        loop, event = self.loop, self._release
        if loop is not None and event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(event.set)

    def _next_answer(self, path: str) -> Answer:
        with self._changed:
            script = self._scripts.get(path)
            if script:
                return script.popleft()
            return self._standing.get(path, Answer())

    def _verified(self, body: bytes, headers: dict[str, str]) -> tuple[int, ...]:
        verified = []
        for index, secret in enumerate(self.secrets):
            try:
                Webhook(secret).verify(body, headers)
            except WebhookVerificationError:
                continue
            verified.append(index)
        return tuple(verified)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        if self._release is None:
            self.loop = asyncio.get_running_loop()
            self._release = asyncio.Event()
        arrived = time.time()
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        raw_headers = tuple((key.decode(), value.decode()) for key, value in scope["headers"])
        headers = dict(raw_headers)
        answer = self._next_answer(scope["path"])
        verified = self._verified(body, headers)
        status = answer.status if verified or not self.secrets else 400
        with self._changed:
            self.received.append(
                Received(
                    path=scope["path"],
                    query=scope["query_string"].decode(),
                    at=arrived,
                    webhook_id=headers.get("webhook-id", ""),
                    timestamp=headers.get("webhook-timestamp", ""),
                    signature=headers.get("webhook-signature", ""),
                    body=body,
                    verified_with=verified,
                    answered=status,
                    headers=raw_headers,
                )
            )
            self._changed.notify_all()
        if answer.hang or self.hold_all:
            with self._changed:
                self.held += 1
                self._changed.notify_all()
            try:
                await self._release.wait()
            finally:
                with self._changed:
                    self.held -= 1
                    self._changed.notify_all()
        response_headers = [(b"content-type", b"text/plain")]
        if answer.retry_after is not None:
            response_headers.append((b"retry-after", answer.retry_after.encode()))
        if answer.location is not None:
            response_headers.append((b"location", answer.location.encode()))
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": b"ok"})


@dataclass
class ReceiverServer:
    receiver: Receiver
    port: int

    def url(self, path: str = "/hook") -> str:
        return f"http://{HOST}:{self.port}{path}"


@contextmanager
def webhook_receiver(*secrets: str) -> Iterator[ReceiverServer]:
    """A running receiver knowing ``secrets`` (``whsec_…``; none: it verifies nothing) on a
    free loopback port, stopped (held requests released first) at the end of the block."""
    receiver = Receiver(secrets=secrets)
    for _ in range(5):  # the port was free a moment ago; another process may take it
        port = free_port()
        config = uvicorn.Config(
            receiver,
            host=HOST,
            port=port,
            loop="asyncio",
            http="h11",
            ws="none",
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="webhook receiver", daemon=True)
        thread.start()
        deadline = time.monotonic() + _WAIT_S
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            thread.join(0.01)
        if server.started:
            break
        server.should_exit = True
        thread.join(_WAIT_S)
    else:
        raise AssertionError("no free port for the webhook receiver")
    try:
        yield ReceiverServer(receiver, port)
    finally:
        receiver.release()
        server.should_exit = True
        thread.join(_WAIT_S * 2)


async def until(receiver: Receiver, condition: Any, within: float = 20.0) -> None:
    """Wait (in a thread: the receiver records from its own) until the receiver saw it."""
    assert await asyncio.to_thread(receiver.wait_for, condition, within), "not seen in time"


async def until_status(
    client: httpx.AsyncClient,
    notification_id: str,
    channel: str,
    status: str,
) -> dict[str, Any]:
    async def reached() -> dict[str, Any]:
        response = await client.get(f"/notifications/{notification_id}")
        assert response.status_code == 200, response.text
        state: dict[str, Any] = response.json()["channels"][channel]
        assert state["status"] == status, f"{channel} stayed {state}"
        return state

    return await eventually(reached, interval=0.02, message=f"{channel} {status}")


async def readyz_channel(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
    ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    [channel] = [c for c in ready.json()["channels"] if c["name"] == name]
    return channel  # type: ignore[no-any-return]


async def disabled_and_enabled_from_the_api(
    client: httpx.AsyncClient, hooks: ReceiverServer, deliverer_output: Callable[[], str]
) -> None:
    """A URL (``hooks.url()``) delivered by another process than the API ``client`` talks to
    answers 410: the API shows its delivery dead and the URL disabled (``/readyz``), and the
    next notification's delivery dead without a request; once the receiver is back,
    ``POST /webhooks/enable`` on the API answers the URL's channel, the delivering process
    (whose output ``deliverer_output`` reads) says it delivers again, and the next
    notification is delivered; enabling again answers none."""
    name = channel_name(hooks.url())
    receiver = hooks.receiver
    receiver.answer("/hook", Answer(410))

    async def status(notification_id: str, wanted: str) -> dict[str, Any]:
        async def reached() -> dict[str, Any]:
            response = await client.get(f"/notifications/{notification_id}")
            state: dict[str, Any] = response.json()["channels"][name]
            assert state["status"] == wanted, state
            return state

        return await eventually(reached, message=f"{name} {wanted}")

    async def channel() -> dict[str, Any]:
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        [found] = [c for c in ready.json()["channels"] if c["name"] == name]
        return found  # type: ignore[no-any-return]

    async def post(email: str) -> str:
        response = await client.post(f"/send-notification/{email}")
        assert response.status_code == 200, response.text
        return response.headers["x-notification-id"]

    first = await post("first@example.com")
    assert "410" in (await status(first, "dead"))["last_error"]
    disabled = await channel()
    assert disabled["disabled"] is True, disabled
    assert "HTTP 410" in disabled["error"]
    assert disabled["target"] == hooks.url()
    buried = await status(await post("second@example.com"), "dead")
    assert buried["attempts"] == 0
    assert buried["last_error"].startswith("disabled: HTTP 410")
    assert [request.webhook_id for request in receiver.on("/hook")] == [first]

    receiver.answer("/hook", Answer(200))
    enabled = await client.post("/webhooks/enable")
    assert enabled.json() == {"enabled": [name]}
    assert await channel() == {
        "name": name,
        "error": None,
        "target": hooks.url(),
        "disabled": False,
    }
    await eventually(
        lambda: f"{name}: enabled again" in deliverer_output(), message="enabled where delivered"
    )
    third = await post("third@example.com")
    await status(third, "delivered")
    assert [request.webhook_id for request in receiver.on("/hook")] == [first, third]
    assert (await client.post("/webhooks/enable")).json() == {"enabled": []}
