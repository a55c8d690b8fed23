"""Parsing and validating e-mail addresses, including internationalized ones.

One entry of to/cc/bcc/reply_to is one line: an entry holding CR or LF is refused, so
no entry can smuggle a header or another recipient. Commas and semicolons separate
several addresses only in text a user typed; a value an expression produced
(`RenderedText`, marked by the workflow renderer) must be exactly one address, so
`to: ["{{ inputs.x }}"]` with x = "a@x.org, evil@y.example" is refused instead of
becoming two recipients.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any

import email_validator
import idna
from email_validator import EmailNotValidError, validate_email
from pydantic import BeforeValidator, ValidationInfo

from mailwright.errors import ValidationError

# A self-hosted relay legitimately serves internal names (.local, .internal,
# .test, localhost); email-validator rejects those by default.
email_validator.SPECIAL_USE_DOMAIN_NAMES[:] = [
    d for d in email_validator.SPECIAL_USE_DOMAIN_NAMES if d in {"invalid", "onion"}
]

_NAME_ADDR = re.compile(r"^(.*?)<([^<>]*)>$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Address:
    """One mailbox: an optional display name and an address (Unicode allowed)."""

    addr: str
    name: str = ""
    ascii_addr: str | None = None  # local part ASCII, domain as A-labels; None if impossible

    @property
    def needs_smtputf8(self) -> bool:
        return self.ascii_addr is None

    @property
    def domain(self) -> str:
        return self.addr.rpartition("@")[2]

    @property
    def ascii_domain(self) -> str:
        """The domain as A-labels (punycode), usable anywhere ASCII is required."""
        if self.ascii_addr is not None:
            return self.ascii_addr.rpartition("@")[2]
        try:
            return idna.encode(self.domain, uts46=True).decode()
        except idna.IDNAError:
            return self.domain

    def envelope(self) -> str:
        """The form for MAIL FROM / RCPT TO: ASCII where it can be."""
        return self.ascii_addr or self.addr

    def __str__(self) -> str:
        return f"{self.name} <{self.addr}>" if self.name else self.addr


def parse_address(text: str, *, field: str) -> Address:
    """One address, with or without a display name."""
    found = parse_address_list(text, field=field)
    if len(found) != 1:
        raise ValidationError(f"{field} must be exactly one address; got {len(found)}", field=field)
    return found[0]


class RenderedText(str):
    """Text an expression produced (not typed by a user): never split into several addresses."""

    __slots__ = ()


def _entry_name(field: str, index: int | None) -> str:
    return field if index is None else f"{field}[{index}]"


def entry_problem(entry: str, *, field: str, index: int | None) -> str | None:
    """Why one to/cc/bcc/reply_to entry cannot be used, or None."""
    name = _entry_name(field, index)
    if "\r" in entry or "\n" in entry:
        return (
            f"{name} holds a line break ({entry!r}): give one address per entry, several entries "
            "as a list, or one entry with addresses separated by commas"
        )
    if isinstance(entry, RenderedText):
        pieces = _split(entry)
        if len(pieces) > 1:
            return (
                f"{name}: an expression gave {entry!r}, which holds {len(pieces)} addresses; an "
                "expression gives exactly one address per entry (make it give a list of addresses "
                "to send to several)"
            )
    return None


def check_entries(value: Any, info: ValidationInfo) -> Any:
    """Pydantic before-validator of an address field: each entry is one line, and a rendered
    entry one address (see the module's docstring)."""
    field = info.field_name or "address"
    entries = (
        [(None, value)]
        if isinstance(value, str)
        else list(enumerate(value))
        if isinstance(value, list)
        else []
    )
    for index, entry in entries:
        if isinstance(entry, str) and (problem := entry_problem(entry, field=field, index=index)):
            # Not a ValueError: Pydantic passes ours through, so each face maps it as bad input.
            raise ValidationError(problem, field=field)
    return value


# The type of to, cc, bcc and reply_to in requests: a list, or one string (commas separate).
AddressInput = Annotated[list[str] | str | None, BeforeValidator(check_entries)]


def parse_address_list(value: str | Iterable[str] | None, *, field: str) -> list[Address]:
    """Addresses from a list, or from strings separated by commas or semicolons."""
    if value is None:
        return []
    single = isinstance(value, str)
    items = [value] if isinstance(value, str) else list(value)
    out: list[Address] = []
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise ValidationError(f"{field} must contain strings", field=field)
        problem = entry_problem(item, field=field, index=None if single else index)
        if problem is not None:
            raise ValidationError(problem, field=field)
        out.extend(_parse_piece(piece, field) for piece in _split(item))
    return out


@functools.lru_cache(maxsize=16_384)
def _parse_piece(piece: str, field: str) -> Address:
    # Validation is pure and costs more than building the message; batches repeat
    # senders and often recipients, so each distinct text is validated once.
    name, addr = _name_and_addr(piece, field=field)
    return _validated(name, addr, field=field, original=piece)


_SPECIAL = re.compile(r'[,;"<>\\]')


def _split(text: str) -> list[str]:
    """Split on commas and semicolons outside quotes and angle brackets."""
    if _SPECIAL.search(text) is None:  # the usual single bare address: no scan char by char
        stripped = text.strip()
        return [stripped] if stripped else []
    return _split_scanning(text)


def _split_scanning(text: str) -> list[str]:
    pieces: list[str] = []
    current: list[str] = []
    quoted = angled = escaped = False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
            continue
        if char == "\\" and quoted:
            escaped = True
        elif char == '"' and not angled:
            quoted = not quoted
        elif char == "<" and not quoted:
            angled = True
        elif char == ">" and not quoted:
            angled = False
        elif char in ",;" and not quoted and not angled:
            pieces.append("".join(current))
            current = []
            continue
        current.append(char)
    pieces.append("".join(current))
    return [p.strip() for p in pieces if p.strip()]


def _name_and_addr(piece: str, *, field: str) -> tuple[str, str]:
    match = _NAME_ADDR.match(piece)
    if match is None:
        if "<" in piece or ">" in piece or '"' in piece:  # `in` thrice is 3x faster than any()
            raise ValidationError(
                f"{field}: {piece!r} is not an address; write it as name@example.org or "
                "Name <name@example.org>",
                field=field,
            )
        return "", piece
    name = match.group(1).strip()
    if len(name) >= 2 and name.startswith('"') and name.endswith('"'):
        name = re.sub(r"\\(.)", r"\1", name[1:-1])
    elif '"' in name or "<" in name or ">" in name:
        raise ValidationError(f"{field}: the name in {piece!r} is not well quoted", field=field)
    return name, match.group(2).strip()


# Plain ASCII addresses that email-validator is certain to accept as they are (apart from
# lower-casing the domain): a dot-atom local part and LDH labels ending in a letter TLD.
# Batches are full of them, and this check costs a small fraction of email-validator's.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PLAIN_ADDRESS = re.compile(
    rf"^(?P<local>{_ATEXT}(?:\.{_ATEXT})*)@(?P<domain>(?:{_LABEL}\.)+[A-Za-z]{{2,63}})$"
)


