"""OAuth2 account keys end to end against the token server stand-in (tests/support/oauth_server.py).

Through the installed `mailwright` command: a Graph key gets an access token by the
client-credentials flow; an XOAUTH2 key is authorized once with
`mailwright account-keys authorize NAME` (PKCE and the loopback redirect: the "browser" is
httpx), then logs in with refreshed tokens; a revoked grant says to re-authorize, once,
never in a retry loop. No secret or token is ever shown or stored in plain text.
"""

from __future__ import annotations

import asyncio
import queue
import re
import ssl
import subprocess
import threading
from collections.abc import Iterator

import httpx
import pytest

from mailwright.errors import TargetAuthError
from mailwright.oauth.tokens import forget
from mailwright.services.app import Services
from tests.support.cli import CLI, MAILWRIGHT, assert_error, assert_ok
from tests.support.oauth_server import OAuthClient, OAuthTestServer
from tests.support.tlsfiles import TLSFiles

GRAPH_SECRET = "graph-app-Secret~42"
OAUTH_SECRET = "oauth-client-secret-17"


@pytest.fixture
def server(tls_files: TLSFiles) -> Iterator[OAuthTestServer]:
    # Over https, as Microsoft's and Google's are: each key trusts the test CA (--ca-file).
    with OAuthTestServer(ssl_context=tls_files.server_context()) as srv:
        srv.register(OAuthClient("graph-app", secret=GRAPH_SECRET))
        srv.register(OAuthClient("mail-app", secret=OAUTH_SECRET))
        yield srv
    forget()


def _access_token(mw: Services, key: str, *, refresh: bool = False) -> str:
    login = mw.account_keys.login(key)
    assert login.tokens is not None
    return asyncio.run(login.tokens.access_token(refresh=refresh)).reveal()


def test_a_graph_key_gets_tokens_by_client_credentials(
    cli: CLI, mw: Services, server: OAuthTestServer, tls_files: TLSFiles
) -> None:
    assert_ok(
        cli(
            "account-keys", "create", "--type", "graph", "--name", "contoso", "--tenant-id", "contoso-tenant",
            "--client-id", "graph-app", "--client-secret-env", "MW_SECRET", "--login-url", server.base_url,
            "--ca-file", tls_files.ca_path,
            env={"MW_SECRET": GRAPH_SECRET},
        )
    )  # fmt: skip
    token = _access_token(mw, "contoso")
    seen = server.introspect(token)
    assert seen["active"] is True
    assert "graph.microsoft.com/.default" in seen["scope"]
    assert server.token_requests["client_credentials"] == 1
    assert _access_token(mw, "contoso") == token  # cached, not fetched again
    assert server.token_requests["client_credentials"] == 1
    cli.assert_not_stored(GRAPH_SECRET)
    cli.assert_not_stored(token)


