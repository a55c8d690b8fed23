"""The file store: attachments read from mail, kept by their SHA-256, referenced as ``sha256:<hex>``.

Read Email and email triggers put each downloaded attachment here and hand out the
reference, so run records stay small and a later Send Email step can attach the very
same bytes (``attachments: [{file_name: …, file: sha256:…}]``). Content-addressed: the
same attachment read twice is stored once. Files are written atomically (a temporary
file renamed into place) and readable by the service's user only.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from mailwright.errors import NotFoundError, ValidationError

__all__ = ["FileStore", "is_file_ref"]

_REF = re.compile(r"^sha256:([0-9a-f]{64})$")


def is_file_ref(value: str) -> bool:
    return _REF.match(value) is not None


class FileStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest

    def put(self, data: bytes) -> str:
        """Store `data` (once per content) and return its reference."""
        digest = hashlib.sha256(data).hexdigest()
        path = self._path(digest)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
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
                f"no stored file {ref}",
                hint="it was read on another machine, or its file was removed: read the mail again",
            ) from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise NotFoundError(f"the stored file {ref} is damaged (its content no longer matches)")
        return data
