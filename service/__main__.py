"""``python -m service``: serve with uvicorn on the configured host and port."""

from __future__ import annotations

import uvicorn

from config import settings_or_exit
from service.main import create_app


def main() -> None:
    settings = settings_or_exit()
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.graceful_timeout,
    )


if __name__ == "__main__":
    main()
