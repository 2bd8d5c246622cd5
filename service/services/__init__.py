"""Business logic. Never imports FastAPI."""

from service.services.notifications import NotificationService, QueryLine

__all__ = ["NotificationService", "QueryLine"]
