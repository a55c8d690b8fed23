"""What every protocol client shares: where a server is, who logs in, and what differs per protocol.

SMTP (`transport.smtp`), IMAP (`transport.imap`) and POP3 (`transport.pop3`) build on
these; the error translation they share is in `transport.translate`, TLS in
`transport.tls`, and the masking of server text in `transport.replies`. This module
imports no protocol library, so importing `Login` costs nothing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from mailwright.domain.smtp import Security
from mailwright.errors import TargetError, TargetTLSError

if TYPE_CHECKING:  # annotations only: importing `Login` stays cheap (no ssl, no cryptography)
    import ssl

    from mailwright.secrets import Secret


class TokenSource(Protocol):
    """An OAuth2 account key's access tokens (XOAUTH2, OAUTHBEARER, Microsoft Graph).

    `access_token()` gives a token valid for a while yet (refreshed ahead of expiry, one
    refresh at a time per key); `refresh=True` after a server refused the last one.
    """

    async def access_token(self, *, refresh: bool = False) -> Secret: ...


@dataclass(frozen=True, slots=True)
class Login:
    """The credentials of an account key, ready for AUTH or LOGIN.

    With `tokens` set the key is an OAuth2 key: the transport logs in with an access token
    (SASL XOAUTH2 or OAUTHBEARER as `username`, or a bearer header), and `password` is empty.
    SMTP, IMAP and POP3 fetch the token as they open (`transport.sasl.bearer_login`) and
    carry it in a copy of the login as its `password`, so it is masked as a password is.
    """

    key_name: str
    username: str
    password: Secret
    tokens: TokenSource | None = None


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


def implicit_tls_hint(port: int) -> str:
    return f"port {port} expects implicit TLS: choose ssl"


def clear_text_login_hint(port: int, protocol: ProtocolInfo) -> str:
    """How to keep a password off the wire in clear text, for a target that would send it so."""
    if port == protocol.ssl_port:
        return implicit_tls_hint(port)
    return (
        f"use security ssl on port {protocol.ssl_port}, or a port where the server offers "
        f"{protocol.starttls_command} ({protocol.starttls_port}); only on a trusted network choose "
        "security none, where the login travels in clear text"
    )


def login_without_tls(
    endpoint: Endpoint, protocol: ProtocolInfo, login: Login, *, tls_up: bool
) -> TargetTLSError | None:
    """The rule every protocol's login keeps: a password crosses the network unencrypted only
    where the target says security none. The refusal to raise otherwise, or None."""
    ep = endpoint
    if tls_up or ep.security is Security.NONE:
        return None
    return TargetTLSError(
        f"{ep.address}: TLS is not up, so the login of account key {login.key_name!r} would "
        "travel in clear text; it was not sent",
        target=ep.target_name,
        hint=clear_text_login_hint(ep.port, protocol),
    )


def ms(started: float) -> float:
    """Milliseconds since `started` (a `time.perf_counter()` reading), as reports show them."""
    return round((time.perf_counter() - started) * 1000, 2)


@contextlib.contextmanager
def timed_stage(
    timings: dict[str, float],
    stage: str,
    *,
    failures: tuple[type[Exception], ...],
    translate: Callable[[Exception], TargetError],
    keep_cause: bool = True,
) -> Iterator[None]:
    """One stage of a session (connect, tls, login, a command…): timed into `timings[stage]`,
    its failures named by stage.

    A Mailwright error keeps the first stage it was raised at. A library's exception
    (one of `failures`) becomes `translate(exc)`, raised from it, or with no chain when
    `keep_cause` is False (where the library's exception holds a reply that may echo a
    credential).
    """
    started = time.perf_counter()
    try:
        yield
    except TargetError as exc:  # before `failures`: TargetConnectError is also an OSError
        exc.stage = exc.stage or stage
        raise
    except failures as exc:
        error = translate(exc)
        error.stage = stage
        raise error from (exc if keep_cause else None)
    finally:
        timings[stage] = timings.get(stage, 0.0) + ms(started)


__all__ = [
    "Endpoint",
    "Login",
    "ProtocolInfo",
    "clear_text_login_hint",
    "implicit_tls_hint",
    "login_without_tls",
    "ms",
    "timed_stage",
]
