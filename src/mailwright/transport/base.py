"""What every protocol client shares: where a server is, who logs in, and what differs per protocol.

SMTP (`transport.smtp`), IMAP (`transport.imap`) and POP3 (`transport.pop3`) build on
these; the error translation they share is in `transport.translate`, TLS in
`transport.tls`, and the masking of server text in `transport.replies`. This module
imports no protocol library, so importing `Login` costs nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: importing `Login` stays cheap (no ssl, no cryptography)
    import ssl

    from mailwright.domain.smtp import Security
    from mailwright.secrets import Secret


@dataclass(frozen=True, slots=True)
class Login:
    """The credentials of an account key, ready for AUTH or LOGIN."""

    key_name: str
    username: str
    password: Secret


@dataclass(frozen=True, slots=True)
class ProtocolInfo:
    """What differs between the protocols in diagnoses, hints and reports."""

    name: str  # SMTP, IMAP, POP3
    ssl_port: int  # 465, 993, 995
    starttls_port: int  # 587, 143, 110
    starttls_command: str  # STARTTLS, STLS


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Everything needed to reach one server, resolved from a target's settings."""

    target_name: str
    host: str  # ASCII form (A-labels for IDN)
    port: int
    security: Security
    ssl_context: ssl.SSLContext
    connect_timeout: float = 10.0
    command_timeout: float = 60.0

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def ms(started: float) -> float:
    """Milliseconds since `started` (a `time.perf_counter()` reading), as reports show them."""
    return round((time.perf_counter() - started) * 1000, 2)


__all__ = ["Endpoint", "Login", "ProtocolInfo", "ms"]
