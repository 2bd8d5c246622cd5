"""Pending deliveries that outlive the process: SQLite locally (Redis with the Redis backend)."""
