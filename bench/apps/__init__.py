"""ASGI apps that exist only to be benchmarked against the service."""
