"""Finding 2: a login goes out only over TLS, unless the target says security none.

A man in the middle who strips STARTTLS from the EHLO answer must not read the login:
a STARTTLS target with an account key whose server does not offer STARTTLS fails
before AUTH, with the reason and the fix, also where starttls_required is off (the
port-25 default). An open relay without a key still sends. A target with security none
and a key works, and says loudly on its page, in `targets show` and in the test report
that the login travels in clear text.
"""

from __future__ import annotations

import pytest

from mailwright.domain.smtp import Security
from mailwright.errors import TargetTLSError
from mailwright.secrets import Secret
from mailwright.services.app import Services
from mailwright.targets.smtp import settings_from_input
from mailwright.transport.smtp import Login, SMTPConnection, SMTPEndpoint
from mailwright.transport.tls import build_ssl_context
from tests.integration.conftest import Targets
from tests.integration.test_web_targets import Browserless, web
from tests.security.servers import EchoSMTPServer
from tests.support.cli import CLI, assert_ok
from tests.support.tlsfiles import TLSFiles

__all__ = ["web"]

LOGIN = Login(key_name="alice", username="alice@example.org", password=Secret("Str1pped-TLS-pw"))


def test_port_25_defaults_to_optional_starttls() -> None:
    # What port 25 does by default: STARTTLS when offered (relays there often have none).
    settings = settings_from_input({"server": "relay.example.org", "port": 25})
    assert settings.security is Security.STARTTLS and settings.starttls_required is False


@pytest.mark.parametrize("starttls_required", [False, True])
async def test_stripped_starttls_fails_before_auth_with_the_fix(
    tls_files: TLSFiles, starttls_required: bool
) -> None:
    with EchoSMTPServer(tls="none", auth="accept") as server:
        connection = SMTPConnection(
            SMTPEndpoint(
                target_name="relay",
                host="127.0.0.1",
                port=server.port,
                security=Security.STARTTLS,
                starttls_required=starttls_required,
                ssl_context=build_ssl_context(ca_file=str(tls_files.ca_path), verify=True),
                connect_timeout=5,
                command_timeout=5,
            )
        )
        with pytest.raises(TargetTLSError) as caught:
            await connection.open(LOGIN)
        await connection.close()
        assert server.auth_lines == [], "the login was sent in clear text"
    error = caught.value
    assert error.stage == "starttls"
    assert "did not offer STARTTLS" in error.message and "clear text" in error.message
    assert error.hint is not None and "ssl on port 465" in error.hint


async def test_open_relay_without_a_key_still_sends_without_starttls(mw: Services, targets: Targets) -> None:
    with EchoSMTPServer(tls="none", auth="refuse") as server:
        target = targets.target(server, security="starttls", starttls_required=False)
        report = await mw.targets.test(target.display_name)
        assert report.ok, report.error
        assert any("did not offer STARTTLS" in w for w in report.warnings)
        assert server.auth_lines == []


def _clear_text(text: str) -> bool:
    return "LOGIN TRAVELS IN CLEAR TEXT" in text.upper()


async def test_security_none_with_a_key_says_so_loudly_everywhere(
    mw: Services, targets: Targets, cli: CLI, web: Browserless
) -> None:
    with EchoSMTPServer(tls="none", auth="accept") as server:
        target = targets.target(server, security="none", key=targets.key(), display_name="Plain")
        report = await mw.targets.test(target.display_name)
        assert report.ok, report.error
        assert server.auth_lines and not server.auth_lines[0].over_tls  # asked for explicitly
    assert any(_clear_text(w) for w in report.warnings), report.warnings
    shown = assert_ok(cli("targets", "show", "Plain"))
    assert _clear_text(shown.stderr), str(shown)
    page = web.client.get(f"/targets/{target.id}")
    assert page.status_code == 200
    assert _clear_text(page.text), page.text
