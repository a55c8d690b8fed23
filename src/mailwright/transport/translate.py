"""Library, `ssl` and socket failures translated into the Mailwright error tree.

Written once for SMTP, IMAP and POP3: each protocol first recognises its own
library's exceptions (a server reply, a protocol violation) and hands the rest,
the network's failures, to these functions, which name the most specific error
class and the likely fix (wrong TLS mode for the port, untrusted certificate, a
name that does not resolve, nothing listening). Messages differ per protocol only
by its `ProtocolInfo` (name and ports).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from typing import TypeVar

from mailwright.domain.smtp import Security
from mailwright.errors import (
    CertificateUntrustedError,
    TargetConnectError,
    TargetError,
    TargetTimeoutError,
    TargetTLSError,
)
from mailwright.transport.base import Endpoint, ProtocolInfo, implicit_tls_hint
from mailwright.transport.replies import quote_foreign
from mailwright.transport.tls import (
    CertificateInfo,
    build_ssl_context,
    describe_verification_failure,
    is_plaintext_answer,
    probe_implicit_tls,
)

EndpointT = TypeVar("EndpointT", bound=Endpoint)


def not_connected(ep: Endpoint) -> TargetConnectError:
    """A command on a session that is not (or no longer) open."""
    return TargetConnectError(f"not connected to {ep.address}", target=ep.target_name)


def causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what caused it, and so on (each once: a chain may loop)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def tls_failure_in(
    exc: BaseException, *, stage: str, endpoint: Endpoint, protocol: ProtocolInfo
) -> TargetError | None:
    """The error for a certificate or TLS failure anywhere in `exc`'s chain; None if there is none."""
    ep = endpoint
    chain = list(causes(exc))
    cert_error = next((e for e in chain if isinstance(e, ssl.SSLCertVerificationError)), None)
    if cert_error is not None:
        message, hint = describe_verification_failure(ep.host, cert_error.verify_message, None)
        return CertificateUntrustedError(
            message, verify_message=cert_error.verify_message, target=ep.target_name, hint=hint
        )
    ssl_error = next((e for e in chain if isinstance(e, ssl.SSLError)), None)
    if ssl_error is not None:
        return tls_failure(ep, protocol, stage, ssl_error)
    return None


def tls_failure(ep: Endpoint, protocol: ProtocolInfo, stage: str, error: ssl.SSLError) -> TargetTLSError:
    reason = error.reason or str(error)
    if ep.security is Security.SSL and is_plaintext_answer(error):
        return TargetTLSError(
            f"TLS handshake with {ep.address} failed: the server answered in plain text ({reason})",
            target=ep.target_name,
            hint=f"port {ep.port} speaks plain {protocol.name} first: choose starttls",
        )
    return TargetTLSError(
        f"TLS handshake with {ep.address} failed during {stage}: {reason}",
        target=ep.target_name,
        hint="check that the server supports TLS 1.2 or newer and that the port and security mode match",
    )


def timeout_failure(ep: Endpoint, protocol: ProtocolInfo, stage: str) -> TargetTimeoutError:
    if stage == "connect" and ep.security is not Security.SSL:
        hint = (
            f"no greeting within {ep.connect_timeout:g} s; if port {ep.port} expects implicit TLS "
            f"(like {protocol.ssl_port}), choose ssl"
        )
    elif stage in ("connect", "tls"):
        hint = f"raise the connect timeout (now {ep.connect_timeout:g} s) or check the server and port"
    else:
        hint = f"raise the command timeout (now {ep.command_timeout:g} s) or check the server's health"
    return TargetTimeoutError(
        f"{ep.address} did not answer in time during {stage}", target=ep.target_name, hint=hint
    )


def disconnected(ep: Endpoint, protocol: ProtocolInfo, stage: str, detail: str = "") -> TargetConnectError:
    """The server closed the connection at `stage`; `detail` is what the library said, if anything."""
    if stage == "data":  # SMTP: the end of data may have been taken before the line dropped
        message = (
            f"{ep.address} closed the connection during DATA: the message may or may not have been accepted"
        )
    else:
        suffix = f" ({quote_foreign(detail)})" if detail else ""
        message = f"{ep.address} closed the connection during {stage}{suffix}"
    hint = None
    if stage == "connect" and ep.security is not Security.SSL and ep.port == protocol.ssl_port:
        hint = implicit_tls_hint(ep.port)
    return TargetConnectError(message, target=ep.target_name, hint=hint)


