"""TLS: contexts for targets, certificate descriptions, and probes that explain failures."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from mailwright.errors import TargetError, ValidationError
from mailwright.transport.outbound import open_socket

# OpenSSL reasons that mean "the peer did not speak TLS at all".
_PLAINTEXT_REASONS = {
    "WRONG_VERSION_NUMBER",
    "HTTP_REQUEST",
    "UNKNOWN_PROTOCOL",
    "RECORD_LAYER_FAILURE",
}


def build_ssl_context(*, ca_file: str | None, verify: bool) -> ssl.SSLContext:
    """The client context of a target: system store, or only the target's CA file."""
    if not verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif ca_file:
        try:
            context = ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ValidationError(
                f"cannot load the CA file {ca_file}: {exc}",
                field="ca_file",
                hint="give a readable PEM file with the CA certificate(s)",
            ) from exc
    else:
        context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def check_ca_file(path: str) -> str:
    """A CA file a target may use: it exists and holds at least one PEM certificate."""
    file = Path(path).expanduser()
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ValidationError(f"cannot read the CA file {path}: {exc.strerror}", field="ca_file") from exc
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise ValidationError(
            f"the CA file {path} holds no PEM certificate",
            field="ca_file",
            hint="give the CA certificate in PEM form (-----BEGIN CERTIFICATE-----)",
        )
    return str(file.resolve())


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    subject: str
    issuer: str
    names: list[str]
    not_after: str
    self_signed: bool

    def as_dict(self) -> dict[str, object]:
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "names": self.names,
            "not_after": self.not_after,
            "self_signed": self.self_signed,
        }


def certificate_info(der: bytes) -> CertificateInfo:
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
        names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        common = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        names = [str(c.value) for c in common]
    return CertificateInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        names=names,
        not_after=cert.not_valid_after_utc.astimezone(UTC).isoformat(),
        self_signed=cert.issuer == cert.subject,
    )


@dataclass(slots=True)
class TLSState:
    """How a connection's TLS came out: what a connection test reports."""

    version: str | None
    cipher: str | None
    certificate: CertificateInfo | None
    verified: bool

    def as_dict(self) -> dict[str, object]:
        cert = self.certificate
        return {
            "version": self.version,
            "cipher": self.cipher,
            "verified": self.verified,
            "certificate": cert.as_dict() if cert else None,
        }


def tls_state(ssl_object: object, context: ssl.SSLContext) -> TLSState | None:
    """The TLS state of a wrapped socket or an asyncio transport's SSL object; None if not TLS."""
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    der = ssl_object.getpeercert(binary_form=True)
    cipher = ssl_object.cipher()
    return TLSState(
        version=ssl_object.version(),
        cipher=cipher[0] if cipher else None,
        certificate=certificate_info(der) if der else None,
        verified=context.verify_mode != ssl.CERT_NONE,
    )


def is_plaintext_answer(error: ssl.SSLError) -> bool:
    reason = (error.reason or "").upper()
    return reason in _PLAINTEXT_REASONS or "WRONG_VERSION_NUMBER" in str(error).upper()


def describe_verification_failure(
    host: str, verify_message: str, certificate: CertificateInfo | None
) -> tuple[str, str]:
    """A message and a fix for a certificate that did not verify, naming the CA and names."""
    if certificate is None:
        return (
            f"the certificate of {host} is not trusted: {verify_message}",
            "give this target the issuing CA (--ca-file), or fix the server's certificate",
        )
    names = ", ".join(certificate.names) or "no names"
    if "hostname mismatch" in verify_message.lower() or "ip address mismatch" in verify_message.lower():
        return (
            f"the certificate of {host} is for {names}, not for {host!r}",
            "set the target's server to a name the certificate lists, or fix the server's certificate",
        )
    if "expired" in verify_message.lower():
        return (
            f"the certificate of {host} expired on {certificate.not_after}",
            "renew the server's certificate",
        )
    issuer = certificate.issuer
    kind = "a self-signed certificate" if certificate.self_signed else f"a certificate issued by {issuer!r}"
    return (
        f"the certificate of {host} is not trusted ({verify_message}): the server presents "
        f"{kind} for {names}, and that CA is not in the trust store",
        f"give this target the CA that issued it ({issuer}) with --ca-file PATH (PEM), "
        "or fix the server's certificate chain",
    )


async def probe_greeting(host: str, port: int, *, wait: float) -> bytes | None:
    """The first bytes a server sends on a plain TCP connection, or None if it stays silent."""
    try:
        sock = await open_socket(host, port, timeout=wait, target=None)  # within the outbound policy
        reader, writer = await asyncio.wait_for(asyncio.open_connection(sock=sock), timeout=wait)
    except (OSError, TimeoutError, TargetError):
        return None
    try:
        return await asyncio.wait_for(reader.read(512), timeout=wait) or None
    except (OSError, TimeoutError):
        return None
    finally:
        writer.close()


async def probe_implicit_tls(host: str, port: int, *, wait: float) -> CertificateInfo | None:
    """Whether the port completes a TLS handshake at once; its certificate if so."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        sock = await open_socket(host, port, timeout=wait, target=None)  # within the outbound policy
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection(sock=sock, ssl=context, server_hostname=host),
            timeout=wait,
        )
    except (OSError, TimeoutError, ssl.SSLError, TargetError):
        return None
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        return certificate_info(der) if der else None
    finally:
        writer.close()


def clear_text_login_warning(key_name: str, *, ssl_port: int) -> str:
    """What a target with security none and an account key says, loudly, wherever it is shown."""
    return (
        f"THE LOGIN TRAVELS IN CLEAR TEXT: security is none, so the password of account key "
        f"{key_name!r} crosses the network unencrypted and anyone on the path can read it; "
        f"choose ssl (port {ssl_port}) or starttls"
    )


# What a connection test warns about a target's security, whatever its protocol.
NO_TLS_WARNING = "no TLS: the password and mail cross the network in plain text"
UNVERIFIED_WARNING = (
    "certificate validation is DISABLED for this target: anyone on the network path "
    "can impersonate the server and read the password and mail; give a CA file instead"
)
