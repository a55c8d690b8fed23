"""How IMAP command arguments are written: folder names in modified UTF-7, quoted
strings, UID sets and flag lists. Pure functions; invalid input raises
`ValidationError` (or `ValueError` for the low-level encoders)."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable

from mailwright.errors import ValidationError

# --- modified UTF-7 (RFC 3501 section 5.1.3) -------------------------------------


def encode_mailbox_name(name: str) -> str:
    """A folder name in IMAP's modified UTF-7: printable ASCII as is, "&" as "&-",
    everything else as "&" + base64 of UTF-16BE (with "," for "/") + "-".

    Raises ValueError for text that has no UTF-16 form (lone surrogates).
    """
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            utf16 = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(utf16).decode().rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return "".join(out)


def decode_mailbox_name(raw: str) -> str:
    """The text of a folder name in modified UTF-7; ValueError if it is malformed."""
    out: list[str] = []
    index = 0
    while index < len(raw):
        char = raw[index]
        if char != "&":
            if not 0x20 <= ord(char) <= 0x7E:
                raise ValueError(f"character {char!r} must be encoded in modified UTF-7")
            out.append(char)
            index += 1
            continue
        end = raw.find("-", index + 1)
        if end < 0:
            raise ValueError("an '&' shift is not closed by '-'")
        out.append(_decode_shift(raw[index + 1 : end]) if end > index + 1 else "&")
        index = end + 1
    return "".join(out)


def _decode_shift(chunk: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9+,]+", chunk):
        raise ValueError(f"invalid modified base64 {chunk!r}")
    try:
        data = base64.b64decode(chunk.replace(",", "/") + "=" * (-len(chunk) % 4), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"invalid modified base64 {chunk!r}") from exc
    if len(data) % 2:
        raise ValueError(f"modified base64 {chunk!r} is not UTF-16")
    return data.decode("utf-16-be")  # strict: a lone surrogate raises UnicodeDecodeError


def quote_string(text: str) -> str:
    """An IMAP quoted string; CR, LF and NUL cannot be quoted."""
    if any(char in text for char in "\r\n\0"):
        raise ValueError("line breaks and NUL cannot be sent to an IMAP server")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_mailbox(name: str) -> str:
    """A folder name ready for a command: modified UTF-7, quoted."""
    if not name:
        raise ValidationError("the folder name is empty", field="folder")
    try:
        return quote_string(encode_mailbox_name(name))
    except ValueError as exc:
        raise ValidationError(f"invalid folder name {name!r}: {exc}", field="folder") from None


def uid_set(uids: Iterable[int]) -> str:
    """A compact IMAP sequence set of UIDs: [1, 2, 3, 7] -> "1:3,7"."""
    ordered = sorted(set(uids))
    if not ordered or ordered[0] < 1:
        raise ValidationError("UIDs are positive integers", field="uids")
    parts: list[str] = []
    start = previous = ordered[0]
    for uid in [*ordered[1:], 0]:
        if uid == previous + 1:
            previous = uid
            continue
        parts.append(str(start) if start == previous else f"{start}:{previous}")
        start = previous = uid
    return ",".join(parts)


_FLAG_RE = re.compile(r"\\?[!#$&'+\-.0-9:<=>?@A-Z^_`a-z|}~]+")


def flag_list(flags: Iterable[str]) -> str:
    """A parenthesised flag list; system flags (\\Seen) or keywords ($Label, Done)."""
    items = list(dict.fromkeys(flags))
    for flag in items:
        if not _FLAG_RE.fullmatch(flag):
            raise ValidationError(
                f"invalid IMAP flag {flag!r}",
                field="flags",
                hint="use a system flag such as \\Seen or \\Flagged, or a keyword of letters and digits",
            )
    return "(" + " ".join(items) + ")"


__all__ = [
    "decode_mailbox_name",
    "encode_mailbox_name",
    "flag_list",
    "quote_mailbox",
    "quote_string",
    "uid_set",
]
