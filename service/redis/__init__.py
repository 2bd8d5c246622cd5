"""The Redis backend (``NOTIFY_BACKEND=redis``): broker, ledger, publisher, worker."""
