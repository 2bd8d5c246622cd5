"""Email validation: pydantic's ``EmailStr`` rules, with a fast path for plain addresses.

``EmailStr`` runs ``email-validator`` on every request (about 30 µs). Almost every real address
is plain ASCII of a narrow shape whose normalized form is the address itself; ``is_plain``
recognises exactly those, and everything else goes to pydantic's own ``validate_email``, so
the accepted set, the normalized value and the error messages stay pydantic's.
"""

from __future__ import annotations

import re
from typing import Annotated

from email_validator import SPECIAL_USE_DOMAIN_NAMES
from pydantic import AfterValidator, WithJsonSchema, validate_email

__all__ = ["Email", "is_plain", "normalize_email"]

# Local part: dot-atom of letters, digits and _ + - (no leading, trailing or double dots).
# Domain: lowercase LDH labels of at most 63 characters, a letters-only TLD. Uppercase
# domains, IDNA ("xn--", or any "--"), quoted local parts and display names are left to
# email-validator, which normalizes them.
_PLAIN = re.compile(
    r"(?P<local>[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*)"
    r"@(?P<domain>(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63})"
)
_LOCAL_MAX, _DOMAIN_MAX, _ADDRESS_MAX = 64, 253, 254
# email-validator lowercases the mailbox names of RFC 2142 (section 3-5: business, network and
# service mailboxes), and rejects special-use domains and their subdomains (its documented
# SPECIAL_USE_DOMAIN_NAMES): both go to the slow path. The RFC's names are written out here
# (email-validator keeps its copy in an undocumented module); a test checks each of them,
# in every case, against email-validator.
_CASE_INSENSITIVE_MAILBOXES = frozenset(
    {
        "info", "marketing", "sales", "support",  # business (RFC 2142, 3)
        "abuse", "noc", "security",  # network operations (4)
        "postmaster", "hostmaster", "usenet", "news", "webmaster", "www", "uucp", "ftp",  # (5)
    }
)  # fmt: skip
_SPECIAL_USE_SUFFIXES = tuple(f".{name}" for name in SPECIAL_USE_DOMAIN_NAMES)


def is_plain(address: str) -> bool:
    """True when ``address`` is valid as it stands and is its own normalized form."""
    if len(address) > _ADDRESS_MAX:
        return False
    match = _PLAIN.fullmatch(address)
    if match is None:
        return False
    local, domain = match["local"], match["domain"]
    return (
        len(local) <= _LOCAL_MAX
        and len(domain) <= _DOMAIN_MAX
        and "--" not in domain
        and local.lower() not in _CASE_INSENSITIVE_MAILBOXES
        and not f".{domain}".endswith(_SPECIAL_USE_SUFFIXES)
    )


def normalize_email(address: str) -> str:
    """Validate ``address`` as ``EmailStr`` does and return its normalized form. U+FFFD is
    refused: it is what bytes that are not UTF-8 decode to (``%FF`` in the path), so two
    different addresses sent would be one address here."""
    if is_plain(address):
        return address
    if "\ufffd" in address:
        raise ValueError("value is not a valid email address: it holds bytes that are not UTF-8")
    return validate_email(address)[1]


Email = Annotated[
    str,
    AfterValidator(normalize_email),
    WithJsonSchema({"type": "string", "format": "email"}),
]
"""A path or body field validated like ``EmailStr``."""
