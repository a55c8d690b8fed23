"""What a server said, made safe to keep and show.

Every text a server sends may end up in an error, a run record, a connection-test
report, a log line or a terminal. Two things happen to it here, at the seam, before
any of that:

- `ReplyMask` hides the account key's own password in every form a server could
  echo it: as typed, as the IMAP LOGIN command quotes it, and in base64: alone
  (AUTH LOGIN), inside AUTH PLAIN's ``authzid NUL user NUL password`` with and without
  the authorization identity, inside XOAUTH2's ``user=… ^Aauth=Bearer …^A^A`` (an OAuth2
  key's access token stands in the password's place: `transport.sasl`), and at
  each of the three alignments it can take inside any longer base64 run, so a
  combination not listed here is hidden too. A base64 run that carries the password
  is masked whole. The mask is built from the key itself, not from the process's
  memory of revealed secrets, so a worker that never revealed the key masks the same.
- `quote_foreign` shows a text from a server that may not be a mail server at all (an
  HTTP answer, a metadata service) bounded and with its control characters visible,
  so a test report cannot be used to read another service or to forge lines.
"""

from __future__ import annotations

import base64
import functools
import re
import unicodedata
from typing import TYPE_CHECKING, Any

from mailwright.secrets import MASK, redact

if TYPE_CHECKING:
    from mailwright.errors import TargetError
    from mailwright.transport.base import Login

# A foreign text (a banner, a reply that is not the protocol's) is quoted at most this long.
FOREIGN_LIMIT = 200
# A server reply kept as a field (the `reply` of an error, a recipient's outcome).
REPLY_LIMIT = 2000

_B64_CHARS = "[A-Za-z0-9+/]"


def auth_strings(username: str, password: str) -> list[str]:
    """The strings AUTH and LOGIN commands carry the password in, before base64."""
    return [
        password,  # AUTH LOGIN's second answer
        f"\0{username}\0{password}",  # AUTH PLAIN without an authorization identity
        f"{username}\0{username}\0{password}",  # AUTH PLAIN acting as itself
        f"user={username}\x01auth=Bearer {password}\x01\x01",  # XOAUTH2 (a token in the password field)
        f"{username}:{password}",  # HTTP Basic, for protocols that will use it
    ]


def _aligned_cores(secret: bytes) -> list[str]:
    """The base64 characters that depend only on `secret`, at each of its three alignments."""
    cores: list[str] = []
    for pad in range(3):
        encoded = base64.b64encode(b"\0" * pad + secret).decode()
        start = (pad * 4 + 2) // 3
        end = ((pad + len(secret)) * 4) // 3
        core = encoded[start:end]
        if len(core) >= 4:
            cores.append(core)
    return cores


@functools.lru_cache(maxsize=64)
def _pattern(username: str, password: str) -> re.Pattern[str] | None:
    if not password:
        return None
    encoded = {
        base64.b64encode(text.encode()).decode().rstrip("=") for text in auth_strings(username, password)
    }
    encoded.update(_aligned_cores(password.encode()))
    encoded.discard("")
    quoted = password.replace("\\", "\\\\").replace('"', '\\"')
    plain = {password, quoted}
    alternatives = [
        # A base64 run that carries the password is masked whole: its neighbours leak nothing.
        "{c}*(?:{forms}){c}*=*".format(
            c=_B64_CHARS, forms="|".join(re.escape(f) for f in sorted(encoded, key=len, reverse=True))
        )
    ]
    for text in sorted(plain, key=len, reverse=True):
        if len(text) >= 4:
            alternatives.append(re.escape(text))
        else:  # a very short password is masked only where it stands alone
            alternatives.append(rf"(?<![\w]){re.escape(text)}(?![\w])")
    return re.compile("|".join(alternatives))


class ReplyMask:
    """Hides one account key's password, in every form a server could echo, from server text."""

    __slots__ = ("_pattern",)

    def __init__(self, pattern: re.Pattern[str] | None = None) -> None:
        self._pattern = pattern

    @classmethod
    def of(cls, login: Login | None) -> ReplyMask:
        if login is None:
            return NO_MASK
        return cls(_pattern(login.username, login.password.reveal()))

    def __bool__(self) -> bool:
        return self._pattern is not None

    def also(self, other: ReplyMask) -> ReplyMask:
        """A mask hiding what this one and `other` hide (an OAuth2 key's token before and after a refresh)."""
        if other._pattern is None or other._pattern is self._pattern:
            return self
        if self._pattern is None:
            return other
        return ReplyMask(re.compile(f"(?:{self._pattern.pattern})|(?:{other._pattern.pattern})"))

    def __call__(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(MASK, text)

    def error(self, error: TargetError) -> TargetError:
        """`error` with every text it carries masked (in place; returned for `raise`)."""
        if self._pattern is None:
            return error
        error.message = self(error.message)
        error.args = tuple(self(a) if isinstance(a, str) else a for a in error.args)
        if error.hint:
            error.hint = self(error.hint)
        fields: dict[str, Any] = vars(error)
        for name in ("reply", "verify_message"):
            if isinstance(fields.get(name), str):
                fields[name] = self(fields[name])
        recipients = fields.get("recipients")
        if isinstance(recipients, list):
            for outcome in recipients:
                if isinstance(outcome, dict) and isinstance(outcome.get("reply"), str):
                    outcome["reply"] = self(outcome["reply"])
        return error


NO_MASK = ReplyMask()


_CODE_RE = re.compile(r"^\[([A-Z/-]+)")  # POP3 codes are hierarchical: [SYS/TEMP] (RFC 3206)


def response_text(data: Any) -> str:
    """The human text of a server answer or a library error (bytes, lists, exceptions)."""
    if data is None:
        return ""
    if isinstance(data, BaseException):
        data = data.args[0] if data.args else str(data)
    if isinstance(data, list | tuple):
        data = data[-1] if data else ""
    if isinstance(data, bytes):
        data = data.decode("utf-8", "replace")
    return redact(str(data)).strip()


def response_code(text: str) -> str | None:
    """The bracketed response code at the start of a server text ([AUTHENTICATIONFAILED] …)."""
    match = _CODE_RE.match(text)
    return match.group(1) if match else None


def _visible(char: str) -> str:
    if char == "\n":
        return "\\n"
    if char == "\r":
        return "\\r"
    if char == "\t":
        return "\\t"
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


_INVISIBLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")


def escape_controls(text: str) -> str:
    """`text` with control, line-breaking and direction-changing characters shown as escapes."""
    escaped = _INVISIBLE.sub(lambda m: _visible(m.group()), text)
    if escaped.isprintable():
        return escaped
    return "".join(c if c.isprintable() or unicodedata.category(c) == "Zs" else _visible(c) for c in escaped)


def quote_foreign(text: str, limit: int = FOREIGN_LIMIT) -> str:
    """A text from a server, bounded to `limit` characters with control characters visible."""
    shown = escape_controls(text[:limit])
    if len(text) > limit:
        shown += f"… ({len(text) - limit} more characters)"
    return shown


def bound_reply(text: str, limit: int = REPLY_LIMIT) -> str:
    """A server reply kept as a field: line breaks kept, other controls visible, bounded."""
    lines = text[:limit].split("\n")
    shown = "\n".join(escape_controls(line) for line in lines)
    if len(text) > limit:
        shown += f"… ({len(text) - limit} more characters)"
    return shown


__all__ = [
    "FOREIGN_LIMIT",
    "NO_MASK",
    "REPLY_LIMIT",
    "ReplyMask",
    "auth_strings",
    "bound_reply",
    "escape_controls",
    "quote_foreign",
    "response_code",
    "response_text",
]
