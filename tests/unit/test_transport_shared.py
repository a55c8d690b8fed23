"""The transport's shared base: one translation of network and TLS failures, one stage
timer and one clear-text login rule for SMTP, IMAP and POP3, with each protocol's
names and ports in the messages."""

from __future__ import annotations

import socket
import ssl

import pytest

from mailwright.domain.smtp import Security
from mailwright.errors import (
    CertificateUntrustedError,
    TargetConnectError,
    TargetError,
    TargetTimeoutError,
    TargetTLSError,
)
from mailwright.secrets import Secret
from mailwright.transport.base import (
    Endpoint,
    Login,
    ProtocolInfo,
    clear_text_login_hint,
    login_without_tls,
    timed_stage,
)
from mailwright.transport.imap import IMAP
from mailwright.transport.pop3 import POP3
from mailwright.transport.smtp import SMTP
from mailwright.transport.translate import (
    causes,
    disconnected,
    network_failure,
    timeout_failure,
    tls_failure_in,
    unverified,
)


def endpoint(port: int, security: Security = Security.STARTTLS) -> Endpoint:
    return Endpoint(
        target_name="t",
        host="mail.example.org",
        port=port,
        security=security,
        ssl_context=ssl.create_default_context(),
        connect_timeout=7,
        command_timeout=30,
    )


LOGIN = Login(key_name="ops", username="ops@example.org", password=Secret("pw-123456"))


def test_causes_follows_the_chain_once_even_when_it_loops() -> None:
    first, second = ValueError("a"), OSError("b")
    first.__cause__ = second
    second.__context__ = first
    assert list(causes(first)) == [first, second]


def test_a_certificate_failure_anywhere_in_the_chain_is_named_untrusted() -> None:
    cert = ssl.SSLCertVerificationError(1, "certificate verify failed")
    cert.verify_message = "self-signed certificate"
    outer = OSError("handshake failed")
    outer.__cause__ = cert
    error = tls_failure_in(outer, stage="tls", endpoint=endpoint(993, Security.SSL), protocol=IMAP)
    assert isinstance(error, CertificateUntrustedError)
    assert error.verify_message == "self-signed certificate"


@pytest.mark.parametrize(("protocol", "port"), [(SMTP, 465), (IMAP, 993), (POP3, 995)])
def test_a_plain_text_answer_to_implicit_tls_names_the_protocol(protocol: ProtocolInfo, port: int) -> None:
    plain = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    plain.reason = "WRONG_VERSION_NUMBER"
    error = tls_failure_in(plain, stage="tls", endpoint=endpoint(port, Security.SSL), protocol=protocol)
    assert isinstance(error, TargetTLSError)
    assert error.hint == f"port {port} speaks plain {protocol.name} first: choose starttls"


def test_no_tls_failure_in_a_plain_socket_error() -> None:
    assert (
        tls_failure_in(ConnectionResetError(104, "reset"), stage="rcpt", endpoint=endpoint(25), protocol=SMTP)
        is None
    )


def test_timeout_hints_follow_the_stage_and_the_protocol_ports() -> None:
    silent = timeout_failure(endpoint(143), IMAP, "connect")
    assert silent.message == "mail.example.org:143 did not answer in time during connect"
    assert silent.hint == "no greeting within 7 s; if port 143 expects implicit TLS (like 993), choose ssl"
    handshake = timeout_failure(endpoint(465, Security.SSL), SMTP, "tls")
    assert handshake.hint == "raise the connect timeout (now 7 s) or check the server and port"
    command = timeout_failure(endpoint(587), SMTP, "rcpt")
    assert isinstance(command, TargetTimeoutError)
    assert command.hint == "raise the command timeout (now 30 s) or check the server's health"


def test_disconnects_name_the_stage_and_the_implicit_tls_port() -> None:
    at_data = disconnected(endpoint(587), SMTP, "data")
    assert "may or may not have been accepted" in at_data.message
    on_ssl_port = disconnected(endpoint(995), POP3, "connect", "EOF\r\nforged")
    assert (
        on_ssl_port.message == "mail.example.org:995 closed the connection during connect (EOF\\r\\nforged)"
    )
    assert on_ssl_port.hint == "port 995 expects implicit TLS: choose ssl"
    assert disconnected(endpoint(110), POP3, "connect").hint is None


