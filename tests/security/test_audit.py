"""The audit log: who created, changed or deleted which target, account key, workflow, trigger
or token, when, and from which face (api, web, cli), and never a secret.

Each face makes its changes the way a user does (real HTTP for the API and the web forms,
the real `mailwright` command), then the log is read back through the API, the CLI and the
web page, and the database file is searched for the password.
"""

from __future__ import annotations

import base64
import getpass
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from mailwright.domain.roles import Role
from mailwright.services.app import Services
from mailwright.services.targets import TargetCreate
from tests.integration.test_web_targets import Browserless
from tests.support.apiserver import APIServer
from tests.support.cli import CLI

PASSWORD = "Audit-Secret-Never-Logged-77"
NEW_PASSWORD = "Rotated-Secret-Never-Logged-88"

WORKFLOW = """\
name: Watch
triggers: [{type: email, target: Inbox}]
steps: [{id: s, activity: set_variables, with: {x: "{{ trigger.message.subject }}"}}]
"""


def secret_forms(*secrets: str) -> list[str]:
    """Each secret as it is, and in base64 (as SMTP AUTH would carry it)."""
    forms = []
    for secret in secrets:
        forms += [secret, base64.b64encode(secret.encode()).decode()]
    return forms


def entries(services: Services) -> list[tuple[str, str, str, str, str, list[str]]]:
    """(face, who, action, object type, object name, fields), oldest first."""
    return [
        (e.face, e.who(), e.action, e.object_type, e.object_name, e.fields)
        for e in reversed(services.audit.list_recent(1000))
    ]


def audit_rows_text(services: Services) -> str:
    """Every column of every audit row, as stored."""
    with services.db.engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT * FROM audit_log")).all()
    return "\n".join(repr(tuple(row)) for row in rows)


def inbox(services: Services) -> None:
    services.targets.create(
        TargetCreate.model_validate(
            {
                "display_name": "Inbox",
                "type": "imap",
                "server": "127.0.0.1",
                "port": 993,
                "no_account_keys": True,
            }
        )
    )


# --- the API ------------------------------------------------------------------------------------


@pytest.fixture
def deployer(mw: Services) -> Iterator[httpx.Client]:
    """The API on loopback with an admin token named 'deployer'."""
    token = mw.tokens.create("deployer", role=Role.ADMIN).token
    with (
        APIServer(mw) as server,
        httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c,
    ):
        yield c


def ok(answer: httpx.Response, status: int = 200) -> Any:
    assert answer.status_code == status, answer.text
    return answer.json() if answer.content else None


def test_api_changes_are_recorded_with_the_token_fields_and_no_secret(
    deployer: httpx.Client, mw: Services
) -> None:
    inbox(mw)  # made by the service itself (no face): recorded as the system
    key = {"name": "alice", "username": "alice@example.org", "password": PASSWORD}
    ok(deployer.post("/api/v1/account-keys", json=key), 201)
    relay = {"display_name": "Relay", "server": "smtp.example.test", "port": 587, "account_key": "alice"}
    ok(deployer.post("/api/v1/targets", json=relay), 201)
    ok(deployer.patch("/api/v1/targets/Relay", json={"port": 2525, "description": "test relay"}))
    ok(deployer.patch("/api/v1/account-keys/alice", json={"password": NEW_PASSWORD, "username": "al"}))
    # Refused changes leave no entry: the entry is written in the change's own transaction.
    assert deployer.delete("/api/v1/account-keys/alice").status_code == 409  # Relay uses it
    ok(deployer.post("/api/v1/workflows", json={"document": WORKFLOW}), 201)
    replaced = WORKFLOW.replace("x:", "y:")
    ok(deployer.post("/api/v1/workflows", json={"document": replaced, "replace": True}), 201)
    ok(deployer.post("/api/v1/workflows/Watch/triggers/0/disable"))
    ok(deployer.delete("/api/v1/workflows/Watch"), 204)
    ok(deployer.delete("/api/v1/targets/Relay"), 204)
    ok(deployer.delete("/api/v1/account-keys/alice"), 204)

    api = ("api", "token deployer")
    assert entries(mw) == [
        ("system", "system mailwright", "create", "token", "deployer", []),
        ("system", "system mailwright", "create", "target", "Inbox", []),
        (*api, "create", "account_key", "alice", []),
        (*api, "create", "target", "Relay", []),
        (*api, "update", "target", "Relay", ["description", "port"]),
        (*api, "update", "account_key", "alice", ["password", "username"]),
        (*api, "create", "workflow", "Watch", []),
        (*api, "update", "workflow", "Watch", ["steps"]),
        (*api, "update", "trigger", "Watch trigger 0", ["enabled"]),
        (*api, "delete", "workflow", "Watch", []),
        (*api, "delete", "target", "Relay", []),
        (*api, "delete", "account_key", "alice", []),
    ]

    listed = ok(deployer.get("/api/v1/audit", params={"limit": 3}))
    assert [(e["action"], e["object_name"]) for e in listed] == [
        ("delete", "alice"),
        ("delete", "Relay"),
        ("delete", "Watch"),
    ]
    assert listed[0]["face"] == "api" and listed[0]["actor"] == "deployer"
    full = deployer.get("/api/v1/audit", params={"limit": 1000}).text
    for form in secret_forms(PASSWORD, NEW_PASSWORD):
        assert form not in full
        assert form not in audit_rows_text(mw)


