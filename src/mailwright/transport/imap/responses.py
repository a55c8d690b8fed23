"""Parsing what an IMAP server answers: FETCH bodies and flags, SEARCH results, LIST folders.

Pure functions over `imaplib`'s response data (a list of bytes lines and
(header, literal) tuples); nothing here talks to a server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mailwright.transport.imap.arguments import decode_mailbox_name

_UID_RE = re.compile(rb"\bUID (\d+)", re.IGNORECASE)
_FLAGS_RE = re.compile(rb"\bFLAGS \(([^)]*)\)", re.IGNORECASE)
_LIST_RE = re.compile(rb'^\((?P<flags>[^)]*)\) (?P<delimiter>NIL|"(?:[^"\\]|\\.)*") ?(?P<name>.*)$', re.S)


@dataclass(frozen=True, slots=True)
class Folder:
    """One folder from LIST: its name (decoded), the name on the server, and attributes."""

    name: str
    raw_name: str
    delimiter: str | None
    flags: tuple[str, ...]

    @property
    def selectable(self) -> bool:
        return not {"\\NOSELECT", "\\NONEXISTENT"} & {f.upper() for f in self.flags}


def parse_fetch_bodies(data: list[Any]) -> dict[int, bytes]:
    """UID -> message bytes from the response data of `UID FETCH … (BODY.PEEK[])`."""
    out: dict[int, bytes] = {}
    for index, item in enumerate(data):
        if not isinstance(item, tuple) or len(item) != 2 or b"BODY[]" not in item[0].upper():
            continue  # unsolicited FETCH (flag changes) and closing parentheses
        match = _UID_RE.search(item[0])
        following = data[index + 1] if index + 1 < len(data) else None
        if match is None and isinstance(following, bytes):
            match = _UID_RE.search(following)  # "BODY[] {n} UID 5)": UID after the literal
        if match is not None:
            out[int(match.group(1))] = bytes(item[1])
    return out


def parse_fetch_flags(data: list[Any]) -> dict[int, set[str]]:
    """UID -> flags from the response data of `UID FETCH … (FLAGS)`."""
    out: dict[int, set[str]] = {}
    for item in data:
        line = item[0] if isinstance(item, tuple) else item
        if not isinstance(line, bytes):
            continue
        uid, flags = _UID_RE.search(line), _FLAGS_RE.search(line)
        if uid is not None and flags is not None:
            out[int(uid.group(1))] = set(flags.group(1).decode("ascii", "replace").split())
    return out


def parse_search(data: list[Any]) -> list[int]:
    """UIDs from the response data of `UID SEARCH` (ignoring a trailing "(MODSEQ n)")."""
    uids: list[int] = []
    for item in data:
        if isinstance(item, bytes):
            uids.extend(int(token) for token in item.split() if token.isdigit())
    return sorted(set(uids))


def parse_list(data: list[Any]) -> list[Folder]:
    """Folders from the response data of `LIST "" *` (names quoted, atoms or literals)."""
    folders: list[Folder] = []
    for item in data:
        if isinstance(item, tuple):
            head, literal = item
            match = _LIST_RE.match(head)
            raw = bytes(literal).decode("utf-8", "replace")
        elif isinstance(item, bytes):
            match = _LIST_RE.match(item)
            raw = _unquote(match.group("name")) if match else ""
        else:
            continue
        if match is None:
            continue
        delimiter = match.group("delimiter")
        try:
            name = decode_mailbox_name(raw)
        except ValueError:
            name = raw  # not modified UTF-7 (some servers send UTF-8): show it as it is
        folders.append(
            Folder(
                name=name,
                raw_name=raw,
                delimiter=None if delimiter == b"NIL" else _unquote(delimiter),
                flags=tuple(match.group("flags").decode("ascii", "replace").split()),
            )
        )
    return folders


def _unquote(value: bytes) -> str:
    text = value.decode("utf-8", "replace").strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


__all__ = ["Folder", "parse_fetch_bodies", "parse_fetch_flags", "parse_list", "parse_search"]