def is_network_error(exc: BaseException) -> bool:
    """An `OSError` that `network_failure` explains (a resolver error, a refusal, an errno)."""
    return isinstance(exc, socket.gaierror | ConnectionRefusedError) or (
        isinstance(exc, OSError) and exc.errno is not None
    )


def network_failure(
    ep: Endpoint, protocol: ProtocolInfo, error: OSError, *, during: str | None
) -> TargetConnectError:
    """A resolver error, a refused connection, or another socket error (named with its stage
    `during`, or, when None, as a failure to connect)."""
    text = error.strerror or str(error)
    if isinstance(error, socket.gaierror):
        return TargetConnectError(
            f"cannot resolve the {protocol.name} server name {ep.host!r}: {text}",
            target=ep.target_name,
            hint=(
                f"check the spelling of the {protocol.name} server, that DNS resolves the name from the "
                "machine Mailwright runs on, and that this machine has network access (no firewall or "
                "proxy in the way)"
            ),
        )
    if isinstance(error, ConnectionRefusedError):
        return TargetConnectError(
            f"{ep.address} refused the connection: nothing listens on port {ep.port}",
            target=ep.target_name,
            hint=(
                f"check the {protocol.name} port ({protocol.ssl_port} for ssl, {protocol.starttls_port} "
                "for starttls) and that the server is running"
            ),
        )
    if during is None:
        return TargetConnectError(f"cannot connect to {ep.address}: {text}", target=ep.target_name)
    return TargetConnectError(f"cannot talk to {ep.address} during {during}: {text}", target=ep.target_name)


# --- explaining a failed opening ------------------------------------------------------


async def explain_open_failure(
    exc: TargetError,
    *,
    endpoint: Endpoint,
    protocol: ProtocolInfo,
    peer_certificate: Callable[[], Awaitable[CertificateInfo | None]],
) -> TargetError:
    """`exc` with a diagnosis, when opening failed in a way one can look into: an untrusted
    certificate (whose is it, for which names?) or a silent port (does it expect implicit
    TLS?). `exc` itself when there is nothing to add."""
    if exc.stage == "token":  # the OAuth2 key's token endpoint failed, not this server
        return exc
    if isinstance(exc, CertificateUntrustedError):
        return explain_certificate(exc, endpoint=endpoint, certificate=await peer_certificate())
    if isinstance(exc, TargetTimeoutError):
        return await _explain_silence(exc, endpoint=endpoint, protocol=protocol)
    return exc


def unverified(endpoint: EndpointT) -> EndpointT:
    """`endpoint` that accepts any certificate and gives up sooner: to fetch, not trust,
    the certificate of a server whose certificate did not verify."""
    return replace(
        endpoint,
        ssl_context=build_ssl_context(ca_file=None, verify=False),
        connect_timeout=min(5.0, endpoint.connect_timeout),
    )


def explain_certificate(
    exc: CertificateUntrustedError, *, endpoint: Endpoint, certificate: CertificateInfo | None
) -> CertificateUntrustedError:
    ep = endpoint
    message, hint = describe_verification_failure(ep.host, exc.verify_message, certificate)
    explained = CertificateUntrustedError(
        message, verify_message=exc.verify_message, target=ep.target_name, hint=hint
    )
    explained.stage = exc.stage
    return explained


async def _explain_silence(
    exc: TargetTimeoutError, *, endpoint: Endpoint, protocol: ProtocolInfo
) -> TargetError:
    """No greeting in time: does the port expect implicit TLS?"""
    ep = endpoint
    if exc.stage != "connect" or ep.security is Security.SSL:
        return exc
    if await probe_implicit_tls(ep.host, ep.port, wait=min(3.0, ep.connect_timeout)) is None:
        return exc
    explained = TargetTLSError(
        f"{ep.address} sent no {protocol.name} greeting but completed a TLS handshake: "
        f"it expects implicit TLS; this target is set to {ep.security.value}",
        target=ep.target_name,
        hint=implicit_tls_hint(ep.port),
    )
    explained.stage = "connect"
    return explained


__all__ = [
    "causes",
    "disconnected",
    "explain_certificate",
    "explain_open_failure",
    "is_network_error",
    "network_failure",
    "not_connected",
    "timeout_failure",
    "tls_failure",
    "tls_failure_in",
    "unverified",
]
