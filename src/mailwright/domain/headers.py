"""Header encoding and folding (RFC 5322, RFC 2047), written out by hand.

The standard library's folder mangles some display names (it inserts spaces
between encoded words holding characters outside the BMP) and is slow on long
values; these small pure functions write headers that its parser, and Dovecot's,
read back exactly.
"""

from __future__ import annotations

import base64
import re

from mailwright.domain.addresses import Address

MAX_LINE = 78
# "=?utf-8?b?" + "?=" is 12 characters; 45 bytes of UTF-8 become 60 of base64: 72 < 75.
_CHUNK_BYTES = 45
# A plain word in a display name longer than this could not share a line with "Reply-To: ".
_PHRASE_WORD_MAX = 60
_ATOM = re.compile(r"^[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~ ]+$")
_PRINTABLE_ASCII = re.compile(r"^[\x20-\x7e]*$")


def _encoded_words(text: str) -> list[str]:
    """`text` as RFC 2047 encoded words, never splitting a character.

    Short texts (most names) fit one word. Longer ones are cut after a space where
    one is near, since Python's address parser (unlike RFC 2047 and Dovecot) keeps
    the white space between two encoded words of a display name.
    """
    chunks: list[bytes] = []
    chunk = b""
    for char in text:
        encoded = char.encode("utf-8")
        if len(chunk) + len(encoded) > _CHUNK_BYTES:
            cut = chunk.rfind(b" ") + 1
            if cut <= 0 or cut < len(chunk) // 2:
                cut = len(chunk)
            chunks.append(chunk[:cut])
            chunk = chunk[cut:]
        chunk += encoded
    if chunk or not chunks:
        chunks.append(chunk)
    return [f"=?utf-8?b?{base64.b64encode(c).decode()}?=" for c in chunks]


def _needs_encoding(text: str) -> bool:
    if not _PRINTABLE_ASCII.match(text):
        return True
    # Text that already looks like an encoded word must not be decoded by readers.
    return "=?" in text


def _fold(tokens: list[str], *, name: str) -> str:
    """Join tokens (each kept whole) into lines of at most 78 characters where possible."""
    lines: list[str] = []
    current = f"{name}:"
    for token in tokens:
        if not token:
            continue
        candidate = f"{current} {token}"
        if len(candidate) > MAX_LINE and current.strip() != f"{name}:":
            lines.append(current)
            current = f" {token}"
        else:
            current = candidate
    lines.append(current)
    return "\r\n".join(lines) + "\r\n"


def unstructured(name: str, value: str) -> str:
    """A free-text header (Subject, custom headers): encoded words when it is not plain ASCII."""
    if not value:
        return f"{name}: \r\n"
    words = value.split(" ")
    if _needs_encoding(value) or value != value.strip() or "  " in value or not _fits(words, name=name):
        # Encoded words also keep leading, trailing and repeated spaces exactly, and
        # split a word too long for one line, which folding alone cannot.
        return _fold(_encoded_words(value), name=name)
    return _fold(words, name=name)


def words(name: str, tokens: list[str]) -> str:
    """A header of words that must stay as written (References), folded between them."""
    return _fold(tokens, name=name)


def _fits(tokens: list[str], *, name: str) -> bool:
    """Whether folding alone keeps every line within 78 characters."""
    first_room = MAX_LINE - len(name) - 2
    return len(tokens[0]) <= first_room and all(len(t) < MAX_LINE for t in tokens)


def _phrase(name: str) -> list[str]:
    # Names are always written as ASCII (encoded words when needed), which every
    # reader understands, with or without SMTPUTF8.
    if not name:
        return []
    if _needs_encoding(name):
        return _encoded_words(name)
    if _ATOM.match(name) and "  " not in name and name == name.strip():
        atoms = name.split(" ")
        if all(len(a) <= _PHRASE_WORD_MAX for a in atoms):
            return atoms
    elif len(quoted := _quoted(name)) <= _PHRASE_WORD_MAX:
        return [quoted]
    # Too long for one line: encoded words are the only way to fold a phrase's word.
    return _encoded_words(name)


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def address_tokens(address: Address, *, utf8: bool) -> list[str]:
    """One mailbox as tokens. Without SMTPUTF8, a non-ASCII local part becomes an empty group."""
    if not utf8 and address.ascii_addr is None:
        label = f"{address.name} {address.addr}".strip()
        return [*_encoded_words(label), ":;"]
    spec = address.addr if utf8 else (address.ascii_addr or address.addr)
    phrase = _phrase(address.name)
    return [*phrase, f"<{spec}>"] if phrase else [spec]


def address_list(name: str, addresses: list[Address], *, utf8: bool) -> str:
    tokens: list[str] = []
    for index, address in enumerate(addresses):
        parts = address_tokens(address, utf8=utf8)
        if index < len(addresses) - 1:
            parts[-1] = parts[-1] + ","
        tokens.extend(parts)
    # An empty group's ":;" belongs to the word before it.
    joined: list[str] = []
    for token in tokens:
        if token.startswith(":;") and joined:
            joined[-1] += token
        else:
            joined.append(token)
    return _fold(joined, name=name)
