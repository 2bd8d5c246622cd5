"""The guide's way of sending a webhook: FastAPI's "Background Tasks" example with its task
POSTing the notification with ``httpx.post``, a new client and so a new connection each time,
instead of writing a log line.

The URL is ``$BENCH_WEBHOOK_URL`` and the key ``$BENCH_WEBHOOK_SECRET`` (``whsec_`` + base64;
the webhook benchmark sets both). The request carries what the service's carries: the same
JSON body ``{type, id, time, email, message, q}`` and the Standard Webhooks headers, signed the
same way, so the two differ in how they send, not in what. Starlette runs the synchronous task
in its thread pool after the response. ``get_query`` (the ``?q=`` part) is the guide's own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated

import httpx
from fastapi import BackgroundTasks, Depends, FastAPI

from bench.apps.guide import get_query

URL = os.environ.get("BENCH_WEBHOOK_URL", "http://127.0.0.1:8000/hook")
KEY = base64.b64decode(os.environ.get("BENCH_WEBHOOK_SECRET", "whsec_").removeprefix("whsec_"))
TIMEOUT_S = 15.0

app = FastAPI()


def signed_request(email: str, message: str, q: str | None) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one webhook, as the Standard Webhooks specification says."""
    notification_id = str(uuid.uuid4())
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    body = json.dumps(
        {
            "type": "notification",
            "id": notification_id,
            "time": now,
            "email": email,
            "message": message,
            "q": q,
        },
        separators=(",", ":"),
    ).encode()
    timestamp = str(int(time.time()))
    signed = f"{notification_id}.{timestamp}.".encode() + body
    digest = base64.b64encode(hmac.new(KEY, signed, hashlib.sha256).digest()).decode()
    headers = {
        "content-type": "application/json",
        "webhook-id": notification_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": f"v1,{digest}",
    }
    return body, headers


def send_webhook(email: str, message: str, q: str | None) -> None:
    body, headers = signed_request(email, message, q)
    httpx.post(URL, content=body, headers=headers, timeout=TIMEOUT_S).raise_for_status()


@app.post("/send-notification/{email}", response_model=None)
async def send_notification(
    email: str, background_tasks: BackgroundTasks, q: Annotated[str, Depends(get_query)]
) -> dict[str, str]:
    message = f"notification for {email}: some notification\n"
    background_tasks.add_task(send_webhook, email, message, q)
    return {"message": "Message sent"}
