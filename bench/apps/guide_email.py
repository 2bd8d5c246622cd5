"""The guide's way of sending the email: FastAPI's "Background Tasks" example with its task
sending the notification as an email through the standard library's ``smtplib``, one
connection per email, instead of writing a log line.

The SMTP server is ``127.0.0.1:$BENCH_SMTP_PORT`` (the email benchmark sets it). The message
has what the service's has but its ids: ``From``, ``To``, ``Subject`` and the guide's text as a
``text/plain`` body. Starlette runs the synchronous task in its thread pool after the response.
"""

from __future__ import annotations

import os
import smtplib
from email.message import EmailMessage
from typing import Annotated

from fastapi import BackgroundTasks, Depends, FastAPI

SMTP_HOST = "127.0.0.1"
SMTP_PORT = int(os.environ.get("BENCH_SMTP_PORT", "8025"))
SENDER = "bench@example.com"

app = FastAPI()


def write_log(message: str) -> None:
    with open("log.txt", mode="a") as log:
        log.write(message)


def send_email(email: str, message: str) -> None:
    mail = EmailMessage()
    mail["From"] = SENDER
    mail["To"] = email
    mail["Subject"] = "Notification"
    mail.set_content(message)
    with smtplib.SMTP(SMTP_HOST, SMTP_PORT) as smtp:
        smtp.send_message(mail)


def get_query(background_tasks: BackgroundTasks, q: str | None = None) -> str | None:
    if q:
        message = f"found query: {q}\n"
        background_tasks.add_task(write_log, message)
    return q


@app.post("/send-notification/{email}", response_model=None)
async def send_notification(
    email: str, background_tasks: BackgroundTasks, q: Annotated[str, Depends(get_query)]
) -> dict[str, str]:
    message = f"notification for {email}: some notification\n"
    background_tasks.add_task(send_email, email, message)
    return {"message": "Message sent"}