def test_network_failures_name_the_protocol_and_its_ports() -> None:
    unknown = network_failure(
        endpoint(993), IMAP, socket.gaierror(-2, "Name or service not known"), during="connect"
    )
    assert (
        unknown.message == "cannot resolve the IMAP server name 'mail.example.org': Name or service not known"
    )
    refused = network_failure(endpoint(587), SMTP, ConnectionRefusedError(111, "refused"), during=None)
    assert (
        refused.hint == "check the SMTP port (465 for ssl, 587 for starttls) and that the server is running"
    )
    reset = ConnectionResetError(104, "Connection reset by peer")
    assert network_failure(endpoint(587), SMTP, reset, during=None).message == (
        "cannot connect to mail.example.org:587: Connection reset by peer"
    )
    assert network_failure(endpoint(143), IMAP, reset, during="select").message == (
        "cannot talk to mail.example.org:143 during select: Connection reset by peer"
    )


def _fail_in_stage(
    timings: dict[str, float], stage: str, failure: BaseException, *, keep_cause: bool = True
) -> None:
    with timed_stage(
        timings,
        stage,
        failures=(OSError, ValueError),
        translate=lambda exc: TargetConnectError(f"translated: {exc}"),
        keep_cause=keep_cause,
    ):
        raise failure


def test_timed_stage_times_translates_and_keeps_the_first_stage() -> None:
    timings: dict[str, float] = {}
    with pytest.raises(TargetConnectError) as info:
        _fail_in_stage(timings, "mail", OSError("boom"))
    assert info.value.message == "translated: boom"
    assert info.value.stage == "mail" and isinstance(info.value.__cause__, OSError)
    assert timings["mail"] >= 0

    early = TargetConnectError("already translated")  # also an OSError: not translated again
    early.stage = "connect"
    with pytest.raises(TargetError) as kept:
        _fail_in_stage(timings, "rcpt", early)
    assert kept.value is early and early.stage == "connect"
    assert "rcpt" in timings


def test_timed_stage_can_leave_the_library_exception_out_of_the_chain() -> None:
    with pytest.raises(TargetError) as info:
        _fail_in_stage({}, "auth", ValueError("535 reply that echoes the password"), keep_cause=False)
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize(("protocol", "port"), [(SMTP, 587), (IMAP, 143), (POP3, 110)])
def test_a_login_never_goes_in_clear_text_unless_the_target_says_none(
    protocol: ProtocolInfo, port: int
) -> None:
    refused = login_without_tls(endpoint(port), protocol, LOGIN, tls_up=False)
    assert isinstance(refused, TargetTLSError)
    assert "the login of account key 'ops' would travel in clear text; it was not sent" in refused.message
    assert login_without_tls(endpoint(port), protocol, LOGIN, tls_up=True) is None
    assert login_without_tls(endpoint(port, Security.NONE), protocol, LOGIN, tls_up=False) is None


def test_clear_text_login_hints_name_each_protocols_ports() -> None:
    assert clear_text_login_hint(465, SMTP) == "port 465 expects implicit TLS: choose ssl"
    assert clear_text_login_hint(587, SMTP) == (
        "use security ssl on port 465, or a port where the server offers STARTTLS (587); "
        "only on a trusted network choose security none, where the login travels in clear text"
    )
    assert "port 995, or a port where the server offers STLS (110)" in clear_text_login_hint(110, POP3)


def test_unverified_endpoint_accepts_any_certificate_and_gives_up_sooner() -> None:
    probe = unverified(endpoint(993, Security.SSL))
    assert probe.ssl_context.verify_mode == ssl.CERT_NONE and not probe.ssl_context.check_hostname
    assert probe.connect_timeout == 5.0 and probe.host == "mail.example.org"


def test_response_codes_keep_their_hierarchy() -> None:
    # RFC 3206: POP3 response codes are hierarchical; [SYS/TEMP] is transient, [SYS/PERM] is not.
    from mailwright.transport.replies import response_code

    assert response_code("[SYS/TEMP] try again later") == "SYS/TEMP"
    assert response_code("[AUTHENTICATIONFAILED] bad") == "AUTHENTICATIONFAILED"
    assert response_code("no code here") is None
