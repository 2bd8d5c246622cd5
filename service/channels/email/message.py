"""The email of a notification, built with the standard library: pure, no I/O.

One message per notification, as an ``email.message.EmailMessage`` with policy
``email.policy.SMTP`` (or its ``SMTPUTF8`` twin when the recipient's local part is not ASCII)
writes it (``build_mail`` says how), with exactly these headers:
``From``, ``To``, ``Subject``, ``Date``, ``Message-ID: <{id}@{domain of From}>``,
``X-Notification-Id: {id}``, and the MIME headers of a ``text/plain; charset="utf-8"`` body.
``Date`` is not optional in RFC 5322 (3.6), so the caller passes the time to put in it.

The recipient and the message are request input. Neither can add or change a header:

- an address is validated again by ``email-validator`` (the API's own rules) and must come
  back as one address whose ``addr-spec`` is exactly the envelope's; anything else, an
  address with CR, LF or any other character outside an address, raises ``ValueError``;
- the message is only ever the body, after the blank line that ends the headers. Its line
  breaks (CRLF, CR or LF) become the email's line breaks; every other character is kept. A
  body that is plain printable ASCII in short lines goes as ``7bit``; anything else
  (non-ASCII, NUL or other control characters, U+2028, U+0085, lines over 78 characters) as
  ``quoted-printable``, so the message is 7-bit clean and needs no ``8BITMIME``.

Internationalised addresses: the envelope and ``To`` carry the ASCII (IDNA) form of the domain
(``a@bücher.de`` goes to ``a@xn--bcher-kva.de``). A local part that is not ASCII has no ASCII
form: such a message needs a server that offers SMTPUTF8 (``needs_smtputf8``).
"""

from __future__ import annotations

import binascii
import functools
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from email import policy
from email.headerregistry import Address, BaseHeader
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import format_datetime
from typing import TypeAlias

from email_validator import validate_email

from service.emails import is_plain

__all__ = ["Mail", "ascii_address", "build_mail", "needs_smtputf8"]

# A notification id goes into Message-ID's left part and X-Notification-Id: letters, digits
# and ". _ -" between letters or digits (ids are UUIDs; nothing else can reach a header).
_ID = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,126}[A-Za-z0-9])?")
# What may go as 7bit: tab, CR, LF and printable ASCII (no NUL, no other control character).
_NOT_7BIT = re.compile(r"[^\t\n\r\x20-\x7e]")
_MAX_7BIT_LINE = 78  # RFC 5322 2.1.1's SHOULD; longer lines go quoted-printable


@dataclass(frozen=True, slots=True)
class Mail:
    """One notification's email, ready for SMTP: its envelope and its message.

    ``sender`` and ``recipient`` are the envelope (``MAIL FROM``, ``RCPT TO``), with ASCII
    domains; ``smtputf8`` says whether the server must offer SMTPUTF8 to take it; ``data`` is
    the message as sent after ``DATA``: CRLF line ends, before SMTP's dot-stuffing."""

    notification_id: str
    sender: str
    recipient: str
    data: bytes

    @property
    def smtputf8(self) -> bool:
        return needs_smtputf8(self.recipient)

    def as_bytes(self) -> bytes:
        """The message as sent after ``DATA`` (``data``)."""
        return self.data


def ascii_address(address: str) -> str:
    """``address`` (validated as the API validates emails) with the ASCII (IDNA) form of its
    domain: ``a@bücher.de`` gives ``a@xn--bcher-kva.de``. The local part is kept as it is.

    Raises ``ValueError`` (``email_validator.EmailNotValidError``) if it is not valid. A plain
    ASCII address (``service.emails.is_plain``: valid and its own normalized form, checked
    against email-validator by the tests) is returned as it is, without asking again."""
    if is_plain(address):
        return address
    validated = validate_email(address, check_deliverability=False)
    return f"{validated.local_part}@{validated.ascii_domain}"


def needs_smtputf8(address: str) -> bool:
    """Whether mail to (or from) ``address`` needs SMTPUTF8: its local part is not ASCII. An
    internationalised domain alone does not: it goes in its IDNA form."""
    local, _, _ = address.rpartition("@")
    return not local.isascii()


