"""The hand-written MIME builder: what the standard library's parser reads back is what was sent."""

from __future__ import annotations

import base64
import binascii
import email
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailwright.domain import mime
from mailwright.domain.addresses import Address, parse_address
from mailwright.domain.html_text import html_to_text
from mailwright.domain.message import Attachment, OutgoingMessage, build_mime, normalise_newlines
from mailwright.domain.mime import TransferEncoding

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
ROUND_TRIP = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def build(message: OutgoingMessage, *, smtputf8: bool = False) -> tuple[bytes, EmailMessage]:
    data = build_mime(message, message_id="<test@example.org>", date=NOW, smtputf8=smtputf8)
    parsed = email.message_from_bytes(data, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return data, parsed


def assert_wire_clean(data: bytes) -> None:
    """CRLF only, ending in CRLF, and no line longer than RFC 5322's 998 octets."""
    assert data.endswith(b"\r\n")
    assert re.search(rb"\r(?!\n)", data) is None
    assert re.search(rb"(?<!\r)\n", data) is None
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


def header_lines(data: bytes, name: str) -> list[bytes]:
    """The physical lines of one top-level header (first line plus its continuations)."""
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    start = next(i for i, line in enumerate(head) if line.lower().startswith(name.lower().encode() + b":"))
    end = start + 1
    while end < len(head) and head[end][:1] in (b" ", b"\t"):
        end += 1
    return head[start:end]


def display_name(data: bytes, name: str) -> str:
    """The display name of a one-mailbox header, decoded by RFC 2047's rules.

    Python's address parser keeps the white space between two encoded words of a
    phrase (RFC 2047 says to drop it), so long names are checked this way.
    """
    unfolded = b" ".join(line.lstrip() for line in header_lines(data, name)).decode("utf-8")
    value = unfolded.split(":", 1)[1].strip()
    phrase = value.rsplit(" <", 1)[0] if value.endswith(">") else ""
    if phrase.startswith('"'):
        return re.sub(r"\\(.)", r"\1", phrase[1:-1])
    return str(make_header(decode_header(phrase))) if phrase else ""


def same_text(got: str, sent: str) -> bool:
    """Equal after newline normalisation; single parts may gain one final line end."""
    got, sent = normalise_newlines(got), normalise_newlines(sent)
    return got in (sent, sent + "\n")


# ---------------------------------------------------------------------------------- strategies

printable = st.characters(exclude_categories=["Cs", "Cc"])
short_text = st.text(alphabet=printable, max_size=40)
long_words = st.builds(
    lambda word, n: " ".join([word] * n),
    st.text(alphabet=printable, min_size=1, max_size=120),
    st.integers(min_value=1, max_value=12),
)
unbroken = st.builds(lambda c, n: c * n, st.sampled_from(["x", "é", "漢", "😀", "="]), st.integers(60, 400))
subjects = short_text | long_words | unbroken
names = (
    short_text | long_words | st.sampled_from(['a "quoted" name', "Doe, John", "back\\slash", "=?x?="])
).map(lambda s: " ".join(s.split()))

line_pieces = st.sampled_from(
    [
        "x" * 1000,
        "é" * 600,
        "ascii line",
        "Grüße, 世界",
        ".",
        "..",
        ".leading dot",
        "From the start",
        "trailing space ",
        "tab\tinside\t",
        "--=_mw_00",
        "=_mw_",
        "--",
        "=3D",
        "\x00\x01\x7f",
        "",
    ]
)
line_breaks = st.sampled_from(["\n", "\r", "\r\n", "\n\n", "\r\r\n"])
structured_bodies = st.lists(st.tuples(line_pieces, line_breaks), max_size=12).map(
    lambda pairs: "".join(piece + brk for piece, brk in pairs)
)
bodies = (
    st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=400)
    | structured_bodies
    | st.builds(lambda c, n: c * n, st.sampled_from(["x", "é", ".", "\r", "\n", " "]), st.integers(990, 3000))
)
filenames = st.text(
    alphabet=st.characters(exclude_categories=["Cs", "Cc"], exclude_characters="/\\"),
    min_size=1,
    max_size=120,
).filter(lambda s: s.strip() == s and s != "")
content_types = st.sampled_from(
    ["", "application/pdf", "image/png", "text/plain", "Application/X-Thing", "not a type", "message/rfc822"]
)
attachments = st.lists(
    st.builds(Attachment, filename=filenames, content=st.binary(max_size=3000), content_type=content_types),
    max_size=3,
)


@dataclass(frozen=True)
class Shape:
    text: str | None
    html: str | None


shapes = st.builds(Shape, text=st.none() | bodies, html=st.none() | bodies)


def mailbox(name: str, addr: str) -> Address:
    return Address(addr=addr, name=name, ascii_addr=addr)


# ---------------------------------------------------------------------------------- round trip


