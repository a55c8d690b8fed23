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
    """Remembers revealed secrets and scrubs them, and their base64 forms, from text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def register(self, value: str) -> None:
        if len(value) < 4 or value in self._values:
            return
        with self._lock:
            self._values.add(value)
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
    """Encrypts and decrypts account-key secrets with a key ring."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ConfigError("no secret key configured")
        self._current = key_id(keys[0])
        self._ring = {key_id(k): AESGCM(k) for k in keys}

    @property
    def current_key_id(self) -> str:
        return self._current

    @classmethod
    def from_texts(cls, texts: list[str]) -> SecretBox:
        return cls([_decode_key(t) for t in texts if t.strip()])

    def encrypt(self, plaintext: str, *, context: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._ring[self._current].encrypt(nonce, plaintext.encode(), context.encode())
        blob = base64.b64encode(nonce + sealed).decode()
        return f"{_FORMAT}:{self._current}:{blob}"

    def decrypt(self, stored: str, *, context: str) -> Secret:
        try:
            fmt, kid, blob = stored.split(":", 2)
        except ValueError as exc:
            raise SecretError("a stored secret is damaged (unknown format)") from exc
        if fmt != _FORMAT:
            raise SecretError(f"a stored secret uses an unknown format {fmt!r}")
        cipher = self._ring.get(kid)
        if cipher is None:
            raise SecretError(
                f"a stored secret was encrypted with key {kid}, which is not configured "
                f"(configured: {', '.join(sorted(self._ring))})",
                hint="set MAILWRIGHT_SECRET_KEY to include the key that encrypted it, "
                "or restore the secret.key file of this data directory",
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


def load_key_file(path: Path) -> str:
    """Read the key file, creating it with mode 0600 on first use.

    The new key is written to a private temporary file and published with a
    hard link, so a second process starting at the same moment either wins the
    race or reads the complete key, never an empty file.
    """
    if not path.exists():
        fd, temporary = tempfile.mkstemp(prefix=".secret-", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(generate_key() + "\n")
            with contextlib.suppress(FileExistsError):
                os.link(temporary, path)
        finally:
            os.unlink(temporary)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        logging.getLogger(__name__).warning(
            "secret key file %s is readable by others (mode %o); run chmod 600 on it", path, mode
        )
    key = path.read_text().strip()
    if not key:
        raise ConfigError(f"the secret key file {path} is empty", hint="restore it from a backup")
    return key