def build_mail(
    notification_id: str,
    email: str,
    message: str,
    *,
    sender: str,
    subject: str,
    date: datetime,
) -> Mail:
    """The email of notification ``notification_id`` for ``email``, whose body is ``message``.

    ``sender`` (``From`` and the envelope sender) must be an address with an ASCII local part;
    ``subject`` printable text on one line; ``date`` an aware datetime. Raises ``ValueError``
    naming the problem for an invalid id, address, subject or date (never for a message).

    The bytes are those of an ``EmailMessage`` with these headers set as strings and the body
    by ``set_content`` (the tests compare them for every kind of input), made without building
    one: each header is folded by the standard policy (its documented ``header_factory`` and
    ``fold_binary``), once per process for what messages share (``From``, ``Subject``, the
    MIME headers; ``Date`` once a second), and a message's own plain one-token values (an
    ASCII address, its message id) are written as the policy writes them when they fit on
    the line. Building the standard message object cost four times the rest of a delivery's
    CPU."""
    if not _ID.fullmatch(notification_id):
        raise ValueError("a notification id must be letters, digits, '.', '_' or '-'")
    if date.tzinfo is None or date.utcoffset() is None:
        raise ValueError("the date must be timezone-aware")
    recipient = ascii_address(email)
    smtputf8 = needs_smtputf8(recipient)
    constant = _constant_headers(sender, subject, smtputf8)
    mail_policy = _POLICIES[smtputf8]
    head = b"".join(
        (
            constant.from_,
            _address_line(mail_policy, "To", recipient),
            constant.subject,
            _date_line(date.replace(microsecond=0), date.utcoffset(), smtputf8),
            _own_line(mail_policy, "Message-ID", f"<{notification_id}@{constant.domain}>"),
            _own_line(mail_policy, "X-Notification-Id", notification_id),
        )
    )
    if _transfer_encoding(message) == "7bit":
        # What ``set_content(message, charset="utf-8", cte="7bit")`` writes: its three
        # headers, a blank line, then each line of the text ended by CRLF.
        lines = message.splitlines()
        body = constant.plain_text + ("\r\n".join(lines) + "\r\n").encode("ascii")
    else:
        body = constant.quoted_printable + _quoted_printable(message)
    return Mail(notification_id, constant.envelope_sender, recipient, head + body)


_ONE_TOKEN = {
    "To": re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+"),
    "Message-ID": re.compile(r"<[A-Za-z0-9._-]+@[A-Za-z0-9.-]+>"),
    "X-Notification-Id": _ID,
}
"""The values of a message's own headers that the policy writes out as they are when they fit
on the line: a plain ASCII address, message id or notification id, with nothing to quote,
encode or fold."""

_Policy: TypeAlias = "EmailPolicy[EmailMessage]"

_POLICIES: dict[bool, _Policy] = {False: policy.SMTP, True: policy.SMTPUTF8}
"""``email.policy.SMTP``, or ``SMTPUTF8`` for a non-ASCII local part."""


def _fold(mail_policy: _Policy, name: str, value: str) -> tuple[BaseHeader, bytes]:
    """The header ``name: value`` as the policy parses it, and its line(s) as it writes them
    (what ``message[name] = value`` then ``as_bytes()`` do)."""
    header: BaseHeader = mail_policy.header_factory(name, value)
    line = mail_policy.fold_binary(name, header)
    if _NOT_ONE_HEADER.search(line[:-2]):  # (what the value decoded to: an encoded word)
        raise ValueError(f"the {name} header would not be one header")
    return header, line


_NOT_ONE_HEADER = re.compile(rb"\r(?!\n[ \t])|(?<!\r)\n|\r\n(?![ \t])")
"""A line break in a header's folded bytes that does not continue it (a fold is CRLF and
a space or tab): the header factory decodes RFC 2047 words, which can hold CR LF."""


def _own_line(mail_policy: _Policy, name: str, value: str) -> bytes:
    """The line of one of a message's own headers: as it is when it is one plain token that
    fits on a line (what the policy's fold comes to), else folded by the policy."""
    limit = mail_policy.max_line_length
    fits = not limit or len(name) + 2 + len(value) <= limit
    if fits and _ONE_TOKEN[name].fullmatch(value):
        return f"{name}: {value}\r\n".encode("ascii")
    return _fold(mail_policy, name, value)[1]


