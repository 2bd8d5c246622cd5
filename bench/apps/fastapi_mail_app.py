"""fastapi-mail's way of sending the email, as its documentation shows it: the endpoint builds a
``MessageSchema``, a ``FastMail(conf)``, and adds ``fm.send_message`` to ``BackgroundTasks``.

``send_message`` is a coroutine, so Starlette awaits it on the event loop after the response
(no thread pool); each call opens its own ``aiosmtplib`` connection, sends one message and
quits. The SMTP server is ``127.0.0.1:$BENCH_SMTP_PORT`` (the distance benchmark sets it),
plain SMTP without credentials, as a local relay takes it; the message has what the guide's
has: ``From``, ``To``, ``Subject`` and the guide's text as a ``text/plain`` body.
"""

from __future__ import annotations

import os
from typing import Annotated

from fastapi import BackgroundTasks, Depends, FastAPI
from fastapi_mail import ConnectionConfig, FastMail, MessageSchema, MessageType
from pydantic import SecretStr

from bench.apps.guide import get_query

SENDER = "bench@example.com"

conf = ConnectionConfig(
    MAIL_USERNAME="",
    MAIL_PASSWORD=SecretStr(""),
    MAIL_FROM=SENDER,
    MAIL_PORT=int(os.environ.get("BENCH_SMTP_PORT", "8025")),
    MAIL_SERVER="127.0.0.1",
    MAIL_STARTTLS=False,
    MAIL_SSL_TLS=False,
    USE_CREDENTIALS=False,
    VALIDATE_CERTS=False,
)

app = FastAPI()


@app.post("/send-notification/{email}", response_model=None)
async def send_notification(
    email: str, background_tasks: BackgroundTasks, q: Annotated[str, Depends(get_query)]
) -> dict[str, str]:
    message = MessageSchema(
        subject="Notification",
        recipients=[email],
        body=f"notification for {email}: some notification\n",
        subtype=MessageType.plain,
    )
    fm = FastMail(conf)
    background_tasks.add_task(fm.send_message, message)
    return {"message": "Message sent"}