def _authorize(
    cli: CLI, name: str, verify: ssl.SSLContext, *, device: OAuthTestServer | None = None
) -> tuple[int, str, str]:
    """`mailwright account-keys authorize NAME`, with the user following what it prints: the URL
    in a browser, or (`device`) the code entered on another device."""
    proc = subprocess.Popen(
        [str(MAILWRIGHT), "account-keys", "authorize", name, *(["--device-code"] if device else [])],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli.env,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout

    def pump() -> None:
        for line in stdout:
            lines.put(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    seen = ""
    while "http" not in seen:
        seen += lines.get(timeout=60)
    if device is not None:
        while "code" not in seen:
            seen += lines.get(timeout=60)
        device.approve_device(seen.strip().rstrip(".").rsplit(" ", 1)[-1])
    else:
        url = re.search(r"https?://\S+", seen)
        assert url, seen
        answer = httpx.get(url.group(0), follow_redirects=True, timeout=30, verify=verify)
        assert answer.status_code == 200, answer.text
    proc.wait(timeout=120)
    reader.join(timeout=60)
    assert proc.stderr is not None
    stderr = proc.stderr.read()
    while not lines.empty():
        seen += lines.get_nowait()
    return proc.returncode, seen, stderr


def test_an_xoauth2_key_is_authorized_once_then_logs_in(
    cli: CLI, mw: Services, server: OAuthTestServer, tls_files: TLSFiles
) -> None:
    assert_ok(
        cli(
            "account-keys", "create", "--type", "oauth2", "--name", "mail", "--username", "alice@example.org",
            "--client-id", "mail-app", "--client-secret-env", "MW_SECRET",
            "--token-endpoint", server.token_endpoint(),
            "--authorization-endpoint", server.authorization_endpoint(),
            "--scopes", "https://mail.example.org/IMAP offline_access", "--ca-file", tls_files.ca_path,
            env={"MW_SECRET": OAUTH_SECRET},
        )
    )  # fmt: skip
    before = cli("account-keys", "show", "mail", "--json").json()
    assert before["authorized"] is False
    code, out, err = _authorize(cli, "mail", tls_files.client_context())
    assert code == 0, out + err
    assert "authorized account key 'mail'" in out
    after = cli("account-keys", "show", "mail", "--json").json()
    assert after["authorized"] is True
    assert after["secrets"] == {"client_secret": "********", "refresh_token": "********"}
    sent = server.requests[-1]
    assert sent["grant_type"] == "authorization_code"
    assert len(sent["code_verifier"]) >= 43  # PKCE

    token = _access_token(mw, "mail")
    assert server.introspect(token)["active"] is True
    refresh_token = next(
        str(form["refresh_token"]) for form in reversed(server.requests) if form.get("refresh_token")
    )
    for secret in (OAUTH_SECRET, token, refresh_token):
        cli.assert_not_stored(secret)
        cli.assert_never_shown(secret)


def test_a_revoked_grant_says_to_reauthorize(
    mw: Services, server: OAuthTestServer, cli: CLI, tls_files: TLSFiles
) -> None:
    refresh = server.issue_refresh_token("mail-app", "https://mail.example.org/IMAP offline_access")
    assert_ok(
        cli(
            "account-keys", "create", "--type", "oauth2", "--name", "mail", "--username", "alice@example.org",
            "--client-id", "mail-app", "--client-secret-env", "MW_SECRET",
            "--refresh-token-env", "MW_REFRESH",
            "--token-endpoint", server.token_endpoint(), "--scopes", "https://mail.example.org/IMAP",
            "--ca-file", tls_files.ca_path,
            env={"MW_SECRET": OAUTH_SECRET, "MW_REFRESH": refresh},
        )
    )  # fmt: skip
    assert server.introspect(_access_token(mw, "mail"))["active"] is True
    server.revoke_all_refresh_tokens()
    asked = server.token_requests["refresh_token"]
    with pytest.raises(TargetAuthError) as refused:
        _access_token(mw, "mail", refresh=True)
    assert "re-authorize this key: mailwright account-keys authorize mail" in str(refused.value)
    assert server.token_requests["refresh_token"] == asked + 1  # asked once, not retried
    assert refresh not in str(refused.value)


def test_an_xoauth2_key_is_authorized_with_a_device_code(
    cli: CLI, mw: Services, server: OAuthTestServer, tls_files: TLSFiles
) -> None:
    assert_ok(
        cli(
            "account-keys", "create", "--type", "oauth2", "--name", "tv", "--username", "alice@example.org",
            "--client-id", "mail-app", "--client-secret-env", "MW_SECRET",
            "--token-endpoint", server.token_endpoint(),
            "--device-authorization-endpoint", server.device_endpoint(),
            "--scopes", "https://mail.example.org/IMAP offline_access", "--ca-file", tls_files.ca_path,
            env={"MW_SECRET": OAUTH_SECRET},
        )
    )  # fmt: skip
    code, out, err = _authorize(cli, "tv", tls_files.client_context(), device=server)
    assert code == 0, out + err
    assert "enter the code" in out
    assert cli("account-keys", "show", "tv", "--json").json()["authorized"] is True
    assert server.introspect(_access_token(mw, "tv"))["active"] is True
    assert_ok(
        cli(
            "account-keys", "create", "--type", "oauth2", "--name", "web-only", "--username", "a@example.org",
            "--client-id", "mail-app", "--token-endpoint", server.token_endpoint(),
        )
    )  # fmt: skip
    refused = cli("account-keys", "authorize", "web-only", "--device-code")
    assert_error(refused, 2, "no device-code endpoint")
    email = cli("account-keys", "create", "--name", "pw", "--username", "a@example.org",
                "--password-env", "P",
                env={"P": "pw-1"})  # fmt: skip
    assert_ok(email)
    assert_error(cli("account-keys", "authorize", "pw"), 2, "needs no authorization")
