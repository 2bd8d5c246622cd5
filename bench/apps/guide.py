"""Reference copy of the final example of FastAPI's "Background Tasks" tutorial.

Only two things differ from the docs: type annotations (with ``response_model=None`` so
the runtime behaviour stays that of the unannotated original) and the log line, which
uses the tutorial's first format, ``notification for {email}: some notification``, so
one log checker serves every server. ``log.txt`` is relative: the harness sets the cwd.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import BackgroundTasks, Depends, FastAPI

app = FastAPI()


def write_log(message: str) -> None:
    with open("log.txt", mode="a") as log:
        log.write(message)


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
    background_tasks.add_task(write_log, message)
    return {"message": "Message sent"}
