"""OAuth2 (XOAUTH2) account keys the whole way a user goes, against real Postfix and Dovecot.

Everything Mailwright does here goes through the installed ``mailwright`` command
(tests/support/cli.py): an OAuth2 key is created with a refresh token, an SMTP and an
IMAP target use it, ``targets test`` names the SASL mechanism, ``send`` reaches the
mailbox (checked in Dovecot's Maildir), ``read`` reads it back, and a workflow run
sends through it. The access tokens are Mailwright's own: it gets them from the OAuth2
token server stand-in (tests/support/oauth_server.py, over https with the test CA) by
the refresh-token grant, and Dovecot's ``oauth2`` passdb checks each one by asking that
same server (its ``introspect``, behind the RFC 7662 endpoint of
tests/support/dovecot_oauth.py); Postfix authenticates through Dovecot.

Then the grant is revoked on the token server: the next send, connection test and run
fail once with "re-authorize this key: mailwright account-keys authorize NAME" (one
token request each, no retry loop). No refresh token, client secret or access token
appears in any output, run record or file of the data directory. With a token lifetime
of a few seconds, a second run after the first token expired gets a new one first.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import CLI, CLIResult, assert_error, assert_ok
from tests.support.dovecot_oauth import TokenIntrospection
from tests.support.mailstack import MailStack, missing_binaries
from tests.support.oauth_server import OAuthClient, OAuthTestServer
from tests.support.tlsfiles import TLSFiles

pytestmark = pytest.mark.timeout(240)

SCOPES = "https://mail.example.test/ offline_access"
KEY = "mailbox-oauth"
SMTP_TARGET = "OAuth submission"
IMAP_TARGET = "OAuth IMAP"
WORKFLOW = "OAuth notice"
REAUTHORIZE = f"re-authorize this key: mailwright account-keys authorize {KEY}"
EXPIRY_WAIT = 30.0  # seconds at most for a short-lived token to expire


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oauth(tls_files: TLSFiles) -> Iterator[OAuthTestServer]:
    """The token server: issues the keys' tokens (over https, trusted with --ca-file)."""
    with OAuthTestServer(ssl_context=tls_files.server_context()) as server:
        yield server


