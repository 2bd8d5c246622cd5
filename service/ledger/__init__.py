"""The local backend's ledger: statuses and Idempotency-Keys every process on the machine
shares (``sqlite``). The Redis backend's is ``service.redis.ledger``."""
