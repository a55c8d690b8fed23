"""Secrets: a value type that never prints, encryption at rest, and log redaction.

Account-key passwords are stored as `mw1:<key id>:<base64(nonce | ciphertext)>`,
AES-256-GCM with the row's identity as associated data, so a ciphertext copied to
another row or field does not decrypt. The key id lets a deployment rotate keys:
`MAILWRIGHT_SECRET_KEY` may list several keys, the first one encrypts, all decrypt.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets as _stdlib_secrets
import tempfile
import threading
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

from mailwright.errors import ConfigError, SecretError

MASK = "********"
_FORMAT = "mw1"
_NONCE_BYTES = 12


class Secret:
    """A string that shows as ******** in repr, str, f-strings, logs and JSON.

    Only the transport layer calls `reveal()`, at the moment it hands the value to
    a server; revealing registers the value with the log redactor as a last line
    of defence.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        _REDACTOR.register(self._value)
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(("Secret", hashlib.sha256(self._value.encode()).digest()))

    def __reduce__(self) -> Any:
        raise TypeError("Secret values cannot be pickled")

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        def to_secret(value: Any) -> Secret:
            if isinstance(value, Secret):
                return value
            if isinstance(value, str):
                return Secret(value)
            raise ValueError("must be a string")

        return core_schema.no_info_plain_validator_function(
            to_secret,
            serialization=core_schema.plain_serializer_function_ser_schema(lambda _v: MASK),
            json_schema_input_schema=core_schema.str_schema(),
        )


class _Redactor:
    """Remembers revealed secrets and scrubs them, and their base64 forms, from text.

    OAuth2 access tokens are revealed anew at every refresh (hourly, per key): a service
    that runs for months would remember without end, so only the newest `KEPT` values are
    kept (the oldest go first: tokens long expired, and a password revealed again at its
    next use comes back to the front).
    """

    KEPT = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, None] = {}  # insertion-ordered: the oldest first
        self._pattern: re.Pattern[str] | None = None

    def register(self, value: str) -> None:
        if len(value) < 4:
            return
        with self._lock:
            if value in self._values:
                self._values.pop(value)
                self._values[value] = None  # in use again: the newest
                return
            self._values[value] = None
            while len(self._values) > self.KEPT:
                del self._values[next(iter(self._values))]
            self._pattern = None

    def _compiled(self) -> re.Pattern[str] | None:
        with self._lock:
            if self._pattern is None and self._values:
                plain = sorted(self._values, key=len, reverse=True)
                encoded = sorted({f for v in self._values for f in _base64_forms(v)}, key=len, reverse=True)
                # A base64 run that carries a secret is masked whole, so no
                # neighbouring characters leak part of it.
                b64_run = "[A-Za-z0-9+/]*(?:{})[A-Za-z0-9+/]*=*".format(
                    "|".join(re.escape(f) for f in encoded)
                )
                alternatives = [b64_run, *(re.escape(v) for v in plain)]
                self._pattern = re.compile("|".join(alternatives))
            return self._pattern

    def redact(self, text: str) -> str:
        pattern = self._compiled()
        if pattern is None:
            return text
        return pattern.sub(MASK, text)


def _base64_forms(value: str) -> set[str]:
    # Plain base64 of the secret, and its three alignments inside a longer
    # base64 stream (AUTH PLAIN encodes "\0user\0password" in one piece).
    raw = value.encode()
    forms = {base64.b64encode(raw).decode()}
    for pad in range(3):
        encoded = base64.b64encode(b"\0" * pad + raw).decode()
        # Drop the characters that mix padding bytes with the secret's own bytes.
        start = (pad * 4 + 2) // 3 if pad else 0
        end = len(encoded) - 4 if len(raw) > 6 else len(encoded)
        core = encoded[start:end].rstrip("=")
        if len(core) >= 6:
            forms.add(core)
    return forms


_REDACTOR = _Redactor()


