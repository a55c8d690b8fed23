"""Messages from the hand-written MIME builder, through Postfix into Dovecot and back over IMAP.

Dovecot must store the very bytes we built, and its own parser (ENVELOPE and
BODYSTRUCTURE) must agree with ours on the subject, names, structure and filenames.
"""

from __future__ import annotations

import email
import imaplib
import re
import smtplib
import urllib.parse
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from typing import Any, TypeAlias

import pytest

from mailwright.domain.addresses import Address
from mailwright.domain.html_text import html_to_text
from mailwright.domain.message import Attachment, OutgoingMessage, build_mime, normalise_newlines
from mailwright.domain.mime import safe_content_type
from tests.support.mailstack import MailStack

IMAPValue: TypeAlias = str | list["IMAPValue"] | None

PDF = b"%PDF-1.7\n" + bytes(range(256)) * 40 + b"\r\n.\r\n\x00\r\r\n"
LONG_NAME = "Übersicht der Quartalszahlen für das Geschäftsjahr 2026 — endgültige Fassung 文件.pdf"


@dataclass(frozen=True)
class Case:
    subject: str
    sender: Address
    text: str | None = None
    html: str | None = None
    attachments: list[Attachment] = field(default_factory=list)
    smtputf8: bool = False


def ascii_mailbox(name: str, addr: str) -> Address:
    return Address(addr=addr, name=name, ascii_addr=addr)


