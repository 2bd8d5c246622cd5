"""The guide's way of sending through Apprise: FastAPI's "Background Tasks" example with its
task calling ``Apprise.notify`` (Apprise's documented use: one ``Apprise`` object, its URL
added once), instead of writing a log line.

The URL is ``$BENCH_APPRISE_URL`` (the Apprise benchmark sets a ``json://`` one). The title and
body are what the service sends (``NOTIFY_EMAIL_SUBJECT``'s default, the message). Starlette
runs the synchronous task in its thread pool after the response. ``get_query`` (the ``?q=``
part) is the guide's own.
"""

from __future__ import annotations

import os
from typing import Annotated

from apprise import Apprise
from fastapi import BackgroundTasks, Depends, FastAPI

from bench.apps.guide import get_query

URL = os.environ.get("BENCH_APPRISE_URL", "json://127.0.0.1:8000/hook")

app = FastAPI()
notifier = Apprise()
notifier.add(URL)


def send_apprise(message: str) -> None:
    if not notifier.notify(body=message, title="Notification"):
        raise RuntimeError("Apprise did not deliver")


@app.post("/send-notification/{email}", response_model=None)
async def send_notification(
    email: str, background_tasks: BackgroundTasks, q: Annotated[str, Depends(get_query)]
) -> dict[str, str]:
    background_tasks.add_task(send_apprise, "some notification")
    return {"message": "Message sent"}
