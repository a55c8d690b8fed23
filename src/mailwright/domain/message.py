"""Building RFC 5322 messages from validated parts. Pure: no I/O, no clock unless given."""

from __future__ import annotations

import functools
import mimetypes
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import format_datetime

from mailwright.domain import headers, mime
from mailwright.domain.addresses import Address, dedupe
from mailwright.domain.html_text import html_to_text
from mailwright.domain.importance import Importance as Importance
from mailwright.domain.mime import normalise_newlines as normalise_newlines
from mailwright.errors import ValidationError

_HEADER_NAME = re.compile(r"^[!-9;-~]{1,76}$")
_MSGID = re.compile(r"^<[^<>\s]+@[^<>\s]+>$")

# Headers Mailwright writes itself; a custom header may not replace them.
RESERVED_HEADERS = frozenset(
    h.lower()
    for h in (
        "From",
        "To",
        "Cc",
        "Bcc",
        "Reply-To",
        "Subject",
        "Date",
        "Message-ID",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
        "Content-Disposition",
        "In-Reply-To",
        "References",
        "Importance",
        "X-Priority",
        "Sender",
        "Return-Path",
    )
)


_PRIORITY = {Importance.LOW: "5 (Lowest)", Importance.HIGH: "1 (Highest)"}


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content: bytes
    content_type: str = ""

    @property
    def effective_content_type(self) -> str:
        if self.content_type:
            return self.content_type
        guessed, _ = mimetypes.guess_type(self.filename)
        return guessed or "application/octet-stream"


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A message to send, already validated at the edge."""

    sender: Address
    to: list[Address]
    cc: list[Address] = field(default_factory=list)
    bcc: list[Address] = field(default_factory=list)
    reply_to: list[Address] = field(default_factory=list)
    subject: str = ""
    text: str | None = None
    html: str | None = None
    attachments: list[Attachment] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    in_reply_to: str | None = None
    references: list[str] = field(default_factory=list)
    importance: Importance = Importance.NORMAL

    def recipients(self) -> list[Address]:
        """Envelope recipients: To, Cc and Bcc, each once."""
        return dedupe([*self.to, *self.cc, *self.bcc])

    @property
    def needs_smtputf8(self) -> bool:
        return any(a.needs_smtputf8 for a in (self.sender, *self.to, *self.cc, *self.reply_to))


def check_header(name: str, value: str) -> tuple[str, str]:
    """A custom header, refused with a reason if it could break the message."""
    name = name.strip()
    if not _HEADER_NAME.match(name):
        raise ValidationError(
            f"header name {name!r} is not valid: use printable ASCII without spaces or colons",
            field="headers",
        )
    if name.lower() in RESERVED_HEADERS:
        raise ValidationError(
            f"header {name!r} is set by Mailwright; use the matching field instead",
            field="headers",
        )
    if any(c in value for c in "\r\n\0"):
        raise ValidationError(f"header {name!r}: line breaks are not allowed", field="headers")
    return name, value.strip()


def check_message_id(value: str, *, field: str) -> str:
    value = value.strip()
    if not value.startswith("<"):
        value = f"<{value}>"
    if not _MSGID.match(value):
        raise ValidationError(f"{field}: {value!r} is not a message id like <id@host>", field=field)
    if not value.isascii():
        # Message ids go in the headers verbatim; only ASCII is readable by every server.
        raise ValidationError(
            f"{field}: {value!r} has non-ASCII characters; a message id must be ASCII",
            field=field,
            hint="use the Message-ID exactly as the original message's headers carry it",
        )
    return value


def check_single_line(value: str, *, field: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise ValidationError(f"{field}: line breaks are not allowed", field=field)
    return value


def make_message_id(domain: str) -> str:
    """A globally unique Message-ID on the sender's domain: time, process and 96 random bits."""
    return f"<{_stamp()}.{os.getpid()}.{os.urandom(12).hex()}@{domain.strip('[]') or 'localhost'}>"


_last_stamp: tuple[int, str] = (0, "")


def _stamp() -> str:
    # Formatted once a second: a batch makes thousands of Message-IDs a second.
    global _last_stamp
    second = int(time.time())
    if _last_stamp[0] != second:
        _last_stamp = (second, time.strftime("%Y%m%d%H%M%S", time.gmtime(second)))
    return _last_stamp[1]


def _headers(message: OutgoingMessage, *, message_id: str, date: datetime, smtputf8: bool) -> str:
    lines = [_date_header(date), _from_header(message.sender, smtputf8)]
    if message.to:
        lines.append(headers.address_list("To", message.to, utf8=smtputf8))
    if message.cc:
        lines.append(headers.address_list("Cc", message.cc, utf8=smtputf8))
    if not message.to and not message.cc:
        # RFC 5322 wants a destination header; Bcc-only mail gets the empty group.
        lines.append("To: undisclosed-recipients:;\r\n")
    if message.reply_to:
        lines.append(headers.address_list("Reply-To", message.reply_to, utf8=smtputf8))
    lines.append(headers.unstructured("Subject", message.subject))
    lines.append(f"Message-ID: {message_id}\r\n")
    if message.in_reply_to:
        lines.append(f"In-Reply-To: {message.in_reply_to}\r\n")
    if message.references:
        # Message IDs must stay as written (never encoded words), so only fold between them.
        lines.append(headers.words("References", message.references))
    if message.importance is not Importance.NORMAL:
        lines.append(f"Importance: {message.importance.value.capitalize()}\r\n")
        lines.append(f"X-Priority: {_PRIORITY[message.importance]}\r\n")
    lines.extend(headers.unstructured(name, value) for name, value in message.headers)
    return "".join(lines)


@functools.lru_cache(maxsize=4)
def _date_header(date: datetime) -> str:
    # A batch sends thousands of messages a second and Date has one-second resolution.
    return f"Date: {format_datetime(date)}\r\n"


@functools.lru_cache(maxsize=256)
def _from_header(sender: Address, smtputf8: bool) -> str:
    # Batches repeat their sender.
    return headers.address_list("From", [sender], utf8=smtputf8)


def build_mime(
    message: OutgoingMessage,
    *,
    message_id: str,
    date: datetime,
    smtputf8: bool,
) -> bytes:
    """The message as wire bytes (CRLF line ends). Bcc never appears in the headers."""
    top = _headers(message, message_id=message_id, date=date, smtputf8=smtputf8)
    text = message.text
    if text is None:
        # HTML-only mail still gets a plain-text alternative for readers that want one.
        text = html_to_text(normalise_newlines(message.html)) if message.html is not None else ""
    body = mime.build_body(text=text, html=message.html, attachments=message.attachments)
    return top.encode("utf-8" if smtputf8 else "ascii") + body
