"""service/mail.py: one email per notification, and no request input can add or change a
header (the email and the message are the request's)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email import message_from_bytes, message_from_string, policy
from email.message import EmailMessage
from typing import Any

import pytest

from service.channels.email.message import Mail, ascii_address, build_mail, needs_smtputf8

ID = "0b9e0f5c-1f8e-4a51-9d5e-4c1b2a3d4e5f"
SENDER = "notify@example.com"
WHEN = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
HEADERS = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "X-Notification-Id",
    "Content-Type",
    "Content-Transfer-Encoding",
    "MIME-Version",
]

# Messages that try to end the headers, add one, or break the body's encoding.
MESSAGES = [
    "some notification",
    "",
    "line one\nline two",
    "cr\ralone",
    "crlf\r\nline",
    "\r\nBcc: x@evil",
    "x\r\nBcc: x@evil\r\n\r\nbody",
    "Bcc: x@evil\nTo: y@evil\n\nbody after fake headers",
    "Subject: forged\r\nX-Notification-Id: forged\r\n\r\n",
    "Content-Type: text/html\n\n<b>html?</b>",
    "line\u2028separator and paragraph\u2029separator",
    "next line\x85(NEL)",
    "nul\x00byte",
    "bell\x07, escape\x1b[31m, delete\x7f, vertical tab\x0b, form feed\x0c",
    "tab\tand trailing spaces   ",
    "x" * 5000,
    ("y" * 997 + "\n") * 3,
    "=?utf-8?q?encoded=2Dword?= and =41 and a lone =",
    "\n.\n..\n.hidden\n",
    "ünïcödé, 中文, emoji 🎉, right-to-left \u202eevil",
    "\ufeffbyte order mark, zero\u200bwidth",
    "trailing newline\n",
    "\n\n\n",
    "From the start of a line\n>From quoted",
    "\n",
    " leading space\r\n\r\n",
    "x" * 78 + "\n" + "y" * 78,
]

# Addresses that must be refused: they are not one plain address.
BAD_EMAILS = [
    "ada@example.com\r\nBcc: x@evil",
    "ada@example.com\nBcc: x@evil",
    "ada@example.com\rBcc: x@evil",
    "ada@example.com\r\n",
    "ada@example.com\u2028",
    "ada@example.com\x85",
    "ada\x00@example.com",
    "ada@example.com\x00",
    "ada@example.com, eve@example.com",
    "ada@example.com; eve@example.com",
    "Ada <ada@example.com>",
    "<ada@example.com>",
    "ada@example.com (comment)",
    '"ada\r\nBcc: x"@example.com',
    "ada@[127.0.0.1]",
    "ada@example.com>\r\nRCPT TO:<eve@example.com",
    "ada",
    "",
    "ada@" + "d" * 300 + ".com",
]


def parse(mail: Mail) -> EmailMessage:
    """The message as a receiver reads it from the bytes sent (UTF-8 headers with SMTPUTF8)."""
    data = mail.as_bytes()
    if mail.smtputf8:
        return message_from_string(data.decode(), policy=policy.default)
    return message_from_bytes(data, policy=policy.default)


def as_read(message: str) -> str:
    """What a reader gets back: every line break (CRLF, CR, LF) as LF, one LF at the end."""
    lines = re.split(r"\r\n|\r|\n", message)
    if lines[-1] == "":  # a final line break ends the last line
        lines.pop()
    return "".join(line + "\n" for line in lines) or "\n"


def body_of(parsed: EmailMessage) -> str:
    content = parsed.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def mail(
    email: str = "ada@example.com",
    message: str = "hi",
    *,
    sender: str = SENDER,
    subject: str = "Notification",
    date: datetime = WHEN,
) -> Mail:
    return build_mail(ID, email, message, sender=sender, subject=subject, date=date)


def test_the_message_has_exactly_the_expected_headers() -> None:
    built = mail(message="build finished")
    parsed = parse(built)
    assert parsed.keys() == HEADERS
    assert str(parsed["From"]) == SENDER
    assert str(parsed["To"]) == "ada@example.com"
    assert str(parsed["Subject"]) == "Notification"
    assert parsed["Date"].datetime == WHEN
    assert str(parsed["Message-ID"]) == f"<{ID}@example.com>"
    assert str(parsed["X-Notification-Id"]) == ID
    assert parsed.get_content_type() == "text/plain"
    assert parsed.get_content_charset() == "utf-8"
    assert body_of(parsed) == "build finished\n"
    assert (built.sender, built.recipient, built.notification_id) == (SENDER, "ada@example.com", ID)
    assert built.as_bytes().count(b"\r\n\r\n") >= 1
    assert b"\n" not in built.as_bytes().replace(b"\r\n", b"")  # CRLF only, as SMTP wants


@pytest.mark.parametrize("message", MESSAGES)
def test_no_message_adds_or_changes_a_header(message: str) -> None:
    """Whatever the message, the headers are the expected ones, and the body round-trips."""
    built = mail(message=message)
    data = built.as_bytes()
    parsed = parse(built)
    assert parsed.keys() == HEADERS
    assert parsed.defects == []
    assert [address.addr_spec for address in parsed["To"].addresses] == ["ada@example.com"]
    assert parsed.get_all("Bcc") is None
    assert str(parsed["Subject"]) == "Notification"
    assert str(parsed["X-Notification-Id"]) == ID
    assert body_of(parsed) == as_read(message)
    # 7-bit clean, lines within SMTP's limit, no bare CR or LF: nothing for a relay to mend.
    assert data.isascii()
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    assert b"\x00" not in data
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", data) is None


@pytest.mark.parametrize("email", BAD_EMAILS)
def test_an_address_that_is_not_one_plain_address_is_refused(email: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each refusal has its own message
        mail(email=email)


@pytest.mark.parametrize(
    "email",
    [
        "o'brien+tag@example.com",
        "x!#$%&'*+/=?^_`{|}~-y@example.com",
        "first.last@sub.example.co.uk",
        "UPPER@EXAMPLE.COM",
    ],
)
def test_unusual_but_valid_addresses_go_through_unchanged(email: str) -> None:
    built = mail(email=email)
    expected = ascii_address(email)
    assert built.recipient == expected
    assert [a.addr_spec for a in parse(built)["To"].addresses] == [expected]
    assert parse(built).keys() == HEADERS


def test_an_internationalised_domain_goes_as_idna() -> None:
    built = mail(email="a@bücher.de")
    assert built.recipient == "a@xn--bcher-kva.de"
    assert not built.smtputf8
    assert str(parse(built)["To"]) == "a@xn--bcher-kva.de"
    assert built.as_bytes().isascii()
    assert ascii_address("a@BÜCHER.de") == "a@xn--bcher-kva.de"
    assert ascii_address("a@xn--bcher-kva.de") == "a@xn--bcher-kva.de"


def test_a_non_ascii_local_part_needs_smtputf8() -> None:
    built = mail(email="jörg@bücher.de", message="grüße")
    assert built.recipient == "jörg@xn--bcher-kva.de"
    assert built.smtputf8
    parsed = parse(built)
    assert [a.addr_spec for a in parsed["To"].addresses] == ["jörg@xn--bcher-kva.de"]
    assert parsed.keys() == HEADERS
    assert body_of(parsed) == "grüße\n"
    assert needs_smtputf8("jörg@example.com")
    assert not needs_smtputf8("a@bücher.de")
    assert not needs_smtputf8("ada@example.com")


def test_the_message_id_takes_the_domain_of_from() -> None:
    built = mail(sender="noreply@bücher.de")
    parsed = parse(built)
    assert str(parsed["Message-ID"]) == f"<{ID}@xn--bcher-kva.de>"
    assert str(parsed["From"]) == "noreply@xn--bcher-kva.de"
    assert built.sender == "noreply@xn--bcher-kva.de"


def test_a_long_or_non_ascii_subject_is_folded_and_encoded_not_split() -> None:
    subject = "Benachrichtigung über " + "sehr " * 40 + "lange Dinge"
    parsed = parse(mail(subject=subject))
    assert str(parsed["Subject"]) == subject
    assert parsed.keys() == HEADERS


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"subject": "Notification\r\nBcc: x@evil"}, "subject"),
        ({"subject": "Notification\n"}, "subject"),
        ({"subject": "Notification\u2028"}, "subject"),
        # An RFC 2047 word decodes to CR LF (no request can give one: the API refuses it)
        ({"subject": "=?utf-8?q?Invoice=0D=0ABcc:_x@evil.example?="}, "not be one header"),
        ({"sender": "notify@example.com\r\nBcc: x@evil"}, "@-sign"),
        ({"sender": "jörg@example.com"}, "sender"),
        ({"date": datetime(2026, 11, 24, 8, 0)}, "timezone"),
    ],
)
def test_configured_values_are_checked_too(overrides: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        mail(**overrides)


@pytest.mark.parametrize("bad_id", ["", "a b", "a@b", "a>b", "a\r\nBcc: x", "<x>", "-x", "x" * 200])
def test_an_id_that_could_break_a_header_is_refused(bad_id: str) -> None:
    with pytest.raises(ValueError, match="notification id"):
        build_mail(bad_id, "ada@example.com", "hi", sender=SENDER, subject="s", date=WHEN)


def test_plain_short_ascii_goes_7bit_and_anything_else_quoted_printable() -> None:
    assert parse(mail(message="plain text\nshort lines"))["Content-Transfer-Encoding"] == "7bit"
    for message in ("ü", "x" * 79, "nul\x00", "\x1b[31m"):
        encoding = parse(mail(message=message))["Content-Transfer-Encoding"]
        assert encoding == "quoted-printable", message


def reference_mail(email: str, message: str, *, subject: str = "Notification") -> bytes:
    """The same message built the plain way: every header a string parsed by the standard
    ``email.policy.SMTP`` (``SMTPUTF8`` for a non-ASCII local part), the body by
    ``set_content``."""
    recipient = ascii_address(email)
    smtputf8 = needs_smtputf8(recipient)
    plain = EmailMessage(policy=policy.SMTPUTF8 if smtputf8 else policy.SMTP)
    plain["From"] = SENDER
    plain["To"] = recipient
    plain["Subject"] = subject
    plain["Date"] = "Tue, 24 Nov 2026 08:00:00 +0000"
    plain["Message-ID"] = f"<{ID}@example.com>"
    plain["X-Notification-Id"] = ID
    cte = "quoted-printable" if re.search(r"[^\t\n\r\x20-\x7e]|[^\r\n]{79}", message) else "7bit"
    plain.set_content(message, charset="utf-8", cte=cte)
    return plain.as_bytes()


RECIPIENTS = (
    "ada@example.com",
    "ada@bücher.de",
    "ädä@example.com",
    "o'brien+tag@example.com",
    "x!#$%&'*+/=?^_`{|}~-y@example.com",
    f"{'a' * 60}@{'b' * 40}.example.com",  # too long for one line: folded by the policy
)


def assert_same_mail(built: bytes, reference: bytes) -> None:
    """``built`` is ``reference`` byte for byte, but for a quoted-printable body, which is
    encoded in lines of at most 76 characters (RFC 2045; ``set_content`` writes 78): then the
    headers are the same bytes and the body decodes to the same text."""
    head, _, body = built.partition(b"\r\n\r\n")
    reference_head, _, reference_body = reference.partition(b"\r\n\r\n")
    assert head == reference_head
    if b"Content-Transfer-Encoding: quoted-printable" not in head:
        assert body == reference_body
        return
    assert all(len(line) <= 76 for line in body.split(b"\r\n"))
    assert body.endswith(b"\r\n")
    assert b"\n" not in body.replace(b"\r\n", b"")
    decoded = message_from_bytes(built, policy=policy.default)
    expected = message_from_bytes(reference, policy=policy.default)
    assert body_of(decoded) == body_of(expected)


@pytest.mark.parametrize("message", MESSAGES)
def test_the_bytes_are_those_of_the_plain_standard_library_way(message: str) -> None:
    """Headers folded once per process, and a body written without ``set_content``, change
    nothing in what is sent."""
    for email in RECIPIENTS:
        assert_same_mail(mail(email, message).as_bytes(), reference_mail(email, message))
    subject = ("Réunion: ünïcödé subject, long enough to be folded by the policy, " * 2).strip()
    assert_same_mail(
        mail(message=message, subject=subject).as_bytes(),
        reference_mail("ada@example.com", message, subject=subject),
    )