@pytest.fixture(scope="module")
def introspection(oauth: OAuthTestServer) -> Iterator[TokenIntrospection]:
    """Dovecot's RFC 7662 endpoint, answered by the token server (it records what was asked)."""
    with TokenIntrospection(validator=oauth.introspect) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def oauth_stack(introspection: TokenIntrospection) -> Iterator[MailStack]:
    """Postfix + Dovecot whose oauth2 passdb asks the token server whether a token is active."""
    missing = missing_binaries()
    if missing:
        pytest.fail(f"Postfix/Dovecot programs not found ({', '.join(missing)})", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("the e2e mail stack must run as root (Postfix/Dovecot)", pytrace=False)
    with MailStack(oauth2_introspection_url=introspection.url) as stack:
        yield stack


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[CLI]:
    runner = CLI(tmp_path / "home")
    yield runner
    runner.close()
    runner.assert_no_traceback()


@dataclass
class Account:
    """A Dovecot mailbox, an app registered on the token server, and the user's grant to it."""

    address: str
    client_id: str
    client_secret: str
    refresh_token: str


@pytest.fixture
def account(oauth: OAuthTestServer, oauth_stack: MailStack) -> Account:
    tag = uuid.uuid4().hex[:8]
    address = oauth_stack.add_user(f"oauth-{tag}", f"unused-password-{uuid.uuid4().hex}")
    client = oauth.register(OAuthClient(f"mail-app-{tag}", secret=f"client-secret-{uuid.uuid4().hex}"))
    assert client.secret is not None
    refresh = oauth.issue_refresh_token(client.client_id, SCOPES, subject=address)
    return Account(address, client.client_id, client.secret, refresh)


# --- helpers ---------------------------------------------------------------------------


def create_key(cli: CLI, oauth: OAuthTestServer, account: Account, tls_files: TLSFiles) -> CLIResult:
    return assert_ok(
        cli(
            "account-keys", "create", "--type", "oauth2", "--name", KEY, "--provider", "custom",
            "--token-endpoint", oauth.token_endpoint(), "--client-id", account.client_id,
            "--client-secret-env", "MW_CLIENT_SECRET", "--refresh-token-env", "MW_REFRESH_TOKEN",
            "--username", account.address, "--scopes", SCOPES, "--ca-file", tls_files.ca_path,
            env={"MW_CLIENT_SECRET": account.client_secret, "MW_REFRESH_TOKEN": account.refresh_token},
        )
    )  # fmt: skip


def create_targets(cli: CLI, stack: MailStack) -> None:
    common = ("--server", stack.host, "--ca-file", stack.ca_cert_path, "--account-key", KEY, "--timeout", 15)
    assert_ok(
        cli(
            "targets", "create", "--type", "smtp", "--name", SMTP_TARGET,
            "--port", stack.submission_port, "--security", "starttls", *common,
        )
    )  # fmt: skip
    assert_ok(
        cli(
            "targets", "create", "--type", "imap", "--name", IMAP_TARGET,
            "--port", stack.imaps_port, "--security", "ssl", *common,
        )
    )  # fmt: skip


def create_workflow(cli: CLI, tmp_path: Path, account: Account) -> None:
    document = tmp_path / "notice.yaml"
    document.write_text(
        f"""\
name: {WORKFLOW}
inputs:
  subject: {{type: string}}
target: {SMTP_TARGET}
steps:
  - id: notice
    activity: send_email
    with:
      to: [{account.address}]
      subject: "{{{{ inputs.subject }}}}"
      body: sent by a workflow run with an OAuth2 key
""",
        encoding="utf-8",
    )
    assert_ok(cli("workflows", "create", "--file", document))


def run_workflow(cli: CLI, subject: str) -> dict[str, Any]:
    """`workflows run --wait --json` (exit 0 or 1), then the run as `runs show --json` records it."""
    result = cli("workflows", "run", WORKFLOW, "--input", f"subject={subject}", "--wait", "--json")
    assert result.returncode in (0, 1), str(result)
    run_id = result.json()["id"]
    shown: dict[str, Any] = assert_ok(cli("runs", "show", run_id, "--json")).json()
    return shown


def refresh_requests(oauth: OAuthTestServer, account: Account) -> int:
    """Refresh-token grants the token server received from this account's app."""
    return sum(
        1
        for form in list(oauth.requests)
        if form.get("client_id") == account.client_id and form.get("grant_type") == "refresh_token"
    )


def tokens_of(oauth: OAuthTestServer, account: Account, kind: str) -> list[str]:
    return [
        t
        for t, info in list(oauth.tokens.items())
        if info.client_id == account.client_id and info.kind == kind
    ]


def revoke_grant(oauth: OAuthTestServer, account: Account) -> None:
    """The user withdraws consent: every refresh and access token of the app stops working."""
    for token in tokens_of(oauth, account, "refresh") + tokens_of(oauth, account, "access"):
        oauth.revoke(token)


def stored_messages(stack: MailStack, address: str, count: int) -> list[Any]:
    return [message_from_bytes(raw, policy=policy.default) for raw in stack.wait_for_maildir(address, count)]


def assert_secrets_kept(cli: CLI, oauth: OAuthTestServer, account: Account) -> None:
    """No secret of the key, nor any token the server issued for it, was shown or stored."""
    secrets = [
        account.client_secret,
        *tokens_of(oauth, account, "refresh"),  # the first one, and those the server rotated in
        *tokens_of(oauth, account, "access"),
    ]
    assert account.refresh_token in secrets
    for secret in secrets:
        cli.assert_never_shown(secret, username=account.address)
        cli.assert_not_stored(secret)


# --- the tests -------------------------------------------------------------------------


def test_an_oauth2_key_sends_reads_and_asks_to_reauthorize_once_revoked(
    cli: CLI,
    oauth: OAuthTestServer,
    oauth_stack: MailStack,
    account: Account,
    tls_files: TLSFiles,
    tmp_path: Path,
) -> None:
    stack = oauth_stack
    create_key(cli, oauth, account, tls_files)
    shown = assert_ok(cli("account-keys", "show", KEY, "--json")).json()
    assert shown["authorized"] is True
    assert shown["secrets"] == {"client_secret": "********", "refresh_token": "********"}
    create_targets(cli, stack)
    assert refresh_requests(oauth, account) == 0  # nothing asked for a token yet

    # The connection tests log in with a token Mailwright got by refreshing.
    smtp_test = assert_ok(cli("targets", "test", SMTP_TARGET))
    assert f"Authenticated as {account.address} (OAUTHBEARER)" in smtp_test.stdout
    imap_test = assert_ok(cli("targets", "test", IMAP_TARGET, "--json")).json()
    assert imap_test["ok"] is True, imap_test
    assert imap_test["auth_mechanism"] == "AUTHENTICATE OAUTHBEARER"
    assert imap_test["authenticated_as"] == account.address
    assert [s["name"] for s in imap_test["steps"]][:2] == ["token", "connect"]
    assert refresh_requests(oauth, account) == 1  # the second process took the stored token

    # Send: Postfix took it after a SASL login Dovecot checked with the token server.
    subject = f"OAuth2 hello {uuid.uuid4().hex[:8]}"
    sent = assert_ok(
        cli("send", "--target", SMTP_TARGET, "--to", account.address, "--subject", subject,
            "--body", "by token")
    )  # fmt: skip
    assert sent.stdout.startswith("sent: "), str(sent)
    (stored,) = stored_messages(stack, account.address, 1)
    assert stored["Subject"] == subject
    assert stored["From"] == account.address
    assert stored.get_content().strip() == "by token"
    message_id = str(stored["Message-ID"])
    assert message_id in sent.stdout

    # Read it back over IMAP with the same key.
    read = assert_ok(cli("read", "--target", IMAP_TARGET, "--subject", subject, "--json")).json()
    assert read["count"] == 1, read
    (message,) = read["messages"]
    assert message["subject"] == subject
    assert message["message_id"] == message_id

    # A workflow run sends through the key too, and its record holds no secret.
    create_workflow(cli, tmp_path, account)
    run = run_workflow(cli, f"run {uuid.uuid4().hex[:8]}")
    assert run["status"] == "succeeded", run
    stored_messages(stack, account.address, 2)
    assert refresh_requests(oauth, account) == 1  # one access token served every process so far

    # The user revokes the grant: each attempt fails once, asking to re-authorize the key.
    revoke_grant(oauth, account)
    asked = refresh_requests(oauth, account)
    failed = cli("send", "--target", SMTP_TARGET, "--to", account.address, "--subject", "after revocation")
    assert_error(failed, 1, REAUTHORIZE)
    assert refresh_requests(oauth, account) == asked + 1  # refused token, one refresh, refused: done

    tested = cli("targets", "test", IMAP_TARGET)
    assert tested.returncode == 1, str(tested)
    assert REAUTHORIZE in tested.stderr
    assert "FAIL token" in tested.stdout and "FAIL login" in tested.stdout  # refused, then not refreshed
    assert refresh_requests(oauth, account) == asked + 2

    report = cli("targets", "test", SMTP_TARGET, "--json")
    assert report.returncode == 1, str(report)
    assert report.json()["ok"] is False
    assert REAUTHORIZE in report.json()["error"]["message"]
    steps = {s["name"]: s["ok"] for s in report.json()["steps"]}
    assert [name for name, ok in steps.items() if not ok] == ["token", "auth"]  # refused, then not refreshed
    assert refresh_requests(oauth, account) == asked + 3

    refused_run = run_workflow(cli, "after revocation")
    assert refused_run["status"] == "failed", refused_run
    (step,) = refused_run["steps"]
    assert (step["status"], step["attempts"]) == ("failed", 1), step  # not deferred to try again
    assert step["error"]["code"] == "reauthorize_key"
    assert REAUTHORIZE in step["error"]["message"]
    assert refresh_requests(oauth, account) == asked + 4
    assert len(stack.maildir_messages(account.address)) == 2  # nothing more arrived

    assert_secrets_kept(cli, oauth, account)


def test_a_run_after_the_token_expired_refreshes_it_first(
    cli: CLI,
    oauth: OAuthTestServer,
    oauth_stack: MailStack,
    introspection: TokenIntrospection,
    account: Account,
    tls_files: TLSFiles,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(oauth, "token_lifetime", 5)
    create_key(cli, oauth, account, tls_files)
    create_targets(cli, oauth_stack)
    create_workflow(cli, tmp_path, account)

    first = run_workflow(cli, "first")
    assert first["status"] == "succeeded", first
    assert refresh_requests(oauth, account) == 1
    (token,) = tokens_of(oauth, account, "access")

    # Wait (bounded) until the token server itself no longer accepts that token.
    deadline = time.monotonic() + EXPIRY_WAIT
    while oauth.introspect(token)["active"]:
        assert time.monotonic() < deadline, "the short-lived token did not expire"
        time.sleep(0.2)

    asked_before = len(introspection.introspected)
    second = run_workflow(cli, "second")
    assert second["status"] == "succeeded", second
    assert refresh_requests(oauth, account) == 2  # refreshed once, ahead of the login:
    (fresh,) = [t for t in tokens_of(oauth, account, "access") if t != token]
    assert introspection.introspected[asked_before:] == [fresh]  # the expired one was never offered
    assert [m["Subject"] for m in stored_messages(oauth_stack, account.address, 2)] == ["first", "second"]
    assert_secrets_kept(cli, oauth, account)
