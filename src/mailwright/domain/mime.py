"""MIME bodies written by hand: text, HTML alternative and attachments as wire bytes.

`email.message.EmailMessage` builds a tree of header objects, re-parses what it was
given and re-folds every line on output; for the few shapes Mailwright sends that
costs far more than the message is worth. These pure functions write the same
structure directly with the C encoders in `binascii`. Every line ends in CRLF and
stays within RFC 5322's 998 octets; the standard library's parser and Dovecot read
the result back exactly (see tests/unit/test_mime.py and tests/e2e).
"""

from __future__ import annotations

import binascii
import itertools
import os
import re
import struct
import unicodedata
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

MAX_LINE_OCTETS = 998
# Readers should not see lines over 78 characters; parameters fold to stay within it.
_FOLD_WIDTH = 78
_BASE64_LINE = 76
_BASE64_BLOCK = struct.Struct(f"{_BASE64_LINE}s" * 128)
# A quoted filename must fit one folded line: " filename=" (10) + quotes (2) + 66 = 78.
_MAX_QUOTED_FILENAME = 66
# "filename*0*=utf-8''" (19) + 56 + ";" keeps the first section line within 78 too.
_MAX_SECTION = 56

# Bytes that may appear as they are in a 7bit body (line ends are LF until the end).
_7BIT_BYTES = b"\t\n" + bytes(range(0x20, 0x7F))
_ASCII_BYTES = bytes(range(128))
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,127}"
_CONTENT_TYPE = re.compile(rf"^{_TOKEN}/{_TOKEN}$")
_PRINTABLE_ASCII = re.compile(r"^[\x20-\x7e]+$")
_UNSAFE_FALLBACK = re.compile(r'[^\x20-\x7e]|["\\]')
_OCTET_STREAM = "application/octet-stream"
# Kinds whose body must stay readable as MIME; base64 would hide it from every reader.
_STRUCTURED_TYPES = ("multipart/", "message/")


class TransferEncoding(StrEnum):
    SEVEN_BIT = "7bit"
    QUOTED_PRINTABLE = "quoted-printable"
    BASE64 = "base64"


