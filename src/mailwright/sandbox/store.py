"""Captured messages on disk: one ``<id>.eml`` (raw bytes) and one ``<id>.json`` each.

Files are written atomically (temporary file, then ``os.replace``), the ``.eml``
before the ``.json``: a message exists once its ``.json`` does.  The directory is
the only state, so several processes (the server, the CLI) can share it; writers
within one process are serialised by a lock.

Capturing must keep up with a test suite's bursts (hundreds of messages a second), so
an add does not scan the directory, and messages arriving on several connections are
written in parallel (only the index and the eviction take the lock). The writer keeps an
index of the messages (id and size) and trusts it until another store changes the
directory: a delete or a clear (from the CLI, say) touches the ``.changed`` marker, and
the next add reads the directory again. Leftovers of a crash are swept at most once a
minute. And creating a file costs far more than rewriting one on some disks (about 1 ms
against 0.01 ms here), so the files of an evicted message are kept as spares (renamed
``.spare-*``, at most SPARES of them) and overwritten by the next message instead of
being deleted and created again.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mailwright.domain.mime_reader import ParsedMessage, extract_attachment, parse_message, parse_subject
from mailwright.errors import ConfigError, NotFoundError, SandboxMessageTooLargeError, ValidationError

__all__ = ["CapturedMessage", "CapturedSummary", "SandboxStore"]

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGES = 500
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
_ID = re.compile(r"\d{8}-\d{6}-\d{6}-[0-9a-f]{6}")
_RAW = ".eml"
_META = ".json"
_TEMP_PREFIX = ".tmp-"
_SPARE_PREFIX = ".spare-"
SPARES = 64  # files of evicted messages kept for reuse, at most
_ORPHAN_AGE = 600.0  # seconds before a half-written message is swept away
_SWEEP_EVERY = 60.0  # seconds between looks for such leftovers
_MARKER = ".changed"  # touched by deletes and clears: a writer's index must be read again
_FORMAT = 1
_LIST_HINT = "run `mailwright sandbox list` to see the captured messages"


@dataclass(frozen=True)
class CapturedSummary:
    """What the list of captured messages shows; ``received_at`` is UTC."""

    id: str
    received_at: datetime
    mail_from: str
    rcpt_tos: tuple[str, ...]
    size: int
    peer: str
    subject: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "received_at": self.received_at.isoformat(),
            "mail_from": self.mail_from,
            "rcpt_tos": list(self.rcpt_tos),
            "size": self.size,
            "peer": self.peer,
            "subject": self.subject,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CapturedSummary:
        received_at = datetime.fromisoformat(str(data["received_at"]))
        return cls(
            id=str(data["id"]),
            received_at=received_at.astimezone(UTC),
            mail_from=str(data["mail_from"]),
            rcpt_tos=tuple(str(r) for r in data["rcpt_tos"]),
            size=int(data["size"]),
            peer=str(data["peer"]),
            subject=str(data["subject"]),
        )


@dataclass(frozen=True)
class CapturedMessage:
    """One captured message: its summary, the raw bytes and the parsed view.

    ``as_dict`` gives the summary fields plus ``"parsed"``; the raw bytes are left
    out (``SandboxStore.raw`` serves them).
    """

    summary: CapturedSummary
    raw: bytes
    parsed: ParsedMessage

    @property
    def id(self) -> str:
        return self.summary.id

    def as_dict(self) -> dict[str, Any]:
        return {**self.summary.as_dict(), "parsed": self.parsed.as_dict()}


@dataclass(frozen=True)
class _Entry:
    id: str
    size: int


class SandboxStore:
    """Captured messages in ``directory``, newest kept, oldest evicted beyond the caps.

    ``max_messages`` and ``max_bytes`` (the total of the raw sizes) are enforced on
    every ``add``; a single message larger than ``max_bytes`` is refused.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_messages: int = DEFAULT_MAX_MESSAGES,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        if max_messages < 1:
            raise ConfigError(
                f"the sandbox must keep at least 1 message, not {max_messages}",
                hint="set max_messages to 1 or more",
            )
        if max_bytes < 1:
            raise ConfigError(
                f"the sandbox size limit must be at least 1 byte, not {max_bytes}",
                hint="set max_bytes to 1 or more",
            )
        self.directory = Path(directory)
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._lock = threading.RLock()
        self._last_micros = 0
        # id -> raw size, as this writer last saw the directory (see the module's docstring);
        # None: not read yet. `_seen`: the marker's mtime at that look.
        self._index: dict[str, int] | None = None
        self._seen: int | None = None
        self._spares: list[Path] = []  # files of evicted messages, to be overwritten (see above)
        self._next_sweep = 0.0

    def __repr__(self) -> str:
        return f"<SandboxStore {str(self.directory)!r}>"

    # ---- writing ----

    def ensure_directory(self) -> Path:
        """Create the directory (mode 0700) if needed; ``ConfigError`` if that fails."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the sandbox directory {self.directory}: {exc.strerror}",
                hint="set MAILWRIGHT_HOME to a writable directory",
            ) from exc
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise ConfigError(
                f"the sandbox directory {self.directory} is not writable",
                hint="fix its permissions or set MAILWRIGHT_HOME to a writable directory",
            )
        return self.directory

    def add(self, mail_from: str, rcpt_tos: Sequence[str], data: bytes, peer: str) -> CapturedSummary:
        """Store one message durably, then evict the oldest beyond the caps.

        Raises ``SandboxMessageTooLargeError`` for a message larger than ``max_bytes``
        and ``OSError`` when the disk refuses the write.
        """
        if len(data) > self.max_bytes:
            raise SandboxMessageTooLargeError(size=len(data), limit=self.max_bytes)
        self.ensure_directory()
        with self._lock:
            message_id, received_at = self._new_id()
        summary = CapturedSummary(
            id=message_id,
            received_at=received_at,
            mail_from=mail_from,
            rcpt_tos=tuple(rcpt_tos),
            size=len(data),
            peer=peer,
            subject=parse_subject(data),
        )
        meta = {"format": _FORMAT, **summary.as_dict()}
        self._write(self._path(message_id, _RAW), data)
        self._write(self._path(message_id, _META), json.dumps(meta, ensure_ascii=False).encode())
        with self._lock:
            index = self._current_index()
            index[message_id] = len(data)
            self._evict(index, keep=message_id)
            if time.monotonic() >= self._next_sweep:
                self._next_sweep = time.monotonic() + _SWEEP_EVERY
                self._sweep_orphans()
        log.debug("sandbox captured %s (%d bytes) from %s", message_id, len(data), peer)
        return summary

    def delete(self, message_id: str) -> None:
        """Delete one message; ``NotFoundError`` if there is none with that id."""
        self._check_id(message_id)
        with self._lock:
            if not self._path(message_id, _META).exists():
                raise self._not_found(message_id)
            self._remove(message_id)
            self._changed()

    def clear(self) -> int:
        """Delete every captured message; return how many there were."""
        with self._lock:
            ids = self._ids()
            for message_id in ids:
                self._remove(message_id)
            for spare in (e for e in self._names() if e.name.startswith(_SPARE_PREFIX)):
                Path(spare.path).unlink(missing_ok=True)  # evicted mail kept for reuse goes too
            self._spares = []
            self._changed()
        return len(ids)

    # ---- reading ----

    def list(self, limit: int = 100, offset: int = 0) -> list[CapturedSummary]:
        """Summaries, newest first."""
        if limit < 0 or offset < 0:
            raise ValidationError(
                "limit and offset must not be negative", field="limit" if limit < 0 else "offset"
            )
        ids = sorted(self._ids(), reverse=True)[offset : offset + limit]
        summaries = (self._read_summary(message_id) for message_id in ids)
        return [s for s in summaries if s is not None]

    def count(self) -> int:
        return len(self._ids())

    def total_bytes(self) -> int:
        """The raw size of all captured messages together."""
        return sum(entry.size for entry in self._entries())

    def summary(self, message_id: str) -> CapturedSummary:
        self._check_id(message_id)
        found = self._read_summary(message_id)
        if found is None:
            raise self._not_found(message_id)
        return found

    def get(self, message_id: str) -> CapturedMessage:
        """Summary, raw bytes and the parsed view of one message."""
        summary = self.summary(message_id)
        raw = self.raw(message_id)
        return CapturedMessage(summary=summary, raw=raw, parsed=parse_message(raw))

    def raw(self, message_id: str) -> bytes:
        """The message exactly as received (DATA, CRLF line ends, dot-unstuffed)."""
        self._check_id(message_id)
        try:
            return self._path(message_id, _RAW).read_bytes()
        except FileNotFoundError:
            raise self._not_found(message_id) from None

    def attachment(self, message_id: str, index: int) -> tuple[str, str, bytes]:
        """(filename, content type, content) of attachment ``index`` (counted from 0)."""
        raw = self.raw(message_id)
        found = extract_attachment(raw, index)
        if found is None:
            raise NotFoundError(
                f"captured message {message_id} has no attachment number {index}",
                hint="attachments are numbered from 0; `mailwright sandbox show ID` lists them",
            )
        info, content = found
        return info.filename, info.content_type, content

    # ---- internals ----

    def _new_id(self) -> tuple[str, datetime]:
        micros = max(time.time_ns() // 1000, self._last_micros + 1)
        self._last_micros = micros
        seconds, fraction = divmod(micros, 1_000_000)
        when = datetime.fromtimestamp(seconds, UTC).replace(microsecond=fraction)
        return f"{when:%Y%m%d-%H%M%S}-{fraction:06d}-{secrets.token_hex(3)}", when

    def _check_id(self, message_id: str) -> None:
        if not isinstance(message_id, str) or not _ID.fullmatch(message_id):
            shown = repr(message_id)[:80]
            raise NotFoundError(
                f"{shown} is not a sandbox message id (they look like 20260124-120000-123456-3fa2c1)",
                hint=_LIST_HINT,
            )

    def _not_found(self, message_id: str) -> NotFoundError:
        return NotFoundError(f"no captured message {message_id}", hint=_LIST_HINT)

    def _path(self, message_id: str, suffix: str) -> Path:
        return self.directory / f"{message_id}{suffix}"

    def _write(self, path: Path, data: bytes) -> None:
        fd, temp = self._spare() or tempfile.mkstemp(dir=self.directory, prefix=_TEMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fdatasync(handle.fileno())  # the bytes; the rename makes the name
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    def _spare(self) -> tuple[int, str] | None:
        """An evicted message's file opened for overwriting, or None (then a new one is made)."""
        while True:
            with self._lock:
                if not self._spares:
                    return None
                spare = self._spares.pop()
            try:
                return os.open(spare, os.O_WRONLY | os.O_TRUNC), str(spare)
            except FileNotFoundError:
                continue  # removed meanwhile (a clear): try the next

    def _recycle(self, message_id: str) -> None:
        """Evict a message, keeping its files for the next messages while spares are few."""
        if len(self._spares) + 2 > SPARES:
            self._remove(message_id)
            return
        for suffix in (_META, _RAW):  # the metadata first: the message is gone at once
            spare = self.directory / f"{_SPARE_PREFIX}{secrets.token_hex(6)}"
            try:
                os.replace(self._path(message_id, suffix), spare)
            except FileNotFoundError:
                continue
            self._spares.append(spare)

    def _remove(self, message_id: str) -> None:
        self._path(message_id, _META).unlink(missing_ok=True)  # first: the message is gone
        self._path(message_id, _RAW).unlink(missing_ok=True)

    def _names(self) -> builtins.list[os.DirEntry[str]]:
        try:
            with os.scandir(self.directory) as entries:
                return list(entries)
        except FileNotFoundError:
            return []

    def _ids(self) -> builtins.list[str]:
        return [
            name[: -len(_META)]
            for name in (entry.name for entry in self._names())
            if name.endswith(_META) and _ID.fullmatch(name[: -len(_META)])
        ]

    def _entries(self) -> builtins.list[_Entry]:
        """Complete messages (both files present), oldest first, with their raw sizes."""
        names = self._names()
        metas = {e.name[: -len(_META)] for e in names if e.name.endswith(_META)}
        entries: builtins.list[_Entry] = []
        for item in names:
            message_id = item.name[: -len(_RAW)]
            if item.name.endswith(_RAW) and message_id in metas and _ID.fullmatch(message_id):
                try:
                    entries.append(_Entry(message_id, item.stat().st_size))
                except FileNotFoundError:
                    continue
        return sorted(entries, key=lambda e: e.id)

    def _marker(self) -> int | None:
        try:
            return os.stat(self.directory / _MARKER).st_mtime_ns
        except FileNotFoundError:
            return None

    def _changed(self) -> None:
        """Tell every writer (in any process) to read the directory again before its next add."""
        self._index = None
        with contextlib.suppress(FileNotFoundError):  # no directory yet: no writer to tell
            (self.directory / _MARKER).write_bytes(str(time.time_ns()).encode())

    def _current_index(self) -> dict[str, int]:
        """The messages on disk: the kept index, or read again after a delete or clear anywhere."""
        marker = self._marker()
        if self._index is None or marker != self._seen:
            self._index = {entry.id: entry.size for entry in self._entries()}
            self._spares = [Path(e.path) for e in self._names() if e.name.startswith(_SPARE_PREFIX)]
            self._seen = marker
        return self._index

    def _evict(self, index: dict[str, int], *, keep: str) -> None:
        total = sum(index.values())
        for message_id in sorted(index):  # oldest first (ids sort by time)
            if len(index) <= self.max_messages and total <= self.max_bytes:
                break
            if message_id == keep:
                continue
            self._recycle(message_id)
            total -= index.pop(message_id)
            log.debug("sandbox evicted %s to stay within its limits", message_id)

    def _sweep_orphans(self, *, max_age: float = _ORPHAN_AGE) -> None:
        """Remove temporary files and raw files without metadata left by a crash."""
        names = self._names()
        metas = {e.name[: -len(_META)] for e in names if e.name.endswith(_META)}
        now = time.time()
        for item in names:
            stem = item.name[: -len(_RAW)] if item.name.endswith(_RAW) else None
            orphan = item.name.startswith(_TEMP_PREFIX) or (
                stem is not None and stem not in metas and _ID.fullmatch(stem) is not None
            )
            if not orphan:
                continue
            try:
                if now - item.stat().st_mtime >= max_age:
                    Path(item.path).unlink(missing_ok=True)
            except FileNotFoundError:
                continue

    def _read_summary(self, message_id: str) -> CapturedSummary | None:
        try:
            data = json.loads(self._path(message_id, _META).read_bytes())
            return CapturedSummary.from_dict(data)
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            log.warning("sandbox metadata of %s is damaged; it is skipped", message_id)
            return None
