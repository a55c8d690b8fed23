"""The file store: attachments read from mail, kept by their SHA-256, referenced as ``sha256:<hex>``.

Read Email and email triggers put each downloaded attachment here and hand out the
reference, so run records stay small and a later Send Email step can attach the very
same bytes (``attachments: [{file_name: …, file: sha256:…}]``). Content-addressed: the
same attachment read twice is stored once. Files are written atomically (a temporary
file renamed into place) and readable by the service's user only.

Retention (`mailwright files prune`, ``MAILWRIGHT_FILES_KEEP_DAYS``) goes by a file's
modified time, which `put` refreshes each time the same content is stored again: a file
counts as old when it was last *read from mail* long ago.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mailwright.errors import NotFoundError, ValidationError

__all__ = ["INCOMING_PREFIX", "STALE_INCOMING_SECONDS", "FileStore", "StoredFile", "is_file_ref"]

_REF = re.compile(r"^sha256:([0-9a-f]{64})$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_SHARD = re.compile(r"^[0-9a-f]{2}$")
INCOMING_PREFIX = ".incoming-"  # a file being written; renamed into place when complete
STALE_INCOMING_SECONDS = 3600.0  # older than this, a temporary file is the leftover of a crash


def is_file_ref(value: str) -> bool:
    return _REF.match(value) is not None


@dataclass(frozen=True)
class StoredFile:
    ref: str  # sha256:<hex>
    size: int  # bytes
    modified: float  # the file's modified time (seconds since the epoch)


class FileStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest

    def put(self, data: bytes) -> str:
        """Store `data` (once per content) and return its reference."""
        digest = hashlib.sha256(data).hexdigest()
        path = self._path(digest)
        try:
            # Stored already: its modified time says "read again now", so retention keeps it.
            os.utime(path)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=INCOMING_PREFIX)
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                os.replace(temporary, path)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        return f"sha256:{digest}"

    def get(self, ref: str) -> bytes:
        """The bytes of a reference; a clear error when it is malformed, unknown or damaged."""
        found = _REF.match(ref.strip())
        if found is None:
            raise ValidationError(
                f"{ref!r} is not a file reference",
                field="file",
                hint="use the `file` value that read_email gave for the attachment (sha256:…)",
            )
        digest = found.group(1)
        try:
            data = self._path(digest).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(
                f"the file {ref} is no longer stored; it may have been pruned by file retention "
                "(`mailwright files prune`, MAILWRIGHT_FILES_KEEP_DAYS)",
                field="file",
                hint="read the mail again to store the attachment anew; if it was read on another "
                "host, share MAILWRIGHT_FILES_DIR between the hosts",
            ) from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise NotFoundError(f"the stored file {ref} is damaged (its content no longer matches)")
        return data

    def iter_files(self) -> Iterator[StoredFile]:
        """Every stored file, shard by shard (the order of the directory, not sorted).

        Temporary ``.incoming-*`` files are never listed; those older than an hour are
        the leftovers of a process that died while writing, and are removed on the way.
        Files that vanish while being listed (another process pruned them) are skipped.
        """
        try:
            shards = sorted(os.scandir(self.root), key=lambda e: e.name)
        except FileNotFoundError:
            return  # nothing was ever stored
        stale_before = time.time() - STALE_INCOMING_SECONDS
        for shard in shards:
            if not (_SHARD.match(shard.name) and shard.is_dir(follow_symlinks=False)):
                continue
            try:
                entries = list(os.scandir(shard.path))
            except FileNotFoundError:
                continue
            for entry in entries:
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if entry.name.startswith(INCOMING_PREFIX):
                    if info.st_mtime < stale_before:
                        Path(entry.path).unlink(missing_ok=True)
                    continue
                if _DIGEST.match(entry.name) and entry.name[:2] == shard.name and entry.is_file():
                    yield StoredFile(f"sha256:{entry.name}", info.st_size, info.st_mtime)

    def delete(self, ref: str, *, modified_before: float | None = None) -> bool:
        """Remove a stored file; False when it was not there (or was stored again since `modified_before`).

        `modified_before` guards against a race with `put`: the same content stored again
        (by a mail read just now) refreshes the modified time, and the file then stays.
        """
        found = _REF.match(ref.strip())
        if found is None:
            raise ValidationError(f"{ref!r} is not a file reference", field="file")
        path = self._path(found.group(1))
        try:
            if modified_before is not None and path.stat().st_mtime >= modified_before:
                return False
            path.unlink()
        except FileNotFoundError:
            return False
        return True