def redact(text: str) -> str:
    """Replace every secret revealed in this process, and its base64 forms, by ********."""
    return _REDACTOR.redact(text)


class RedactingFilter(logging.Filter):
    """Logging filter that scrubs revealed secrets from every record's final text."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        if record.exc_info and not record.exc_text:
            # Format the traceback now, so the handler prints the scrubbed text.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


# --- encryption at rest -------------------------------------------------------


def generate_key() -> str:
    """A new random 256-bit key, URL-safe base64 (the form MAILWRIGHT_SECRET_KEY takes)."""
    return base64.urlsafe_b64encode(_stdlib_secrets.token_bytes(32)).decode()


def _decode_key(text: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(text.strip() + "=" * (-len(text.strip()) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(
            "the secret key is not valid base64",
            hint="create one with `mailwright secret-key generate` or leave MAILWRIGHT_SECRET_KEY unset",
        ) from exc
    if len(raw) != 32:
        raise ConfigError(
            f"the secret key must be 32 bytes of URL-safe base64; this one is {len(raw)} bytes",
            hint="create one with `mailwright secret-key generate`",
        )
    return raw


def key_id(raw_key: bytes) -> str:
    """A short public name for a key, stored beside each ciphertext."""
    return hashlib.sha256(b"mailwright-key-id" + raw_key).hexdigest()[:8]


class SecretBox:
    """Encrypts and decrypts account-key secrets with a key ring (the first key encrypts).

    A box made from a key file notices when the file changes (`mailwright secret-key
    rotate` rewrites it) and reads it again, so running servers and workers take up a
    rotated key without a restart.
    """

    def __init__(self, keys: list[bytes], *, source: str = "MAILWRIGHT_SECRET_KEY") -> None:
        self._lock = threading.Lock()
        self._source = source
        self._path: Path | None = None
        self._signature: tuple[int, int, int] | None = None
        self._set_keys(keys)

    def _set_keys(self, keys: list[bytes]) -> None:
        if not keys:
            raise ConfigError(f"no secret key configured in {self._source}")
        self._current = key_id(keys[0])
        self._ring = {key_id(k): AESGCM(k) for k in keys}

    @property
    def current_key_id(self) -> str:
        self._refresh()
        return self._current

    @property
    def key_ids(self) -> list[str]:
        """The ids of every key that decrypts, the current one first."""
        self._refresh()
        return [self._current, *sorted(set(self._ring) - {self._current})]

    @property
    def source(self) -> str:
        """Where the keys come from, in words (for messages)."""
        return self._source

    @classmethod
    def from_texts(cls, texts: list[str], *, source: str = "MAILWRIGHT_SECRET_KEY") -> SecretBox:
        return cls([_decode_key(t) for t in texts if t.strip()], source=source)

    @classmethod
    def from_key_file(cls, path: Path, *, create: bool) -> SecretBox:
        """The keys of `path` (created with one new key when missing and `create`)."""
        source = f"the key file {path}" + ("" if create else " (MAILWRIGHT_SECRET_KEY_FILE)")
        box = cls([_decode_key(t) for t in load_key_file(path, create=create)], source=source)
        box._path = path
        box._signature = _file_signature(path)
        return box

    def _refresh(self) -> None:
        if self._path is None:
            return
        signature = _file_signature(self._path)
        if signature is None or signature == self._signature:
            return  # unchanged (or briefly unreadable: keep the keys already read)
        with self._lock:
            if signature != self._signature:
                self._set_keys([_decode_key(t) for t in load_key_file(self._path, create=False)])
                self._signature = signature

    def encrypt(self, plaintext: str, *, context: str) -> str:
        self._refresh()
        nonce = os.urandom(_NONCE_BYTES)
        kid = self._current
        sealed = self._ring[kid].encrypt(nonce, plaintext.encode(), context.encode())
        blob = base64.b64encode(nonce + sealed).decode()
        return f"{_FORMAT}:{kid}:{blob}"

    def decrypt(self, stored: str, *, context: str) -> Secret:
        self._refresh()
        try:
            fmt, kid, blob = stored.split(":", 2)
        except ValueError as exc:
            raise SecretError("a stored secret is damaged (unknown format)") from exc
        if fmt != _FORMAT:
            raise SecretError(f"a stored secret uses an unknown format {fmt!r}")
        cipher = self._ring.get(kid)
        if cipher is None:
            raise SecretError(
                f"a stored secret was encrypted with key {kid}, which is not configured: "
                f"{self._source} holds {', '.join(self.key_ids)}",
                hint=f"give Mailwright the key {kid}: point MAILWRIGHT_SECRET_KEY_FILE at the key file "
                "that holds it (restore it from your key backup), or add it to MAILWRIGHT_SECRET_KEY "
                "after the current key; if that key is lost, set the account key's password again",
            )
        try:
            raw = base64.b64decode(blob)
            plain = cipher.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], context.encode())
        except (InvalidTag, binascii.Error, ValueError) as exc:
            raise SecretError(
                f"a stored secret does not decrypt with key {kid}: the data is damaged "
                "or was copied from another record"
            ) from exc
        return Secret(plain.decode())


def stored_key_id(stored: str) -> str | None:
    """The id of the key a stored secret (`mw1:<key id>:…`) was encrypted with."""
    parts = stored.split(":", 2)
    return parts[1] if len(parts) == 3 and parts[0] == _FORMAT else None


def _file_signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def load_key_file(path: Path, *, create: bool = True) -> list[str]:
    """The keys of a key file (one a line, the first encrypts), creating it with mode 0600.

    The new key is written to a private temporary file and published with a hard
    link, so a second process starting at the same moment either wins the race or
    reads the complete key, never an empty file. Without `create`, a missing file is
    a ConfigError that says how to fix it.
    """
    if not path.exists():
        if not create:
            raise ConfigError(
                f"the secret key file {path} (MAILWRIGHT_SECRET_KEY_FILE) does not exist",
                hint="point MAILWRIGHT_SECRET_KEY_FILE at the file that holds this database's key "
                "(restore it from your key backup); for a new installation create one with "
                "`(umask 077; mailwright secret-key generate > FILE)`",
            )
        fd, temporary = tempfile.mkstemp(prefix=".secret-", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(generate_key() + "\n")
            with contextlib.suppress(FileExistsError):
                os.link(temporary, path)
        finally:
            os.unlink(temporary)
    try:
        mode = path.stat().st_mode & 0o777
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not text"
        raise ConfigError(
            f"cannot read the secret key file {path}: {reason}",
            hint="make it a readable file holding the key (mode 0600), or set MAILWRIGHT_SECRET_KEY_FILE "
            "to the right file",
        ) from exc
    if mode & 0o077:
        logging.getLogger(__name__).warning(
            "secret key file %s is readable by others (mode %o); run chmod 600 on it", path, mode
        )
    keys = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not keys:
        raise ConfigError(f"the secret key file {path} is empty", hint="restore it from a backup")
    for number, key in enumerate(keys, start=1):
        try:
            _decode_key(key)
        except ConfigError as exc:
            raise ConfigError(
                f"the secret key file {path}, line {number}: {exc}",
                hint="each line holds one key from `mailwright secret-key generate`; restore the file "
                "from your key backup",
            ) from None
    return keys


def write_key_file(path: Path, keys: list[str]) -> None:
    """Replace the key file with `keys` (mode 0600), atomically: a crash leaves the old or the new."""
    write_private_file(path, "".join(f"{key}\n" for key in keys))


def write_private_file(path: Path, text: str) -> None:
    """Write `text` to `path` with mode 0600 (whatever the umask), atomically and durably."""
    fd, temporary = tempfile.mkstemp(prefix=".private-", dir=path.parent)  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
