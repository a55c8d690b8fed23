from __future__ import annotations

import email
import re
from datetime import UTC, datetime
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailwright.domain.addresses import Address, parse_address, parse_address_list
from mailwright.domain.message import (
    Attachment,
    Importance,
    OutgoingMessage,
    build_mime,
    check_header,
    check_message_id,
    make_message_id,
    normalise_newlines,
)
from mailwright.errors import ValidationError

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
SENDER = parse_address("Alice <alice@example.org>", field="from")


def build(message: OutgoingMessage, *, smtputf8: bool = False) -> tuple[bytes, EmailMessage]:
    data = build_mime(message, message_id=make_message_id("example.org"), date=NOW, smtputf8=smtputf8)
    parsed = email.message_from_bytes(data, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return data, parsed


def assert_wire_clean(data: bytes) -> None:
    """CRLF only, and no line longer than RFC 5322's 998 octets."""
    assert b"\r\n" in data
    assert re.search(rb"\r(?!\n)", data) is None
    assert re.search(rb"(?<!\r)\n", data) is None
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


def rfc2047_display_name(data: bytes) -> str:
    """The From display name decoded by RFC 2047's rules (white space between words ignored)."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    unfolded = re.sub(r"\r\n[ \t]", " ", head)
    (line,) = [h for h in unfolded.split("\r\n") if h.startswith("From: ")]
    phrase = line[len("From: ") :].rsplit(" <", 1)[0] if line.endswith(">") else ""
    if phrase.startswith('"'):
        return re.sub(r"\\(.)", r"\1", phrase[1:-1])
    return str(make_header(decode_header(phrase))) if phrase else ""


def test_required_headers_present() -> None:
    message = OutgoingMessage(
        sender=SENDER, to=parse_address_list("bob@example.net", field="to"), subject="Hi"
    )
    data, parsed = build(message)
    for header in ("Date", "From", "To", "Subject", "Message-ID", "MIME-Version"):
        assert parsed[header], header
    assert parsed["Message-ID"].endswith("@example.org>")
    assert_wire_clean(data)


def test_bcc_is_never_in_headers_but_is_a_recipient() -> None:
    message = OutgoingMessage(
        sender=SENDER,
        to=parse_address_list("bob@example.net", field="to"),
        bcc=parse_address_list("secret@example.net", field="bcc"),
    )
    data, parsed = build(message)
    assert b"secret@example.net" not in data
    assert parsed["Bcc"] is None
    assert [a.addr for a in message.recipients()] == ["bob@example.net", "secret@example.net"]


def test_bcc_only_gets_undisclosed_recipients() -> None:
    message = OutgoingMessage(sender=SENDER, to=[], bcc=parse_address_list("x@example.net", field="bcc"))
    _, parsed = build(message)
    assert "undisclosed-recipients" in str(parsed["To"])


def test_text_and_html_make_alternative_with_attachment_mixed() -> None:
    message = OutgoingMessage(
        sender=SENDER,
        to=parse_address_list("bob@example.net", field="to"),
        text="plain",
        html="<p>rich</p>",
        attachments=[Attachment("report.pdf", b"%PDF-1.4 binary \x00\xff")],
    )
    _, parsed = build(message)
    assert parsed.get_content_type() == "multipart/mixed"
    body = parsed.get_body(preferencelist=("plain",))
    assert body is not None and body.get_content().strip() == "plain"
    html = parsed.get_body(preferencelist=("html",))
    assert html is not None and "<p>rich</p>" in html.get_content()
    (attachment,) = list(parsed.iter_attachments())
    assert attachment.get_filename() == "report.pdf"
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content() == b"%PDF-1.4 binary \x00\xff"


def test_html_only_gets_a_derived_text_part() -> None:
    message = OutgoingMessage(
        sender=SENDER,
        to=parse_address_list("bob@example.net", field="to"),
        html="<h1>Title</h1><p>Hello <a href='https://example.org/x'>there</a></p><script>bad()</script>",
    )
    _, parsed = build(message)
    assert parsed.get_content_type() == "multipart/alternative"
    text = parsed.get_body(preferencelist=("plain",))
    assert text is not None
    content = text.get_content()
    assert "Title" in content and "there (https://example.org/x)" in content
    assert "bad()" not in content


def test_threading_and_importance_headers() -> None:
    message = OutgoingMessage(
        sender=SENDER,
        to=parse_address_list("bob@example.net", field="to"),
        reply_to=parse_address_list("help@example.org", field="reply_to"),
        in_reply_to="<a@example.org>",
        references=["<a@example.org>", "<b@example.org>"],
        importance=Importance.HIGH,
        headers=[("X-Ticket", "1234")],
    )
    _, parsed = build(message)
    assert parsed["In-Reply-To"] == "<a@example.org>"
    assert parsed["References"] == "<a@example.org> <b@example.org>"
    assert parsed["Importance"] == "High"
    assert parsed["X-Priority"].startswith("1")
    assert parsed["Reply-To"] == "help@example.org"
    assert parsed["X-Ticket"] == "1234"


def test_unicode_local_part_without_smtputf8_becomes_a_named_group() -> None:
    message = OutgoingMessage(
        sender=SENDER, to=parse_address_list("dörte@example.net, bob@example.net", field="to")
    )
    data, parsed = build(message, smtputf8=False)
    assert data.isascii()
    assert "bob@example.net" in str(parsed["To"])
    data_utf8, parsed_utf8 = build(message, smtputf8=True)
    assert "dörte@example.net" in str(parsed_utf8["To"])
    assert "dörte@example.net".encode() in data_utf8


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Ok", "a\r\nBcc: evil@x.org"),
        ("Bad Name", "v"),
        ("X:Colon", "v"),
        ("From", "x@y.org"),
        ("bcc", "x"),
    ],
)
def test_custom_headers_cannot_inject_or_override(name: str, value: str) -> None:
    with pytest.raises(ValidationError):
        check_header(name, value)


def test_message_id_forms() -> None:
    assert check_message_id("abc@example.org", field="in_reply_to") == "<abc@example.org>"
    with pytest.raises(ValidationError):
        check_message_id("<no-at-sign>", field="in_reply_to")
    with pytest.raises(ValidationError):
        check_message_id("<a@b>\r\nBcc: x@y", field="in_reply_to")


def test_newlines_normalised() -> None:
    assert normalise_newlines("a\rb\nc\r\nd") == "a\nb\nc\nd"


names = st.text(alphabet=st.characters(exclude_categories=["Cs", "Cc"]), min_size=0, max_size=40).map(
    str.strip
)
bodies = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=400) | st.builds(
    lambda n, c: c * n,
    st.integers(min_value=990, max_value=3000),
    st.sampled_from(["x", "é", ".", "\r", "\n"]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    subject=names,
    display=names,
    text=bodies,
    blob=st.binary(max_size=4000),
    filename=st.text(
        alphabet=st.characters(exclude_categories=["Cs", "Cc"], exclude_characters='/\\"'),
        min_size=1,
        max_size=30,
    ).filter(lambda s: s.strip() != ""),
)
def test_round_trip_through_the_stdlib_parser(
    subject: str, display: str, text: str, blob: bytes, filename: str
) -> None:
    display = " ".join(display.split())
    sender = Address(addr="alice@example.org", name=display, ascii_addr="alice@example.org")
    message = OutgoingMessage(
        sender=sender,
        to=parse_address_list("bob@example.net", field="to"),
        subject=subject,
        text=text,
        attachments=[Attachment(filename.strip(), blob)],
    )
    data, parsed = build(message)
    assert_wire_clean(data)
    assert data.isascii()
    assert str(parsed["Subject"]) == subject
    assert rfc2047_display_name(data) == display
    if len(display.encode()) <= 45:
        # Python's own parser agrees whenever the name fits one encoded word.
        assert parsed["From"].addresses[0].display_name == display
    assert parsed["From"].addresses[0].addr_spec == "alice@example.org"
    body = parsed.get_body(preferencelist=("plain",))
    assert body is not None
    got = body.get_content()
    assert normalise_newlines(got).rstrip("\n") == normalise_newlines(text).rstrip("\n")
    (attachment,) = list(parsed.iter_attachments())
    assert attachment.get_content() == blob
    assert attachment.get_filename() == filename.strip()


def test_long_words_fold_but_message_ids_stay_verbatim() -> None:
    long_id = f"<{'a' * 90}@example.org>"
    message = OutgoingMessage(
        sender=SENDER,
        to=parse_address_list("bob@example.net", field="to"),
        subject="see " + "x" * 200,
        references=[long_id, "<b@example.org>"],
        headers=[("X-Token", "t" * 1200)],
    )
    data, parsed = build(message)
    assert_wire_clean(data)
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    # Words too long for a line become encoded words, which fold anywhere.
    assert max(len(line) for line in head if long_id.encode() not in line) <= 100
    assert str(parsed["Subject"]) == "see " + "x" * 200
    assert str(parsed["X-Token"]) == "t" * 1200
    # Message IDs are never encoded: References folds only between them.
    assert f"References: {long_id}\r\n <b@example.org>\r\n".encode() in data


def test_a_non_ascii_message_id_is_refused_with_its_field() -> None:
    from mailwright.domain.message import check_message_id

    with pytest.raises(ValidationError, match=r"in_reply_to: .* must be ASCII"):
        check_message_id("<idé@example.org>", field="in_reply_to")