ALICE = ascii_mailbox("Zoë Ångström-Łukasiewicz", "alice@example.org")
CASES = {
    "unicode-subject-long-lines": Case(
        subject="Grüße aus Köln: der Quartalsbericht ist fertig, bitte prüfen 📈 " * 3,
        sender=ALICE,
        text=("x" * 1500 + "\r\n.\n..\r.leading dot\nend é\n") * 3 + "trailing space \n=3D\n--=_mw_x\n",
    ),
    "html-and-text": Case(
        subject="Weekly report",
        sender=ascii_mailbox('Reports "Bot", Inc.', "reports@example.org"),
        text="Totals are up.\n.\nSee the attachment.",
        html="<p>Totals are <b>up</b>.</p>\n.\n<p>" + "wide " * 300 + "</p>",
    ),
    "binary-attachments": Case(
        subject="Files",
        sender=ALICE,
        text="Two files.",
        attachments=[
            Attachment(LONG_NAME, PDF),
            Attachment("data.bin", bytes(range(256)) * 200, "application/x-custom"),
        ],
    ),
    "html-only-non-latin": Case(
        subject="日本語の件名とても長い件名がここに続きます、折り返しが必要です" * 2,
        sender=ascii_mailbox("山田太郎", "taro@example.org"),
        html="<h1>こんにちは</h1><p>" + "日本語の本文です。" * 200 + "</p>",
    ),
    "smtputf8-sender": Case(
        subject="From a UTF-8 address",
        sender=Address(addr="jörg@example.test", name="Jörg", ascii_addr=None),
        text="Unicode bödy ✓",
        smtputf8=True,
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_dovecot_stores_and_reads_back_the_built_message(mailstack: MailStack, name: str) -> None:
    case = CASES[name]
    password = f"pw-{uuid.uuid4().hex}"
    address = mailstack.add_user(f"mime{uuid.uuid4().hex[:8]}", password)
    message = OutgoingMessage(
        sender=case.sender,
        to=[ascii_mailbox("Bob Empfänger", address)],
        subject=case.subject,
        text=case.text,
        html=case.html,
        attachments=case.attachments,
    )
    sent = build_mime(
        message,
        message_id=f"<{uuid.uuid4().hex}@example.org>",
        date=datetime.now(UTC),
        smtputf8=case.smtputf8,
    )
    deliver(mailstack, message, sent, smtputf8=case.smtputf8)

    [fetched] = mailstack.wait_for_messages(address, password, 1)
    # Postfix and Dovecot only prepend trace headers; everything we wrote is kept as is.
    assert fetched.endswith(sent)
    assert_parsed_back(fetched, message, smtputf8=case.smtputf8)
    envelope, structure = fetch_envelope_and_structure(mailstack, address, password)
    assert_envelope(envelope, message)
    assert_body_structure(structure, message)


def deliver(stack: MailStack, message: OutgoingMessage, data: bytes, *, smtputf8: bool) -> None:
    recipients = [a.addr for a in message.to]
    if not smtputf8:
        with smtplib.SMTP(stack.host, stack.smtp_port, timeout=15) as smtp:
            smtp.sendmail(message.sender.addr, recipients, data)
        return
    # A UTF-8 sender needs SMTPUTF8, which the stack offers to authenticated clients.
    with smtplib.SMTP_SSL(stack.host, stack.smtps_port, context=stack.ssl_context(), timeout=15) as smtp:
        smtp.login(stack.user_address, stack.user_password)
        smtp.sendmail(message.sender.addr, recipients, data, mail_options=["SMTPUTF8"])


def assert_parsed_back(fetched: bytes, message: OutgoingMessage, *, smtputf8: bool) -> None:
    if smtputf8:
        # The bytes parser reads header bytes as ASCII; with SMTPUTF8 they are UTF-8.
        parsed = email.message_from_string(fetched.decode("utf-8"), policy=policy.default)
    else:
        parsed = email.message_from_bytes(fetched, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    assert str(parsed["Subject"]) == message.subject
    assert parsed["From"].addresses[0].addr_spec == message.sender.addr
    assert parsed["To"].addresses[0].addr_spec == message.to[0].addr
    text = message.text if message.text is not None else html_to_text(message.html or "")
    assert_same_text(parsed, "plain", text)
    if message.html is not None:
        assert_same_text(parsed, "html", message.html)
    found = list(parsed.iter_attachments())
    assert [a.get_filename() for a in found] == [a.filename for a in message.attachments]
    assert [a.get_payload(decode=True) for a in found] == [a.content for a in message.attachments]


def assert_same_text(parsed: EmailMessage, subtype: str, sent: str) -> None:
    part = parsed.get_body(preferencelist=(subtype,))
    assert part is not None
    got, want = normalise_newlines(part.get_content()), normalise_newlines(sent)
    assert got in (want, want + "\n")


def fetch_envelope_and_structure(
    stack: MailStack, address: str, password: str
) -> tuple[IMAPValue, IMAPValue]:
    with imaplib.IMAP4_SSL(stack.host, stack.imaps_port, ssl_context=stack.ssl_context(), timeout=10) as imap:
        imap.login(address, password)
        imap.select("INBOX", readonly=True)
        typ, data = imap.fetch("1", "(ENVELOPE BODYSTRUCTURE)")
        assert typ == "OK", data
    [_, items] = parse_imap(data)
    assert isinstance(items, list)
    fields = dict(zip(items[::2], items[1::2], strict=True))
    return fields["ENVELOPE"], fields["BODYSTRUCTURE"]


def assert_envelope(envelope: IMAPValue, message: OutgoingMessage) -> None:
    assert isinstance(envelope, list)
    _, subject, senders, _, _, recipients, *_ = envelope
    assert isinstance(subject, str) and decoded(subject) == message.subject
    for listed, sent in ((senders, message.sender), (recipients, message.to[0])):
        assert isinstance(listed, list)
        [entry] = listed
        assert isinstance(entry, list)
        name, _, mailbox, host = entry
        assert isinstance(name, str) and decoded(name) == sent.name
        assert f"{mailbox}@{host}" == sent.addr


def assert_body_structure(structure: IMAPValue, message: OutgoingMessage) -> None:
    leaves = list(leaf_parts(structure))
    expected = ["text/plain"]
    if message.html is not None:
        expected.append("text/html")
    expected += [safe_content_type(a.effective_content_type) for a in message.attachments]
    assert [f"{leaf[0]}/{leaf[1]}".lower() for leaf in leaves] == expected
    attachments = leaves[len(leaves) - len(message.attachments) :]
    for leaf, sent in zip(attachments, message.attachments, strict=True):
        assert str(leaf[5]).lower() == "base64"
        disposition = leaf[8]
        assert isinstance(disposition, list) and str(disposition[0]).lower() == "attachment"
        assert filename_from(disposition[1]) == sent.filename
    if not message.attachments and message.html is None:
        assert isinstance(structure, list) and structure[0] == "text"


def leaf_parts(structure: IMAPValue) -> Any:
    """The single parts of a BODYSTRUCTURE, depth first (a multipart starts with its parts)."""
    assert isinstance(structure, list)
    if isinstance(structure[0], list):
        for child in structure:
            if not isinstance(child, list):
                break
            yield from leaf_parts(child)
    else:
        yield structure


def filename_from(params: IMAPValue) -> str:
    """The filename from disposition parameters as Dovecot lists them (RFC 2231 joined)."""
    assert isinstance(params, list)
    pairs = {str(k).lower(): str(v) for k, v in zip(params[::2], params[1::2], strict=True)}
    sections = sorted(
        (int(m.group(1) or 0), value)
        for key, value in pairs.items()
        if (m := re.fullmatch(r"filename\*(?:(\d+)\*?)?", key))
    )
    if not sections:
        return pairs["filename"]
    joined = "".join(value for _, value in sections)
    return urllib.parse.unquote(joined.split("''", 1)[1], encoding="utf-8")


def decoded(value: str) -> str:
    return str(make_header(decode_header(value)))


# ------------------------------------------------------------------ a small IMAP reader

_TOKEN = re.compile(rb'\s*(?:(\()|(\))|"((?:[^"\\]|\\.)*)"|([^\s()"]+))')


def parse_imap(data: list[Any]) -> list[IMAPValue]:
    """One FETCH response from imaplib (lines and (line, literal) pairs) as nested lists."""
    tokens: list[bytes | IMAPValue] = []
    for item in data:
        if isinstance(item, tuple):
            head, literal = item
            tokens += _lex(re.sub(rb"\{\d+\}$", b"", head))
            tokens.append(literal.decode("utf-8"))
        elif isinstance(item, bytes):
            tokens += _lex(item)
    stack: list[list[IMAPValue]] = [[]]
    for token in tokens:
        if token == b"(":
            stack.append([])
        elif token == b")":
            done = stack.pop()
            stack[-1].append(done)
        else:
            assert not isinstance(token, bytes)
            stack[-1].append(token)
    [top] = stack
    return top


def _lex(line: bytes) -> list[bytes | IMAPValue]:
    out: list[bytes | IMAPValue] = []
    for match in _TOKEN.finditer(line):
        opening, closing, quoted, atom = match.groups()
        if opening or closing:
            out.append(opening or closing)
        elif quoted is not None:
            out.append(re.sub(rb"\\(.)", rb"\1", quoted).decode("utf-8"))
        elif atom is not None:
            out.append(None if atom.upper() == b"NIL" else atom.decode("utf-8"))
    return out