def test_only_admins_read_the_audit_log_over_the_api(mw: Services) -> None:
    operator = mw.tokens.create("ops", role=Role.OPERATOR).token
    with APIServer(mw) as server:
        answer = httpx.get(f"{server.base_url}/api/v1/audit", headers={"Authorization": f"Bearer {operator}"})
    assert answer.status_code == 403
    assert (
        answer.json()["error"]["message"]
        == "this token is an operator; reading the audit log needs the admin role"
    )


# --- the CLI ------------------------------------------------------------------------------------


def test_cli_changes_are_recorded_as_the_local_user(cli: CLI, mw: Services, tmp_path: Path) -> None:
    def run(*args: str, input: str | None = None) -> None:
        result = cli(*args, input=input)
        assert result.returncode == 0, result

    run(
        "account-keys",
        "create",
        "--name",
        "bob",
        "--username",
        "bob@example.org",
        "--password-stdin",
        input=PASSWORD,
    )
    run("account-keys", "update", "bob", "--password-stdin", "--description", "Bob's", input=NEW_PASSWORD)
    run(
        "targets",
        "create",
        "--name",
        "Relay",
        "--server",
        "smtp.example.test",
        "--port",
        "587",
        "--account-key",
        "bob",
    )
    run("targets", "update", "Relay", "--port", "2525")
    run("targets", "delete", "Relay")
    run("account-keys", "delete", "bob")
    document = tmp_path / "wf.yaml"
    document.write_text("name: Watch\nsteps: [{id: s, activity: set_variables, with: {x: '1'}}]\n")
    run("workflows", "create", "--file", str(document))
    run("workflows", "delete", "Watch")
    run("tokens", "create", "ci", "--role", "viewer")
    run("tokens", "revoke", "ci")

    local = ("cli", f"local {getpass.getuser()}")
    assert entries(mw) == [
        (*local, "create", "account_key", "bob", []),
        (*local, "update", "account_key", "bob", ["description", "password"]),
        (*local, "create", "target", "Relay", []),
        (*local, "update", "target", "Relay", ["port"]),
        (*local, "delete", "target", "Relay", []),
        (*local, "delete", "account_key", "bob", []),
        (*local, "create", "workflow", "Watch", []),
        (*local, "delete", "workflow", "Watch", []),
        (*local, "create", "token", "ci", []),
        (*local, "revoke", "token", "ci", []),
    ]

    table = cli("audit", "list", "--limit", "2")
    assert table.returncode == 0, table
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["WHEN", "FACE", "WHO", "ACTION", "OBJECT", "NAME", "FIELDS"]
    assert re.search(r"\bcli\s+local \S+\s+revoke\s+token\s+ci\b", lines[2]), table
    assert re.search(r"\bcreate\s+token\s+ci\b", lines[3]), table
    assert len(lines) == 4  # --limit 2: the header, its rule and two entries
    as_json = cli("audit", "list", "--json").json()
    assert [e["action"] for e in as_json][:2] == ["revoke", "create"]
    assert as_json[-2]["fields"] == ["description", "password"]  # oldest last
    for form in secret_forms(PASSWORD, NEW_PASSWORD):
        assert form not in audit_rows_text(mw)
    cli.assert_never_shown(PASSWORD)
    cli.assert_never_shown(NEW_PASSWORD)
    bad = cli("audit", "list", "--limit", "0")
    assert bad.returncode == 2 and "--limit" in bad.stderr, bad