def _address_line(mail_policy: _Policy, name: str, address: str) -> bytes:
    """The line of an address header holding exactly ``address``; ``ValueError`` if the
    policy would read anything else in it."""
    if _ONE_TOKEN[name].fullmatch(address):  # one dot-atom address: nothing else to read
        return _own_line(mail_policy, name, address)
    header, line = _fold(mail_policy, name, address)
    _check_one_address(header, address)
    return line


def _quoted_printable(text: str) -> bytes:
    """``text`` in UTF-8, quoted-printable (``binascii.b2a_qp``: lines of at most 76
    characters, as RFC 2045 requires; ``set_content`` writes up to 78), each of its line
    breaks (CRLF, CR or LF) a CRLF, ended by one."""
    lines = text.encode("utf-8").splitlines()  # bytes split at CR, LF and CRLF only
    return binascii.b2a_qp(b"\n".join(lines) + b"\n").replace(b"\n", b"\r\n")


def _content(mail_policy: _Policy, text: str, cte: str) -> bytes:
    """The MIME headers, blank line and body that ``set_content(text, charset="utf-8",
    cte=cte)`` gives a message (written after the headers set before it)."""
    part = EmailMessage(policy=mail_policy)
    part.set_content(text, charset="utf-8", cte=cte)
    return part.as_bytes()


@dataclass(frozen=True, slots=True)
class _Constant:
    """What every message of a process shares (the settings' sender and subject), folded."""

    envelope_sender: str
    domain: str
    from_: bytes
    subject: bytes
    plain_text: bytes
    """``Content-Type``, ``Content-Transfer-Encoding``, ``MIME-Version`` of a 7bit body and
    the blank line after them."""
    quoted_printable: bytes
    """The same for a quoted-printable body."""


@functools.lru_cache(maxsize=8)
def _constant_headers(sender: str, subject: str, smtputf8: bool) -> _Constant:
    """The headers from the settings, folded once for every message of a process and checked
    as a message's are."""
    if not subject.isprintable():
        raise ValueError("the subject must be printable text on one line")
    envelope_sender = ascii_address(sender)
    if needs_smtputf8(envelope_sender):
        raise ValueError("the sender's local part must be ASCII")
    mail_policy = _POLICIES[smtputf8]
    from_, from_line = _fold(mail_policy, "From", str(Address(addr_spec=envelope_sender)))
    _check_one_address(from_, envelope_sender)
    return _Constant(
        envelope_sender=envelope_sender,
        domain=envelope_sender.rpartition("@")[2],
        from_=from_line,
        subject=_fold(mail_policy, "Subject", subject)[1],
        plain_text=_content(mail_policy, "", "7bit").removesuffix(b"\r\n"),
        quoted_printable=_content(mail_policy, "", "quoted-printable").removesuffix(b"\r\n"),
    )


def _check_one_address(header: BaseHeader, expected: str) -> None:
    """Raise ``ValueError`` unless the address header ``header`` holds exactly one address,
    ``expected``."""
    addresses = header.addresses  # type: ignore[attr-defined]  # an AddressHeader
    if len(addresses) != 1 or addresses[0].addr_spec != expected:
        raise ValueError(f"{header.name} would not be exactly the address given")


@functools.lru_cache(maxsize=256)
def _date_line(date: datetime, offset: timedelta | None, smtputf8: bool) -> bytes:
    """The ``Date`` line of ``date`` (to the second): messages accepted within the same second
    share it. ``offset`` (``date``'s) is in the key because an equal time in another zone
    compares equal but is written with its own offset."""
    return _fold(_POLICIES[smtputf8], "Date", format_datetime(date))[1]


def _transfer_encoding(text: str) -> str:
    """``7bit`` for printable ASCII in short lines, else ``quoted-printable`` (7-bit clean,
    exact, and still readable as text)."""
    if _NOT_7BIT.search(text) or any(len(line) > _MAX_7BIT_LINE for line in text.splitlines()):
        return "quoted-printable"
    return "7bit"
