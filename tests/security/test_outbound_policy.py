"""Finding 9 (second half): targets may not point anywhere.

MAILWRIGHT_TARGET_DENY (default: link-local and cloud metadata addresses) and
MAILWRIGHT_TARGET_ALLOW are checked when a target is created or changed (an address
written as such) and when it connects (every address a name resolves to). A refused
target names the rule and how to change it. Loopback stays allowed. A foreign banner
is quoted in a connection-test error only bounded and with its control characters
visible.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mailwright.config import Settings
from mailwright.domain.hosts import DEFAULT_POLICY, OutboundPolicy
from mailwright.errors import ConfigError
from mailwright.services.app import Services
from mailwright.services.target_public import TargetPublic
from mailwright.services.targets import TargetCreate
from mailwright.transport.outbound import set_outbound_policy
from tests.security.servers import BannerServer, EchoSMTPServer
from tests.support.cli import CLI, assert_error, assert_ok

METADATA = ["169.254.169.254", "fd00:ec2::254", "100.100.100.200", "[fe80::1]", "::ffff:169.254.169.254"]


def relay(mw: Services, port: int, server: str, *, name: str = "relay") -> TargetPublic:
    return mw.targets.create(
        TargetCreate(
            display_name=name,
            server=server,
            port=port,
            security="none",
            no_account_keys=True,
            connect_timeout=5,
            command_timeout=5,
        )
    )


@pytest.fixture(autouse=True)
def _default_policy_afterwards() -> Iterator[None]:
    yield
    set_outbound_policy(DEFAULT_POLICY)  # the policy is the process's: leave the default


def test_the_default_policy_denies_link_local_and_metadata_but_not_loopback() -> None:
    for address in [
        "169.254.169.254",
        "169.254.1.1",
        "fe80::1",
        "fd00:ec2::254",
        "100.100.100.200",
        "::ffff:169.254.169.254",
    ]:
        assert DEFAULT_POLICY.refusing_rule(address) is not None, address
    for address in ["127.0.0.1", "::1", "10.1.2.3", "192.168.1.10", "100.100.100.201", "203.0.113.9"]:
        assert DEFAULT_POLICY.refusing_rule(address) is None, address
    allowed = OutboundPolicy.from_settings(None, "169.254.169.254/32")
    assert allowed.refusing_rule("169.254.169.254") is None
    assert allowed.refusing_rule("169.254.169.253") is not None


def test_a_bad_network_in_the_settings_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match=r"MAILWRIGHT_TARGET_DENY.*'10\.0\.0\.0/33'"):
        Settings(target_deny="169.254.0.0/16, 10.0.0.0/33")


def test_cli_refuses_metadata_addresses_with_the_rule_and_the_fix(cli: CLI) -> None:
    for address in METADATA:
        result = cli(
            "targets",
            "create",
            "--name",
            f"meta {address}",
            "--server",
            address,
            "--port",
            "587",
            "--no-account-keys",
        )
        stderr = assert_error(
            result, 2, "outbound policy", "MAILWRIGHT_TARGET_DENY", "MAILWRIGHT_TARGET_ALLOW"
        )
        assert "169.254.0.0/16" in stderr or "fe80::/10" in stderr or "/128" in stderr or "/32" in stderr
    assert_ok(
        cli(
            "targets",
            "create",
            "--name",
            "ok",
            "--server",
            "mail.example.org",
            "--port",
            "587",
            "--no-account-keys",
        )
    )
    # An update cannot move a target there either.
    assert_error(cli("targets", "update", "ok", "--server", "169.254.169.254"), 2, "outbound policy")
    # The allow list overrides the deny list.
    allowed = cli(
        "targets",
        "create",
        "--name",
        "allowed",
        "--server",
        "169.254.169.254",
        "--port",
        "587",
        "--no-account-keys",
        env={"MAILWRIGHT_TARGET_ALLOW": "169.254.169.254/32"},
    )
    assert_ok(allowed)


def test_api_refuses_a_metadata_target_with_422(api: httpx.Client) -> None:
    answer = api.post(
        "/api/v1/targets",
        json={
            "display_name": "meta",
            "server": "169.254.169.254",
            "port": 587,
            "security": "starttls",
            "no_account_keys": True,
        },
    )
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["field"] == "server"
    assert "169.254.0.0/16" in error["message"] and "MAILWRIGHT_TARGET_ALLOW" in error["hint"]


async def test_a_name_resolving_to_a_denied_address_is_refused_at_connect(tmp_path: Path) -> None:
    home = tmp_path / "home"
    mw = Services(Settings(home=home, target_deny="127.0.0.0/8,::1/128"))
    try:
        with EchoSMTPServer(tls="none", auth="accept") as server:
            target = relay(mw, server.port, "localhost")
            report = await mw.targets.test(target.display_name)
            assert not report.ok and report.error is not None
            assert report.error["code"] == "target_refused_by_policy"
            assert (
                "localhost resolves to 127.0.0.1" in report.error["message"]
                or "::1" in report.error["message"]
            )
            assert "127.0.0.0/8" in report.error["message"] or "::1/128" in report.error["message"]
            assert "MAILWRIGHT_TARGET_ALLOW" in report.error["hint"]
            # A literal is refused at creation already.
            with pytest.raises(Exception, match="outbound policy"):
                relay(mw, server.port, "127.0.0.1", name="literal")
    finally:
        mw.close()
    # Allowing the address lets the same target through.
    mw = Services(Settings(home=home, target_deny="127.0.0.0/8,::1/128", target_allow="127.0.0.1,::1"))
    try:
        with EchoSMTPServer(tls="none", auth="accept") as server:
            target = relay(mw, server.port, "localhost", name="allowed")
            report = await mw.targets.test(target.display_name)
            assert report.ok, report.error
    finally:
        mw.close()


@pytest.mark.parametrize(
    "banner",
    [
        b'HTTP/1.1 200 OK\r\nServer: metadata\r\n\r\n{"Token": "' + b"x" * 5000 + b'"}\x1b[2J\x07\r\n',
        b"220 " + b"x" * 5000 + b"\x1b[2J\x07 forged\r\n",
    ],
    ids=["http", "long-greeting"],
)
async def test_a_foreign_banner_is_quoted_bounded_and_escaped(mw: Services, banner: bytes) -> None:
    with BannerServer(banner) as server:
        target = relay(mw, server.port, "127.0.0.1")
        report = await mw.targets.test(target.display_name)
    assert not report.ok and report.error is not None
    for text in (report.error["message"], report.greeting):
        assert "x" * 250 not in text, text
        assert len(text) < 500, text
        assert not any(ord(c) < 32 or ord(c) == 0x7F for c in text), repr(text)
    if banner.startswith(b"HTTP"):
        assert "HTTP/1.1 200 OK\\r\\n" in report.error["message"]  # the line break shown, not made