@ROUND_TRIP
@given(subject=subjects, sender=names, recipient=names, shape=shapes, files=attachments)
def test_round_trip_through_the_stdlib_parser(
    subject: str, sender: str, recipient: str, shape: Shape, files: list[Attachment]
) -> None:
    message = OutgoingMessage(
        sender=mailbox(sender, "alice@example.org"),
        to=[mailbox(recipient, "bob@example.net")],
        subject=subject,
        text=shape.text,
        html=shape.html,
        attachments=files,
    )
    data, parsed = build(message)
    assert_wire_clean(data)
    assert data.isascii()
    assert_headers_survive(data, parsed, message)
    assert_structure(parsed, message)
    assert_bodies_survive(parsed, message)
    assert_attachments_survive(parsed, files)


def assert_headers_survive(data: bytes, parsed: EmailMessage, message: OutgoingMessage) -> None:
    assert str(parsed["Subject"]) == message.subject
    assert display_name(data, "From") == message.sender.name
    assert display_name(data, "To") == message.to[0].name
    assert parsed["From"].addresses[0].addr_spec == "alice@example.org"
    assert parsed["To"].addresses[0].addr_spec == "bob@example.net"
    if len(message.sender.name.encode()) <= 45:
        # Python's own parser agrees whenever the name fits one encoded word.
        assert parsed["From"].addresses[0].display_name == message.sender.name
    for name in ("Subject", "From", "To"):
        lines = header_lines(data, name)
        # Folded: encoded words are at most 75 characters, so no line is much over 78.
        assert all(len(line) <= 78 + len(name) for line in lines), lines


def assert_structure(parsed: EmailMessage, message: OutgoingMessage) -> None:
    expected = "text/plain"
    if message.html is not None:
        expected = "multipart/alternative"
    if message.attachments:
        expected = "multipart/mixed"
    assert parsed.get_content_type() == expected
    assert not parsed.defects
    for part in parsed.walk():
        assert not part.defects, part.defects


def assert_bodies_survive(parsed: EmailMessage, message: OutgoingMessage) -> None:
    text = message.text
    if text is None:
        text = html_to_text(normalise_newlines(message.html)) if message.html is not None else ""
    plain = parsed.get_body(preferencelist=("plain",))
    assert plain is not None
    assert same_text(plain.get_content(), text)
    if message.html is not None:
        html = parsed.get_body(preferencelist=("html",))
        assert html is not None
        assert same_text(html.get_content(), message.html)


def assert_attachments_survive(parsed: EmailMessage, files: list[Attachment]) -> None:
    found = list(parsed.iter_attachments())
    assert len(found) == len(files)
    for part, sent in zip(found, files, strict=True):
        assert part.get_filename() == sent.filename
        assert part.get_content_type() == mime.safe_content_type(sent.effective_content_type)
        assert part.get_payload(decode=True) == sent.content


@ROUND_TRIP
@given(
    local=st.sampled_from(["dörte", "bob", "用户"]),
    domain=st.sampled_from(["example.net", "bücher.example"]),
    name=names,
    subject=subjects,
)
def test_smtputf8_addresses_are_written_raw_and_read_back(
    local: str, domain: str, name: str, subject: str
) -> None:
    recipient = parse_address(f"{local}@{domain}", field="to")
    recipient = Address(addr=recipient.addr, name=name, ascii_addr=recipient.ascii_addr)
    message = OutgoingMessage(
        sender=mailbox("Alice", "alice@example.org"), to=[recipient], subject=subject, text="hi"
    )
    data, _ = build(message, smtputf8=True)
    assert_wire_clean(data)
    # The bytes parser reads header bytes as ASCII; with SMTPUTF8 they are UTF-8.
    parsed = email.message_from_string(data.decode("utf-8"), policy=policy.default)
    assert parsed["To"].addresses[0].addr_spec == recipient.addr
    assert display_name(data, "To") == name
    assert str(parsed["Subject"]) == subject
    # Only addresses may use raw UTF-8; everything else stays ASCII.
    body = data.split(b"\r\n\r\n", 1)[1]
    assert body.isascii()


# ---------------------------------------------------------------------------------- pieces


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain ascii\n", TransferEncoding.SEVEN_BIT),
        ("x" * 998, TransferEncoding.SEVEN_BIT),
        ("x" * 999, TransferEncoding.QUOTED_PRINTABLE),
        ("mostly ascii, ein ü\n" * 20, TransferEncoding.QUOTED_PRINTABLE),
        ("a NUL \x00 is not 7bit", TransferEncoding.QUOTED_PRINTABLE),
        ("ほとんど日本語のテキスト\n" * 10, TransferEncoding.BASE64),
    ],
)
def test_transfer_encoding_choice(text: str, expected: TransferEncoding) -> None:
    assert mime.choose_text_encoding(text.encode()) is expected


def test_text_is_normalised_to_crlf_and_dots_are_left_to_the_transport() -> None:
    encoding, body = mime.encode_text("a\rb\nc\r\n.\r\n..d")
    assert encoding is TransferEncoding.SEVEN_BIT
    assert body == b"a\r\nb\r\nc\r\n.\r\n..d"


