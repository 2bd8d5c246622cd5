"""The bench SMTP server's ceiling: ``--emails`` messages sent as fast as ``--connections``
kept-open ``aiosmtplib`` connections can, from a process of their own, with no HTTP and no
outbox in between. Delivery through any API to the same server cannot be faster, so the email
benchmark runs this beside its delivery rows.

Prints (or writes to ``--out``) ``{"emails", "connections", "started"}``, ``started`` being
``time.time()`` just before the first message; the SMTP server times the arrivals.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib

from bench.paths import emit_json


def _message(index: int, token: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "bench@example.com"
    message["To"] = f"c{index}-{token}@example.com"
    message["Subject"] = "Notification"
    message["X-Notification-Id"] = f"c{index}-{token}"
    message.set_content(f"notification for c{index}-{token}@example.com: some notification")
    return message


async def send_all(host: str, port: int, emails: int, connections: int) -> float:
    """Send ``emails`` messages over ``connections`` connections; when the first went."""
    token = secrets.token_hex(4)
    messages = [_message(index, token) for index in range(emails)]
    clients = [aiosmtplib.SMTP(hostname=host, port=port) for _ in range(connections)]
    await asyncio.gather(*(client.connect() for client in clients))
    pending = iter(messages)

    async def drain(client: aiosmtplib.SMTP) -> None:
        for message in pending:
            await client.send_message(message)

    started = time.time()
    try:
        await asyncio.gather(*(drain(client) for client in clients))
    finally:
        for client in clients:
            client.close()
    return started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.smtp_ceiling", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--emails", type=int, default=2_000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--out", type=Path, help="JSON result file (default: stdout)")
    args = parser.parse_args(argv)
    try:
        started = asyncio.run(send_all(args.host, args.port, args.emails, args.connections))
    except (OSError, aiosmtplib.SMTPException) as exc:
        print(f"smtp_ceiling failed: {exc!r}", file=sys.stderr)
        return 1
    emit_json(
        {"emails": args.emails, "connections": args.connections, "started": started}, args.out
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
