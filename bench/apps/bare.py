"""The ceiling: the endpoint's path and response with no validation and no work."""

from __future__ import annotations

from fastapi import FastAPI

app = FastAPI()


# response_model=None: the return annotation is for mypy, not a response model to validate.
@app.post("/send-notification/{email}", response_model=None)
async def send_notification(email: str) -> dict[str, str]:
    """Acknowledge without scheduling anything."""
    return {"message": "Notification sent in the background"}
