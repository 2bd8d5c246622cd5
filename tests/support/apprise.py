"""Apprise URLs of real services with obviously fake, distinctive secrets, for the tests that
check a URL is accepted, and shown, without them (no test sends to these)."""

from __future__ import annotations

__all__ = ["FAKE_SECRETS", "FAKE_URLS", "SHOWN"]

FAKE_URLS = {
    "slack": "slack://T0KENASL4CK/B0KENBSL4CK/C0KENCSL4CK0123456789abcdef/#opssl4ck",
    "discord": "discord://1111222233334444/WEBHOOK-d1sc0rd-token",
    "tgram": "tgram://123456789:AAH-t3legram-token-abcdefghijklmnop/-100123456789",
    "mailto": "mailto://m41l-user:M41L-PASSWORD@mail.example.com?to=ops-m41l@example.com",
    "pover": "pover://USERKEYp0ver0123456789abc@APPTOKENp0ver0123456789ab",
}
"""Apprise URLs of the five services with obviously fake, distinctive secrets."""
FAKE_SECRETS = (
    "T0KENASL4CK",
    "B0KENBSL4CK",
    "C0KENCSL4CK",
    "SL4CK",
    "sl4ck",
    "1111222233334444",
    "d1sc0rd",
    "123456789:AAH",
    "t3legram",
    "-100123456789",
    "m41l",
    "M41L-PASSWORD",
    "p0ver",
    "USERKEY",
    "APPTOKEN",
)
"""Pieces of ``FAKE_URLS`` that nothing may show."""
SHOWN = {
    "slack": "slack:// (Slack)",
    "discord": "discord:// (Discord)",
    "tgram": "tgram:// (Telegram)",
    "mailto": "mailto:// (E-Mail)",
    "pover": "pover:// (Pushover)",
}
