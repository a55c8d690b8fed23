"""Account-key types through the CLI, the API and the services: fields, secrets, and which targets take them.

Graph and OAuth2 keys are stored here without logging in (that needs the token
stand-ins: tests/integration/test_oauth_*.py and test_graph_*.py); what is checked is
what a user types and sees, and that no secret is ever shown or stored in plain text.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
import trustme

from mailwright.errors import ValidationError
from mailwright.services.account_keys import AccountKeyCreate, AccountKeyUpdate
from mailwright.services.app import Services
from mailwright.services.targets import TargetCreate
from tests.support.cli import CLI, assert_error, assert_ok

CLIENT_SECRET = "Graph~Secret-Value.4242"
REFRESH = "1//refresh-token-value-9876"
MASK = "********"


def _stored(home: Path) -> bytes:
    """Every byte of the database, to look for a secret in plain text."""
    data = b""
    for path in home.glob("mailwright.db*"):
        data += path.read_bytes()
    return data


def test_a_graph_key_from_the_cli_keeps_its_secret_secret(cli: CLI) -> None:
    created = assert_ok(
        cli(
            "account-keys", "create", "--type", "graph", "--name", "contoso", "--tenant-id",
            "contoso.onmicrosoft.com", "--client-id", "11111111-2222", "--client-secret-env", "MW_SECRET",
            "--json", env={"MW_SECRET": CLIENT_SECRET},
        )
    ).json()  # fmt: skip
    assert created["type"] == "graph"
    assert created["type_label"] == "OAuth2 Microsoft Graph Credentials"
    assert created["settings"]["tenant_id"] == "contoso.onmicrosoft.com"
    assert created["secrets"] == {"client_secret": MASK}
    shown = assert_ok(cli("account-keys", "show", "contoso"))
    listed = assert_ok(cli("account-keys", "list", "--json"))
    for text in (shown.stdout, listed.stdout, shown.stderr):
        assert CLIENT_SECRET not in text
    assert re.search(r"^Secret Key\s+\*{8}$", shown.stdout, re.MULTILINE), shown.stdout
    assert CLIENT_SECRET.encode() not in _stored(cli.home)


def test_a_graph_key_needs_a_secret_or_a_certificate_and_says_how(cli: CLI) -> None:
    neither = cli(
        "account-keys", "create", "--type", "graph", "--name", "g", "--tenant-id", "t", "--client-id", "c"
    )
    assert_error(neither, 2, "client secret or a certificate")
    missing = cli(
        "account-keys", "create", "--type", "graph", "--name", "g", "--tenant-id", "t", "--client-id", "c",
        "--certificate", str(cli.home / "nope.pem"),
    )  # fmt: skip
    assert_error(missing, 2, "cannot read --certificate")


def test_a_certificate_is_read_from_its_file_and_never_shown(cli: CLI, tmp_path: Path) -> None:
    pem = tmp_path / "app.pem"
    issued = trustme.CA().issue_cert("graph-app.contoso.example", key_type=trustme.KeyType.RSA)
    body = issued.private_key_and_cert_chain_pem.bytes()
    pem.write_bytes(body)
    created = assert_ok(
        cli(
            "account-keys", "create", "--type", "graph", "--name", "cert", "--tenant-id", "t",
            "--client-id", "c", "--certificate", str(pem), "--cloud", "usgov", "--json",
        )
    ).json()  # fmt: skip
    assert created["secrets"] == {"certificate": MASK}
    assert created["settings"]["cloud"] == "usgov"
    key_lines = body.decode().split("-----END PRIVATE KEY-----")[0].splitlines()[1:]
    stored = _stored(cli.home)
    assert all(line.encode() not in stored for line in key_lines if len(line) > 20)

    no_key = tmp_path / "cert-only.pem"
    no_key.write_bytes(issued.cert_chain_pems[0].bytes())
    refused = cli(
        "account-keys", "create", "--type", "graph", "--name", "bad", "--tenant-id", "t",
        "--client-id", "c", "--certificate", str(no_key),
    )  # fmt: skip
    assert_error(refused, 2, "no private key")


def test_another_types_option_is_refused_before_any_secret_is_read(cli: CLI) -> None:
    result = cli(
        "account-keys", "create", "--name", "e", "--username", "u", "--tenant-id", "t", "--password-stdin"
    )
    assert_error(result, 2, "--tenant-id is not a field of Email Credentials keys", "--type graph")


def test_an_oauth2_key_is_stored_unauthorized_and_says_what_to_do(cli: CLI) -> None:
    created = cli(
        "account-keys", "create", "--type", "oauth2", "--name", "gmail", "--provider", "google",
        "--client-id", "cid.apps.googleusercontent.com", "--username", "me@gmail.com",
    )  # fmt: skip
    assert "account-keys authorize gmail" in assert_ok(created).stdout
    shown = assert_ok(cli("account-keys", "show", "gmail", "--json")).json()
    assert shown["authorized"] is False
    assert shown["username"] == "me@gmail.com"
    custom = cli(
        "account-keys",
        "create",
        "--type",
        "oauth2",
        "--name",
        "c",
        "--client-id",
        "x",
        "--username",
        "u@x.org",
    )
    assert_error(custom, 2, "token endpoint")


def test_update_keeps_the_secrets_not_given(mw: Services) -> None:
    mw.account_keys.create(
        AccountKeyCreate.model_validate(
            {"name": "o", "type": "oauth2", "provider": "microsoft", "client_id": "c",
             "username": "u@contoso.com", "client_secret": "cs-1", "refresh_token": REFRESH,
             "tenant": "contoso.com"}
        )
    )  # fmt: skip
    updated = mw.account_keys.update("o", AccountKeyUpdate.model_validate({"scopes": "a b"}))
    assert updated.secrets == {"client_secret": MASK, "refresh_token": MASK}
    assert updated.authorized is True
    assert updated.settings["scopes"] == "a b"
    with pytest.raises(ValidationError, match="tenant_id"):
        mw.account_keys.update("o", AccountKeyUpdate.model_validate({"tenant_id": "x"}))


def test_a_target_takes_only_the_key_types_its_type_accepts(mw: Services) -> None:
    mw.account_keys.create(
        AccountKeyCreate.model_validate(
            {"name": "g", "type": "graph", "tenant_id": "t", "client_id": "c", "client_secret": "s"}
        )
    )
    with pytest.raises(ValidationError) as refused:
        mw.targets.create(
            TargetCreate.model_validate(
                {"display_name": "relay", "server": "127.0.0.1", "port": 2525, "security": "none",
                 "account_key": "g"}
            )
        )  # fmt: skip
    assert "OAuth2 Microsoft Graph Credentials" in str(refused.value)
    assert "SMTP Endpoint targets accept Email Credentials or OAuth2 (XOAUTH2) keys" in str(refused.value)


def test_the_api_lists_key_types_and_creates_any_of_them(api: httpx.Client, mw: Services) -> None:
    types = {t["name"]: t for t in api.get("/api/v1/account-key-types").json()}
    assert set(types) >= {"email_credentials", "graph", "oauth2"}
    assert types["graph"]["secret_fields"] == ["client_secret", "certificate"]
    assert types["oauth2"]["needs_authorization"] is True
    assert "tenant_id" in types["graph"]["fields"]["properties"]
    created = api.post(
        "/api/v1/account-keys",
        json={
            "name": "g",
            "type": "graph",
            "tenant_id": "t",
            "client_id": "c",
            "client_secret": CLIENT_SECRET,
        },
    )
    assert created.status_code == 201, created.text
    assert CLIENT_SECRET not in created.text
    assert created.json()["secrets"] == {"client_secret": MASK}
    wrong = api.post(
        "/api/v1/account-keys", json={"name": "h", "type": "graph", "tenant_id": "t", "client_id": "c"}
    )
    assert wrong.status_code == 422
    assert "client secret or a certificate" in wrong.text
    unknown = api.post("/api/v1/account-keys", json={"name": "i", "type": "kerberos"})
    assert unknown.status_code == 422
    assert "unknown account key type 'kerberos'" in unknown.text
    stored = b"".join(path.read_bytes() for path in mw.settings.home.glob("mailwright.db*"))
    assert stored, "the test database lives in the data directory"
    assert CLIENT_SECRET.encode() not in stored
