"""The email of a notification, built with the standard library: pure, no I/O.

One ``email.message.EmailMessage`` per notification (policy ``email.policy.SMTP``, or its
``SMTPUTF8`` twin when the recipient's local part is not ASCII), with exactly these headers:
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

import functools
import re
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address, BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import format_datetime

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
    domains; ``smtputf8`` says whether the server must offer SMTPUTF8 to take it."""

    notification_id: str
    sender: str
    recipient: str
    message: EmailMessage

    @property
    def smtputf8(self) -> bool:
        return needs_smtputf8(self.recipient)

    def as_bytes(self) -> bytes:
        """The message as sent after ``DATA``: CRLF line ends, before SMTP's dot-stuffing."""
        return self.message.as_bytes()


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
    naming the problem for an invalid id, address, subject or date (never for a message)."""
    if not _ID.fullmatch(notification_id):
        raise ValueError("a notification id must be letters, digits, '.', '_' or '-'")
    if date.tzinfo is None or date.utcoffset() is None:
        raise ValueError("the date must be timezone-aware")
    recipient = ascii_address(email)
    smtputf8 = needs_smtputf8(recipient)
    constant = _constant_headers(sender, subject, smtputf8)
    mail_policy = _POLICIES[smtputf8]
    make = mail_policy.header_factory

    mail = EmailMessage(policy=mail_policy)
    mail["From"] = constant.from_
    mail["To"] = recipient  # validated above; checked below to be exactly one address
    mail["Subject"] = constant.subject
    mail["Date"] = _date_header(format_datetime(date), smtputf8)
    mail["Message-ID"] = make("Message-ID", f"<{notification_id}@{constant.domain}>")
    mail["X-Notification-Id"] = make("X-Notification-Id", notification_id)
    _check_one_address(mail["To"], recipient)
    if _transfer_encoding(message) == "7bit":
        # What ``set_content(message, charset="utf-8", cte="7bit")`` makes (the tests compare
        # the bytes), with its three headers parsed once per process rather than per message.
        for header in constant.plain_text:
            mail[header.name] = header
        mail.set_payload("\n".join(message.splitlines()) + "\n")
    else:
        mail.set_content(message, charset="utf-8", cte="quoted-printable")
    return Mail(notification_id, constant.envelope_sender, recipient, mail)


class _HeaderClasses(HeaderRegistry):
    """The standard ``HeaderRegistry``, building each header name's class once: the standard
    one builds a new class for every header it makes (``__getitem__``), a third of the cost of
    a message. The classes, and so the headers, are the standard ones."""

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        made = self._classes.get(key)
        if made is None:
            made = self._classes[key] = super().__getitem__(name)
        return made


_SHARED_HEADERS = frozenset(
    {"from", "subject", "date", "content-type", "content-transfer-encoding", "mime-version"}
)
_ONE_TOKEN = {
    "to": re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+"),
    "message-id": re.compile(r"<[A-Za-z0-9._-]+@[A-Za-z0-9.-]+>"),
    "x-notification-id": _ID,
}
"""The values of a message's own headers that the policy writes out as they are when they fit
on the line: a plain ASCII address, message id or notification id, with nothing to quote,
encode or fold."""
_FOLDED: dict[tuple[bool, str, int | None, str, str], bytes] = {}
_FOLDED_MAX = 1024


class _SmtpPolicy(EmailPolicy):
    """``EmailPolicy`` that folds each value of the headers messages share (``From`` and
    ``Subject`` from the settings, ``Date`` to the second, the MIME headers) once rather than
    once per message, and writes a message's own plain one-token headers (``To``,
    ``Message-ID``, ``X-Notification-Id``) as they are when they fit on a line: folding is the
    dearest part of writing a message out. The bytes are the policy's own (``fold_binary`` is
    the documented hook; the tests compare)."""

    def fold_binary(self, name: str, value: str) -> bytes:
        lower, text = name.lower(), str(value)
        if lower in _SHARED_HEADERS:
            key = (self.utf8, self.linesep, self.max_line_length, name, text)
            folded = _FOLDED.get(key)
            if folded is None:
                if len(_FOLDED) >= _FOLDED_MAX:  # a year of distinct Dates is not kept
                    _FOLDED.clear()
                folded = _FOLDED[key] = super().fold_binary(name, value)
            return folded
        token, limit = _ONE_TOKEN.get(lower), self.max_line_length
        fits = not limit or len(name) + 2 + len(text) <= limit
        if token is not None and fits and token.fullmatch(text):
            # What the policy's fold of such a value comes to, without parsing it again.
            return f"{getattr(value, 'name', name)}: {text}{self.linesep}".encode("ascii")
        return super().fold_binary(name, value)


_HEADERS = _HeaderClasses()
_SMTP = _SmtpPolicy(linesep="\r\n", header_factory=_HEADERS)
_POLICIES = {False: _SMTP, True: _SMTP.clone(utf8=True)}
"""``email.policy.SMTP`` (or ``SMTPUTF8`` for a non-ASCII local part: the same with
``utf8``), with the header factory and the folding above: the same parsing, folding and
checks (``header_factory`` is a documented setting, ``fold_binary`` a documented method)."""


@dataclass(frozen=True, slots=True)
class _Constant:
    """What every message of a process shares (the settings' sender and subject)."""

    envelope_sender: str
    domain: str
    from_: BaseHeader
    subject: BaseHeader
    plain_text: tuple[BaseHeader, ...]
    """``Content-Type``, ``Content-Transfer-Encoding`` and ``MIME-Version`` of a 7bit body."""


@functools.lru_cache(maxsize=8)
def _constant_headers(sender: str, subject: str, smtputf8: bool) -> _Constant:
    """The headers from the settings, parsed once for every message of a process and checked
    as a message's are. A header object set on a message is kept as it is
    (``EmailPolicy.header_store_parse``, documented)."""
    if not subject.isprintable():
        raise ValueError("the subject must be printable text on one line")
    envelope_sender = ascii_address(sender)
    if needs_smtputf8(envelope_sender):
        raise ValueError("the sender's local part must be ASCII")
    make = _POLICIES[smtputf8].header_factory
    from_ = make("From", str(Address(addr_spec=envelope_sender)))
    _check_one_address(from_, envelope_sender)
    return _Constant(
        envelope_sender=envelope_sender,
        domain=envelope_sender.rpartition("@")[2],
        from_=from_,
        subject=make("Subject", subject),
        plain_text=(
            make("Content-Type", 'text/plain; charset="utf-8"'),
            make("Content-Transfer-Encoding", "7bit"),
            make("MIME-Version", "1.0"),
        ),
    )


def _check_one_address(header: BaseHeader, expected: str) -> None:
    """Raise ``ValueError`` unless the address header ``header`` holds exactly one address,
    ``expected``."""
    addresses = header.addresses  # type: ignore[attr-defined]  # an AddressHeader
    if len(addresses) != 1 or addresses[0].addr_spec != expected:
        raise ValueError(f"{header.name} would not be exactly the address given")


@functools.lru_cache(maxsize=256)
def _date_header(date: str, smtputf8: bool) -> BaseHeader:
    """A ``Date`` header: messages accepted within the same second share it."""
    header: BaseHeader = _POLICIES[smtputf8].header_factory("Date", date)
    return header


def _transfer_encoding(text: str) -> str:
    """``7bit`` for printable ASCII in short lines, else ``quoted-printable`` (7-bit clean,
    exact, and still readable as text)."""
    if _NOT_7BIT.search(text) or any(len(line) > _MAX_7BIT_LINE for line in text.splitlines()):
        return "quoted-printable"
    return "7bit"