@given(data=st.binary(max_size=5000))
@settings(max_examples=100, deadline=None)
def test_base64_lines(data: bytes) -> None:
    encoded = mime.encode_base64(data)
    lines = encoded.split(b"\r\n")
    assert all(len(line) == 76 for line in lines[:-1]) and len(lines[-1]) <= 76
    assert base64.b64decode(b"".join(lines)) == data
    assert encoded == base64.encodebytes(data).rstrip(b"\n").replace(b"\n", b"\r\n")


@pytest.mark.parametrize("size", [0, 1, 56, 57, 58, 7295, 7296, 7297, 30 * 1024])
def test_base64_lines_around_block_sizes(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    assert mime.encode_base64(data) == base64.encodebytes(data).rstrip(b"\n").replace(b"\n", b"\r\n")


@given(text=bodies)
@settings(max_examples=100, deadline=None)
def test_quoted_printable_and_base64_bodies_decode_back(text: str) -> None:
    encoding, body = mime.encode_text(text)
    expected = normalise_newlines(text).encode().replace(b"\n", b"\r\n")
    if encoding is TransferEncoding.QUOTED_PRINTABLE:
        assert binascii.a2b_qp(body) == expected
    elif encoding is TransferEncoding.BASE64:
        assert base64.b64decode(body) == expected.replace(b"\r\n", b"\n")
    else:
        assert body == expected


def test_boundary_never_occurs_in_verbatim_content(monkeypatch: pytest.MonkeyPatch) -> None:
    offered = iter(["=_mw_clash", "=_mw_fresh"])
    monkeypatch.setattr(mime, "new_boundary", lambda: next(offered))
    part = mime.text_entity("text quoting --=_mw_clash in a line", subtype="plain")
    entity = mime.multipart_entity("mixed", [part])
    assert b'boundary="=_mw_fresh"' in entity.headers


def test_boundaries_are_random() -> None:
    assert len({mime.new_boundary() for _ in range(100)}) == 100


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("report.pdf", 'Content-Disposition: attachment; filename="report.pdf"\r\n'),
        ('say "hi".txt', 'Content-Disposition: attachment; filename="say \\"hi\\".txt"\r\n'),
        (
            "Ärger.pdf",
            "Content-Disposition: attachment;\r\n filename*=utf-8''%C3%84rger.pdf;\r\n"
            ' filename="Arger.pdf"\r\n',
        ),
    ],
)
def test_content_disposition(filename: str, expected: str) -> None:
    assert mime.content_disposition(filename) == expected


def test_long_filenames_use_rfc2231_sections_within_78_characters() -> None:
    name = "Übersicht der Quartalszahlen für das Geschäftsjahr 2026 — endgültige Fassung 文件.xlsx"
    header = mime.content_disposition(name)
    lines = header.removesuffix("\r\n").split("\r\n")
    assert all(len(line) <= 78 for line in lines), lines
    assert "filename*0*=utf-8''" in header and "filename*2*=" in header
    assert lines[-1].startswith(' filename="') and lines[-1].endswith('.xlsx"')
    part = email.message_from_string(f"{header}\r\n", policy=policy.default)
    assert part.get_filename() == name


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("Ärger über Gebühren.pdf", "Arger uber Gebuhren.pdf"),
        ("文件.pdf", "attachment.pdf"),
        ("文件", "attachment"),
        ('a"b\\c.txt', "a_b_c.txt"),
        ("=?utf-8?q?x?=.txt", "=_utf-8?q?x?=.txt"),
        ("x" * 100 + ".tar", "x" * 60 + ".tar"),
    ],
)
def test_ascii_fallback(filename: str, expected: str) -> None:
    assert mime.ascii_fallback(filename) == expected


@pytest.mark.parametrize(
    ("given_type", "expected"),
    [
        ("application/pdf", "application/pdf"),
        ("Image/PNG", "image/png"),
        ("text/plain; charset=x", "application/octet-stream"),
        ("tëxt/plain", "application/octet-stream"),
        ("multipart/mixed", "application/octet-stream"),
        ("message/rfc822", "application/octet-stream"),
        ("", "application/octet-stream"),
    ],
)
def test_safe_content_type(given_type: str, expected: str) -> None:
    assert mime.safe_content_type(given_type) == expected


def test_shapes() -> None:
    sender = mailbox("", "alice@example.org")
    only_text = OutgoingMessage(sender=sender, to=[sender], text="hi")
    data, parsed = build(only_text)
    assert parsed.get_content_type() == "text/plain"
    assert parsed["Content-Transfer-Encoding"] == "7bit"
    assert data.endswith(b"\r\n\r\nhi\r\n")
    empty = OutgoingMessage(sender=sender, to=[sender])
    _, parsed = build(empty)
    assert parsed.get_content_type() == "text/plain" and parsed.get_content() == ""
    mixed = OutgoingMessage(
        sender=sender, to=[sender], text="hi", attachments=[Attachment("a.bin", b"\x00\xff")]
    )
    _, parsed = build(mixed)
    assert [p.get_content_type() for p in parsed.walk()] == [
        "multipart/mixed",
        "text/plain",
        "application/octet-stream",
    ]