class AttachmentLike(Protocol):
    """What the builder needs of an attachment (`message.Attachment` fits)."""

    @property
    def filename(self) -> str: ...

    @property
    def content(self) -> bytes: ...

    @property
    def effective_content_type(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Entity:
    """One MIME entity: its content headers (CRLF-terminated lines) and its encoded body.

    The body's last line may lack its CRLF: a following delimiter, or `wire`, supplies it.

    `verbatim` marks a body that holds the caller's text as is, where a boundary
    could occur; quoted-printable and base64 never produce the "=_" every boundary
    starts with, so they need no search.
    """

    headers: bytes
    body: bytes
    verbatim: bool

    def wire(self) -> bytes:
        """The entity as a whole message body: headers, blank line, body ending in CRLF."""
        body = self.body
        if body and not body.endswith(b"\r\n"):
            body += b"\r\n"
        return self.headers + b"\r\n" + body


def normalise_newlines(text: str) -> str:
    """Bare CR and bare LF both become line ends (CRLF on the wire)."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def choose_text_encoding(data: bytes) -> TransferEncoding:
    """The transfer encoding for UTF-8 text with LF line ends.

    7bit needs plain ASCII in lines of at most 998 octets; otherwise quoted-printable
    is shorter than base64 while fewer than one byte in six needs escaping (each
    escape costs three bytes, base64 a third more than the whole).
    """
    # bytes.translate deleting the allowed bytes scans in C, far faster than a regex.
    outside = data.translate(None, _7BIT_BYTES)
    if not outside and _longest_line(data) <= MAX_LINE_OCTETS:
        return TransferEncoding.SEVEN_BIT
    high = len(outside.translate(None, _ASCII_BYTES))
    if high * 6 >= len(data):
        return TransferEncoding.BASE64
    return TransferEncoding.QUOTED_PRINTABLE


def _longest_line(data: bytes) -> int:
    if len(data) <= MAX_LINE_OCTETS:
        return len(data)
    return max(map(len, data.split(b"\n")))


def encode_text(text: str) -> tuple[TransferEncoding, bytes]:
    """Text (any newlines) as its transfer encoding and CRLF body bytes."""
    # A lone surrogate (JSON allows "\\ud800") has no UTF-8 form; "?" stands in for it.
    data = normalise_newlines(text).encode("utf-8", "replace")
    encoding = choose_text_encoding(data)
    if encoding is TransferEncoding.SEVEN_BIT:
        return encoding, data.replace(b"\n", b"\r\n")
    if encoding is TransferEncoding.QUOTED_PRINTABLE:
        # The input has no CR, so b2a_qp writes LF for hard and soft line breaks alike;
        # it also escapes trailing white space and a lone "." line.
        return encoding, binascii.b2a_qp(data, istext=True).replace(b"\n", b"\r\n")
    return encoding, encode_base64(data)


def encode_base64(data: bytes) -> bytes:
    """Base64 in 76-character lines joined by CRLF (no final CRLF)."""
    encoded = binascii.b2a_base64(data, newline=False)
    # Cutting whole blocks of lines in C is faster than slicing each line in Python.
    cut = len(encoded) - len(encoded) % _BASE64_BLOCK.size
    lines = list(itertools.chain.from_iterable(_BASE64_BLOCK.iter_unpack(memoryview(encoded)[:cut])))
    lines += [encoded[i : i + _BASE64_LINE] for i in range(cut, len(encoded), _BASE64_LINE)]
    return b"\r\n".join(lines)


def text_entity(text: str, *, subtype: str) -> Entity:
    encoding, body = encode_text(text)
    headers = _TEXT_HEADERS[subtype, encoding]
    return Entity(headers=headers, body=body, verbatim=encoding is TransferEncoding.SEVEN_BIT)


def _text_headers(subtype: str, encoding: TransferEncoding) -> bytes:
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\nContent-Transfer-Encoding: {encoding}\r\n'
    ).encode("ascii")


_TEXT_HEADERS = {
    (subtype, encoding): _text_headers(subtype, encoding)
    for subtype in ("plain", "html")
    for encoding in TransferEncoding
}


def attachment_entity(attachment: AttachmentLike) -> Entity:
    """An attachment: always base64, so any bytes survive every transport unchanged."""
    headers = (
        f"Content-Type: {safe_content_type(attachment.effective_content_type)}\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        f"{content_disposition(attachment.filename)}"
    ).encode("ascii")
    return Entity(headers=headers, body=encode_base64(attachment.content), verbatim=False)


def safe_content_type(content_type: str) -> str:
    """`type/subtype` in lower case, or application/octet-stream if it is not a valid one.

    Multipart and message types are refused too: their bodies must be MIME, not base64.
    """
    content_type = content_type.strip().lower()
    if not _CONTENT_TYPE.match(content_type) or content_type.startswith(_STRUCTURED_TYPES):
        return _OCTET_STREAM
    return content_type


def content_disposition(filename: str) -> str:
    """The Content-Disposition header (CRLF-terminated) naming `filename`.

    Short printable-ASCII names are a quoted string. Others use RFC 2231
    (`filename*=utf-8''…`, cut into numbered sections when long) followed by an ASCII
    `filename` for readers that know only the plain form; the standard library takes
    the first of the two, and RFC 2231 readers prefer the extended one anyway.
    """
    quoted = _quoted(filename)
    if _PRINTABLE_ASCII.match(filename) and "=?" not in filename and len(quoted) <= _MAX_QUOTED_FILENAME:
        return _fold_params("Content-Disposition: attachment", [f"filename={quoted}"])
    params = _rfc2231_sections("filename", filename)
    params.append(f"filename={_quoted(ascii_fallback(filename))}")
    return _fold_params("Content-Disposition: attachment", params)


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _rfc2231_sections(name: str, value: str) -> list[str]:
    """`name*=utf-8''…`, or `name*0*=utf-8''…; name*1*=…` when one line would be too long.

    Sections end between characters, never inside one's UTF-8 bytes, so readers that
    decode each section on its own still get whole characters.
    """
    encoded = urllib.parse.quote(value, safe="", encoding="utf-8")
    if len(encoded) <= _MAX_SECTION:
        return [f"{name}*=utf-8''{encoded}"]
    sections: list[str] = []
    current = ""
    for char in value:
        piece = urllib.parse.quote(char, safe="", encoding="utf-8")
        if current and len(current) + len(piece) > _MAX_SECTION:
            sections.append(current)
            current = ""
        current += piece
    sections.append(current)
    first, *rest = sections
    return [f"{name}*0*=utf-8''{first}", *(f"{name}*{i}*={s}" for i, s in enumerate(rest, 1))]


def ascii_fallback(filename: str) -> str:
    """A printable-ASCII stand-in for `filename`, keeping its extension: 'Ärger.pdf' → 'Arger.pdf'."""
    stem, dot, extension = filename.rpartition(".")
    extension = _to_ascii(extension).strip()
    if not (dot and stem and 0 < len(extension) <= 10):
        stem, extension = filename, ""
    room = _MAX_QUOTED_FILENAME - 2 - (len(extension) + 1 if extension else 0)
    stem = _to_ascii(stem).strip()[:room].strip()
    if not stem.strip("_ ."):
        stem = "attachment"
    return f"{stem}.{extension}" if extension else stem


def _to_ascii(text: str) -> str:
    # Compatibility decomposition keeps the base letter of accented characters.
    decomposed = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    # "=?" would make some readers decode the name as an RFC 2047 encoded word.
    cleaned = _UNSAFE_FALLBACK.sub("_", decomposed).replace("=?", "=_")
    # Dropped characters ("a — b") would leave runs of spaces behind.
    return " ".join(cleaned.split())


def _fold_params(head: str, params: list[str]) -> str:
    """`head; p1; p2` on one line if it fits, else one parameter per continuation line."""
    line = "; ".join([head, *params])
    if len(line) <= _FOLD_WIDTH:
        return line + "\r\n"
    return ";\r\n ".join([head, *params]) + "\r\n"


def new_boundary() -> str:
    # "=_" cannot occur in quoted-printable or base64 output; the random part makes
    # a clash with verbatim text (checked anyway) or an enclosing boundary hopeless.
    return f"=_mw_{os.urandom(12).hex()}"


def multipart_entity(subtype: str, parts: Sequence[Entity]) -> Entity:
    """`parts` in a multipart/`subtype`, under a boundary that none of them contains."""
    boundary = new_boundary()
    while _occurs_in(boundary.encode("ascii"), parts):
        boundary = new_boundary()
    delimiter = b"--" + boundary.encode("ascii")
    chunks: list[bytes] = []
    for part in parts:
        # The CRLF before each delimiter belongs to the delimiter, not to the part.
        chunks += [delimiter, b"\r\n", part.headers, b"\r\n", part.body, b"\r\n"]
    chunks += [delimiter, b"--\r\n"]
    headers = f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n'.encode("ascii")
    # Child boundaries are part of this body, so an enclosing multipart must check it.
    return Entity(headers=headers, body=b"".join(chunks), verbatim=True)


def _occurs_in(boundary: bytes, parts: Sequence[Entity]) -> bool:
    return any(part.verbatim and boundary in part.body for part in parts)


def body_entity(*, text: str, html: str | None, attachments: Sequence[AttachmentLike]) -> Entity:
    """The message body: text/plain, or an HTML alternative, mixed with attachments."""
    entity = text_entity(text, subtype="plain")
    if html is not None:
        entity = multipart_entity("alternative", [entity, text_entity(html, subtype="html")])
    if attachments:
        entity = multipart_entity("mixed", [entity, *map(attachment_entity, attachments)])
    return entity


def build_body(*, text: str, html: str | None, attachments: Sequence[AttachmentLike]) -> bytes:
    """MIME-Version, the content headers and the body, ready to follow the top headers."""
    entity = body_entity(text=text, html=html, attachments=attachments)
    return b"MIME-Version: 1.0\r\n" + entity.wire()
