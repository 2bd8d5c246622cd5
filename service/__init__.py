"""An async notification service: FastAPI's Background Tasks pattern, production-grade."""