# --- the web UI ---------------------------------------------------------------------------------


def test_web_changes_are_recorded_as_the_web_user_and_shown_on_the_audit_page(
    web: Browserless, mw: Services
) -> None:
    key = web.post("/account-keys/new", name="carol", username="carol@example.org", password=PASSWORD)
    assert key.status_code == 303, key.text
    carol = mw.account_keys.get("carol")
    edited = web.post(
        f"/account-keys/{carol.id}/edit", name="carol", username="carol@example.org", password=NEW_PASSWORD
    )
    assert edited.status_code == 303, edited.text
    relay = web.post(
        "/targets/new",
        target_type="smtp",
        display_name="Relay",
        server="smtp.example.test",
        port="587",
        security="starttls",
        no_account_keys="true",
    )
    assert relay.status_code == 303, relay.text
    target = mw.targets.get("Relay")
    assert web.post(f"/targets/{target.id}/delete").status_code == 303
    assert web.post(f"/account-keys/{carol.id}/delete").status_code == 303

    by_web = ("web", "user admin")
    assert entries(mw) == [
        (*by_web, "create", "account_key", "carol", []),
        (*by_web, "update", "account_key", "carol", ["password"]),
        (*by_web, "create", "target", "Relay", []),
        (*by_web, "delete", "target", "Relay", []),
        (*by_web, "delete", "account_key", "carol", []),
    ]

    page = web.client.get("/audit")
    assert page.status_code == 200
    assert page.text.count("<tr>") == 1 + 5  # the header row and five entries
    assert "user admin" in page.text and "account key <strong>carol</strong>" in page.text
    for form in secret_forms(PASSWORD, NEW_PASSWORD):
        assert form not in page.text
        assert form not in audit_rows_text(mw)
    assert 'href="/audit" aria-current="page"' in page.text  # in the navigation


def test_a_web_session_opened_with_a_token_is_recorded_under_the_token(mw: Services) -> None:
    # As the log-in form opens it for an admin token (test_roles signs in through the form).
    mw.tokens.create("release-bot", role=Role.ADMIN)
    opened = mw.web_auth.open_session(role=Role.ADMIN, token_name="release-bot")
    inbox(mw)
    with (
        APIServer(mw) as server,
        httpx.Client(base_url=server.base_url, headers={"Cookie": f"mw_session={opened.cookie}"}) as client,
    ):
        created = client.post(
            "/workflows/new", data={"csrf_token": opened.session.csrf_token, "document": WORKFLOW}
        )
        assert created.status_code == 303 and "/login" not in created.headers["location"], created.text
        toggled = client.post(
            f"/workflows/{mw.workflows.get('Watch').id}/triggers/0/disable",
            data={"csrf_token": opened.session.csrf_token},
        )
        assert toggled.status_code == 303, toggled.text
    assert entries(mw)[-2:] == [
        ("web", "token release-bot", "create", "workflow", "Watch", []),
        ("web", "token release-bot", "update", "trigger", "Watch trigger 0", ["enabled"]),
    ]


def test_the_database_file_never_holds_the_password_in_the_audit_table(mw: Services, cli: CLI) -> None:
    """Beyond the rows: the whole database (and its WAL) holds the password only encrypted."""
    result = cli(
        "account-keys",
        "create",
        "--name",
        "dave",
        "--username",
        "d@example.org",
        "--password-stdin",
        input=PASSWORD,
    )
    assert result.returncode == 0, result
    result = cli("account-keys", "update", "dave", "--password-stdin", input=NEW_PASSWORD)
    assert result.returncode == 0, result
    assert [e[5] for e in entries(mw)] == [[], ["password"]]
    cli.assert_not_stored(PASSWORD)
    cli.assert_not_stored(NEW_PASSWORD)