def _plain(addr: str) -> Address | None:
    found = _PLAIN_ADDRESS.match(addr)
    if found is None or len(addr) > 254 or len(found.group("local")) > 64:
        return None
    domain = found.group("domain").lower()
    if "--" in domain or domain.rpartition(".")[2] in ("invalid", "onion"):
        return None  # A-labels and special-use names: email-validator decides
    normalized = f"{found.group('local')}@{domain}"
    return Address(addr=normalized, ascii_addr=normalized)


def _has_line_break(text: str) -> bool:
    return "\r" in text or "\n" in text or "\0" in text


def _validated(name: str, addr: str, *, field: str, original: str) -> Address:
    if not addr:
        raise ValidationError(f"{field}: {original.strip()!r} has no e-mail address", field=field)
    if _has_line_break(name) or _has_line_break(addr):
        raise ValidationError(f"{field}: line breaks are not allowed in addresses", field=field)
    plain = _plain(addr)
    if plain is not None:
        return Address(addr=plain.addr, name=" ".join(name.split()), ascii_addr=plain.ascii_addr)
    try:
        info = validate_email(
            addr,
            check_deliverability=False,
            globally_deliverable=False,
            allow_domain_literal=True,
            allow_smtputf8=True,
        )
    except EmailNotValidError as exc:
        raise ValidationError(f"{field}: {addr!r} is not a valid address: {exc}", field=field) from exc
    ascii_addr = None
    if info.ascii_local_part is not None:
        ascii_addr = f"{info.ascii_local_part}@{info.ascii_domain}"
    # Runs of white space in a name carry no meaning in a header phrase.
    return Address(addr=info.normalized, name=" ".join(name.split()), ascii_addr=ascii_addr)


def dedupe(addresses: Iterable[Address]) -> list[Address]:
    """Keep the first of each address, compared case-insensitively."""
    seen: set[str] = set()
    out: list[Address] = []
    for a in addresses:
        key = a.addr.casefold()
        if key not in seen:
            seen.add(key)
            out.append(a)
    return out
