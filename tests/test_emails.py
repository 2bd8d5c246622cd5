"""The fast email check agrees with pydantic's ``EmailStr`` wherever it answers."""

from __future__ import annotations

import random

import pytest
from pydantic import TypeAdapter, ValidationError, validate_email
from pydantic_core import PydanticCustomError

from service.emails import Email, is_plain, normalize_email

EMAIL_STR = TypeAdapter(Email)
ALPHABET = "aAzZ09._+-@!#$%&'*/=?^`{|}~\"(),:;<>[\\] \t\n\x00é日xn--"


def reference(address: str) -> str | None:
    """What pydantic's ``EmailStr`` gives: the normalized address, or None when invalid."""
    try:
        return validate_email(address)[1]
    except PydanticCustomError:
        return None


def corpus() -> list[str]:
    """Hand-picked edge cases plus random strings shaped like addresses."""
    picked = [
        "a@example.com",
        "first.last+tag@sub.example.co.uk",
        "A_B-C@example.org",
        "x@a.io",
        "info@example.com",
        "Support@example.com",
        "a@EXAMPLE.com",
        "a@xn--bcher-kva.example",
        "a@ab--cd.com",
        "a@host.local",
        "a@b.localhost",
        "a@x.test",
        "a@10.in-addr.arpa",
        "a@example.onion",
        "a@example.invalid",
        "a@-bad.com",
        "a@bad-.com",
        "a@example.c",
        "a@example.123",
        "a@example",
        ".a@example.com",
        "a.@example.com",
        "a..b@example.com",
        "a" * 64 + "@example.com",
        "a" * 65 + "@example.com",
        "a@" + "b" * 63 + ".com",
        "a@" + "b" * 64 + ".com",
        "a@" + ".".join(["b" * 63] * 4) + ".com",
        " a@example.com ",
        "Name <a@example.com>",
        '"quoted"@example.com',
        "a@[127.0.0.1]",
        "é@example.com",
        "a@exämple.com",
    ]
    rng = random.Random(20261124)
    shaped = []
    for _ in range(4000):
        local = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 8)))
        labels = [
            "".join(rng.choice("abcxyz019-AZ") for _ in range(rng.randint(0, 7)))
            for _ in range(rng.randint(1, 3))
        ]
        tld = rng.choice(["com", "org", "io", "c", "COM", "local", "test", "x1", "museum"])
        shaped.append(f"{local}@{'.'.join([*labels, tld])}")
    for _ in range(3000):  # near the fast path's edges: its alphabet, dots, hyphens, lengths
        local = "".join(rng.choice("ab.Z9_+-") for _ in range(rng.choice([1, 2, 5, 64, 65])))
        labels = [
            "".join(rng.choice("ab0-") for _ in range(rng.choice([1, 2, 3, 63, 64])))
            for _ in range(rng.randint(1, 4))
        ]
        tld = rng.choice(["com", "io", "c", "local", "test", "x1", "org"])
        shaped.append(f"{local}@{'.'.join([*labels, tld])}")
    return picked + shaped


def test_fast_path_agrees_with_email_validator() -> None:
    """Over 7,000 addresses, ``Email`` gives exactly what ``EmailStr`` gives."""
    disagreements = [
        address
        for address in corpus()
        if (is_plain(address) and reference(address) != address)
        or _validated(address) != reference(address)
    ]
    assert disagreements == []


def _validated(address: str) -> str | None:
    try:
        return EMAIL_STR.validate_python(address)
    except ValidationError:
        return None


def test_fast_path_covers_ordinary_addresses() -> None:
    """Ordinary addresses take the fast path, so the comparison above exercises it."""
    for address in ["a@example.com", "first.last+tag@mail.example.org", "u123-x@ex.co"]:
        assert is_plain(address)
    valid = [address for address in corpus() if reference(address) is not None]
    assert sum(map(is_plain, valid)) >= 100


RFC_2142_MAILBOXES = [
    *("info", "marketing", "sales", "support", "abuse", "noc", "security", "postmaster"),
    *("hostmaster", "usenet", "news", "webmaster", "www", "uucp", "ftp"),
]


@pytest.mark.parametrize("mailbox", [*RFC_2142_MAILBOXES, "admin", "root", "info2"])
def test_mailbox_names_are_normalized_as_email_validator_does(mailbox: str) -> None:
    """Every case of the RFC 2142 names (lowercased by email-validator), and names next to
    them (kept as they are), give exactly what ``EmailStr`` gives."""
    for local in (mailbox, mailbox.upper(), mailbox.capitalize()):
        address = f"{local}@example.com"
        assert normalize_email(address) == reference(address)


def test_invalid_address_error_is_pydantics() -> None:
    """An invalid address fails with pydantic's own message."""
    with pytest.raises(PydanticCustomError, match="value is not a valid email address"):
        normalize_email("not-an-email")
