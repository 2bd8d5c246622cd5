"""Business logic. Never imports FastAPI."""

from service.services.notifications import NotificationService

__all__ = ["NotificationService"]
