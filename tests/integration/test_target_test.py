"""The connection test: its report, and each misconfiguration named with its fix."""

from __future__ import annotations

import socket

from mailwright.services.app import Services
from tests.integration.conftest import PASSWORD, Targets
from tests.support.smtpserver import RawLineServer, SMTPServerFactory
from tests.support.tlsfiles import TLSFiles


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_report_of_a_healthy_starttls_target(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory(tls="starttls", users={"alice@example.org": PASSWORD}, size_limit=10_000_000)
    target = targets.target(server, security="starttls", key=targets.key())
    report = await mw.targets.test(target.display_name)
    assert report.ok, report.error
    assert [s.name for s in report.steps] == ["connect", "ehlo", "starttls", "auth", "quit"]
    assert all(s.ok and s.ms >= 0 for s in report.steps)
    assert report.capabilities["starttls"] is True
    assert "PLAIN" in report.capabilities["auth"]
    assert report.capabilities["size"] == 10_000_000
    assert report.capabilities["smtputf8"] is True
    assert report.tls is not None and report.tls["version"] in ("TLSv1.2", "TLSv1.3")
    assert report.tls["verified"] is True
    assert "localhost" in report.tls["certificate"]["names"]
    assert report.authenticated_as == "alice@example.org"
    assert report.auth_mechanism == "PLAIN"
    assert report.warnings == []
    stored = mw.targets.get(target.id)
    assert stored.last_test is not None and stored.last_test.ok


async def test_ssl_against_a_plain_port(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory()
    target = targets.target(server, security="ssl")
    report = await mw.targets.test(target.display_name)
    assert not report.ok and report.error is not None
    assert "answered in plain text" in report.error["message"]
    assert report.error["hint"] == f"port {server.port} speaks plain SMTP first: choose starttls"
    assert report.steps[0].name == "connect" and not report.steps[0].ok


async def test_starttls_against_an_implicit_tls_port(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory(tls="ssl")
    target = targets.target(server, security="starttls", connect_timeout=1.5)
    report = await mw.targets.test(target.display_name)
    assert not report.ok and report.error is not None
    assert "expects implicit TLS; this target is set to starttls" in report.error["message"]
    assert report.error["hint"] == f"port {server.port} expects implicit TLS: choose ssl"


async def test_untrusted_certificate_names_the_ca_and_the_fix(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory, tls_files: TLSFiles
) -> None:
    server = smtp_server_factory(tls="ssl")
    target = targets.target(server, security="ssl", ca_file=str(tls_files.other_ca_path))
    report = await mw.targets.test(target.display_name)
    assert not report.ok and report.error is not None
    assert report.error["code"] == "certificate_untrusted"
    message = report.error["message"]
    assert "is not trusted" in message and "issued by" in message and "localhost" in message
    assert "--ca-file" in report.error["hint"]


async def test_untrusted_certificate_after_starttls(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory, tls_files: TLSFiles
) -> None:
    server = smtp_server_factory(tls="starttls")
    target = targets.target(server, security="starttls", ca_file=str(tls_files.other_ca_path))
    report = await mw.targets.test(target.display_name)
    assert report.error is not None and report.error["code"] == "certificate_untrusted"
    assert report.error["stage"] == "starttls"
    assert "issued by" in report.error["message"]


async def test_certificate_for_another_host(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory(tls="ssl", tls_cert="wrong_host")
    target = targets.target(server, security="ssl")
    report = await mw.targets.test(target.display_name)
    assert report.error is not None
    assert report.error["message"] == "the certificate of 127.0.0.1 is for wrong.example, not for '127.0.0.1'"
    assert "a name the certificate lists" in report.error["hint"]


async def test_disabled_validation_connects_but_warns_loudly(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory(tls="ssl", tls_cert="wrong_host")
    target = targets.target(server, security="ssl", ca_file=None, disable_certificate_validation=True)
    report = await mw.targets.test(target.display_name)
    assert report.ok
    assert report.tls is not None and report.tls["verified"] is False
    assert any("DISABLED" in w for w in report.warnings)


async def test_auth_refused(mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory) -> None:
    server = smtp_server_factory(tls="ssl", users={"alice@example.org": "other"})
    target = targets.target(server, security="ssl", key=targets.key())
    report = await mw.targets.test(target.display_name)
    assert report.error is not None and report.error["code"] == "auth_error"
    assert "refused the login of account key 'alice' (user alice@example.org): 535" in report.error["message"]
    assert PASSWORD not in str(report.as_dict())


async def test_auth_offered_only_after_starttls(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory(tls="starttls", users={"alice@example.org": PASSWORD})
    target = targets.target(server, security="none", key=targets.key())
    report = await mw.targets.test(target.display_name)
    assert report.error is not None
    assert "offers no AUTH" in report.error["message"]
    assert report.error["hint"] == "the server offers AUTH only after STARTTLS: choose starttls"
    assert any("plain text" in w for w in report.warnings)


async def test_no_auth_offered_though_a_key_is_set(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory()
    target = targets.target(server, security="none", key=targets.key())
    report = await mw.targets.test(target.display_name)
    assert report.error is not None
    assert "offers no AUTH, but this target uses account key 'alice'" in report.error["message"]
    assert "No Account Keys" in report.error["hint"]


async def test_open_relay_target_warned_when_server_wants_auth(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory(tls="ssl", users={"alice@example.org": PASSWORD})
    target = targets.target(server, security="ssl")
    report = await mw.targets.test(target.display_name)
    assert report.ok
    assert any("No Account Keys" in w for w in report.warnings)


async def test_starttls_required_but_not_offered(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory()
    target = targets.target(server, security="starttls")
    report = await mw.targets.test(target.display_name)
    assert report.error is not None
    assert "does not offer STARTTLS, and this target requires it" in report.error["message"]
    optional = targets.target(server, security="starttls", starttls_required=False)
    report = await mw.targets.test(optional.display_name)
    assert report.ok
    assert any("did not offer STARTTLS" in w for w in report.warnings)


async def test_nothing_listening(mw: Services, targets: Targets) -> None:
    class Closed:
        port = free_port()

    target = targets.target(Closed(), security="none")
    report = await mw.targets.test(target.display_name)
    assert report.error is not None
    assert "nothing listens on port" in report.error["message"]


async def test_silent_server_times_out_with_a_hint(mw: Services, targets: Targets) -> None:
    with RawLineServer("silent") as silent:
        target = targets.target(silent, security="none", connect_timeout=1)
        report = await mw.targets.test(target.display_name)
    assert report.error is not None and report.error["code"] == "timeout"
    assert "did not answer in time during connect" in report.error["message"]
    assert "implicit TLS" in report.error["hint"]
