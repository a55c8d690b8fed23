"""The `mailwright` command through its real entry point, one data directory per test.

Each command runs as a subprocess of the installed console script (``tests.support.cli``);
the in-process SMTP test servers are reached on 127.0.0.1.  Setup that is not the
subject of a test (an account key, a target aimed at a test server) is done in-process
through the ``mw``/``targets`` fixtures on the same data directory, because every CLI
start costs about a second.

The contract checked: exit 0 on success, 1 on a failed send or test, 2 on bad input;
errors as one ``error:`` line and at most one ``hint:`` line on stderr, never a
traceback; ``--json`` gives JSON on stdout; passwords are never taken as arguments,
never shown and never stored in plain text.
"""

from __future__ import annotations

import base64
import email
import json
import re
from email import policy
from email.message import EmailMessage
from pathlib import Path
from types import SimpleNamespace

from tests.integration.conftest import PASSWORD, Targets
from tests.support.cli import CLI, CLIResult, assert_error, assert_ok
from tests.support.smtpserver import Faults, Received, SMTPServerFactory
from tests.support.tlsfiles import TLSFiles

USERNAME = "alice@example.org"
MASK = "********"


def first_line(text: str) -> str:
    return next(line for line in text.splitlines() if line.strip())


def lines(text: str) -> list[str]:
    """Text lines, whatever the line ends (SMTP carries CRLF)."""
    return text.splitlines()


def parse(received: Received) -> EmailMessage:
    message = email.message_from_bytes(received.content, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


# --------------------------------------------------------------------------------------
# account-keys
# --------------------------------------------------------------------------------------

ALICE_PASSWORD = "correct horse ü battery-42"
CAROL_PASSWORD = "Carol-env-Secret-77"
ROTATED_PASSWORD = "R0tated pässword!"


def test_account_keys_lifecycle_never_shows_or_stores_the_password(cli: CLI) -> None:
    created = assert_ok(
        cli(
            "account-keys", "create", "--name", "alice", "--username", USERNAME, "--password-stdin",
            "--sender", "Alice <alice@example.org>", "--description", "Alice's mailbox", "--json",
            input=ALICE_PASSWORD + "\n",
        )
    ).json()  # fmt: skip
    assert created["name"] == "alice"
    assert created["username"] == USERNAME
    assert created["password"] == MASK
    assert "alice@example.org" in created["sender"]
    assert created["description"] == "Alice's mailbox"
    assert created["used_by"] == []
    assert (cli.home / "secret.key").stat().st_mode & 0o777 == 0o600

    carol = cli.spawn(
        "account-keys", "create", "--name", "carol", "--username", "carol@example.org",
        "--password-env", "MW_TEST_PASSWORD",
        env={"MW_TEST_PASSWORD": CAROL_PASSWORD},
    )  # fmt: skip
    duplicate = cli.spawn(
        "account-keys", "create", "--name", "ALICE", "--username", "other@example.org", "--password-stdin",
        input="another-password\n",
    )  # fmt: skip
    no_password = cli.spawn("account-keys", "create", "--name", "bob", "--username", "bob@example.org")
    shown = cli.spawn("account-keys", "show", "ALICE")
    by_id = cli.spawn("account-keys", "show", created["id"], "--json")

    assert_ok(carol.result())
    assert_error(duplicate.result(), 2, "'alice' already exists")
    assert_error(no_password.result(), 2, "no password", "--password-stdin")  # stdin is not a TTY
    details = assert_ok(shown.result()).stdout
    assert re.search(r"^Password\s+\*{8}$", details, re.MULTILINE), details
    assert "Alice's mailbox" in details
    same = assert_ok(by_id.result()).json()
    assert (same["id"], same["name"], same["password"]) == (created["id"], "alice", MASK)

    table = cli.spawn("account-keys", "list")
    listed = cli.spawn("account-keys", "list", "--json")
    update = cli.spawn(
        "account-keys", "update", "Alice", "--password-stdin", "--description", "rotated", "--json",
        input=ROTATED_PASSWORD,
    )  # fmt: skip
    text = assert_ok(table.result()).stdout
    assert "alice" in text and "carol" in text and USERNAME in text
    keys = assert_ok(listed.result()).json()
    assert [k["name"] for k in keys] == ["alice", "carol"]
    assert [k["password"] for k in keys] == [MASK, MASK]
    updated = assert_ok(update.result()).json()
    assert updated["description"] == "rotated"
    assert (updated["username"], updated["sender"], updated["password"]) == (
        USERNAME,
        created["sender"],
        MASK,
    )
    assert "carol" in assert_ok(cli("account-keys", "delete", "CAROL")).stdout

    for secret in (ALICE_PASSWORD, CAROL_PASSWORD, ROTATED_PASSWORD):
        cli.assert_never_shown(secret)
        cli.assert_not_stored(secret)


def test_password_env_given_a_password_by_mistake_does_not_echo_it(cli: CLI) -> None:
    # An easy slip: --password-env "$SMTP_PASSWORD" instead of --password-env SMTP_PASSWORD.
    secret = "Sekr3t-typed-in-place"
    result = cli(
        "account-keys", "create", "--name", "bob", "--username", "bob@example.org", "--password-env", secret
    )
    assert_error(result, 2)
    cli.assert_never_shown(secret)


# --------------------------------------------------------------------------------------
# targets
# --------------------------------------------------------------------------------------


def test_targets_create_show_update_delete(cli: CLI, targets: Targets) -> None:
    targets.key("alice")  # in-process; also creates the data directory
    relay = assert_ok(
        cli(
            "targets", "create", "--name", "Office Relay", "--server", "127.0.0.1", "--port", 2525,
            "--security", "none", "--account-key", "ALICE", "--ehlo-name", "client.example.org",
            "--timeout", 7, "--description", "the relay", "--json",
        )
    ).json()  # fmt: skip
    assert relay["display_name"] == "Office Relay"
    assert (relay["server"], relay["port"], relay["security"]) == ("127.0.0.1", 2525, "none")
    assert (relay["account_key"], relay["no_account_keys"]) == ("alice", False)
    assert relay["ehlo_name"] == "client.example.org"
    assert relay["connect_timeout"] == relay["command_timeout"] == 7
    assert relay["description"] == "the relay"
    assert relay["disable_certificate_validation"] is False

    local = ("--server", "127.0.0.1", "--port", 2525)
    duplicate = cli.spawn("targets", "create", "--name", "OFFICE relay", *local, "--no-account-keys")
    big_port = cli.spawn(
        "targets", "create", "--name", "Big", "--server", "127.0.0.1", "--port", 70000, "--no-account-keys"
    )
    implicit = cli.spawn(
        "targets", "create", "--name", "Implicit", "--server", "127.0.0.1", "--port", 465,
        "--security", "starttls", "--no-account-keys",
    )  # fmt: skip
    unknown_key = cli.spawn("targets", "create", "--name", "NoKey", *local, "--account-key", "nobody")
    neither = cli.spawn("targets", "create", "--name", "Neither", *local)
    gmail = cli.spawn(
        "targets", "create", "--name", "Gmail", "--preset", "gmail", "--account-key", "alice", "--json"
    )
    submission = cli.spawn(
        "targets", "create", "--name", "Gmail Submission", "--preset", "gmail", "--port", 587,
        "--account-key", "alice", "--json",
    )  # fmt: skip
    insecure = cli.spawn(
        "targets", "create", "--name", "Insecure", "--server", "127.0.0.1", "--port", 2600,
        "--security", "starttls", "--no-account-keys", "--disable-certificate-validation",
    )  # fmt: skip

    assert_error(duplicate.result(), 2, "'Office Relay' already exists")
    assert_error(big_port.result(), 2, "port", "65535")
    assert_error(implicit.result(), 2, "port 465", "implicit TLS")
    assert_error(unknown_key.result(), 2, "nobody")
    assert_error(neither.result(), 2, "--account-key", "--no-account-keys")
    preset = assert_ok(gmail.result()).json()
    assert (preset["server"], preset["port"], preset["security"]) == ("smtp.gmail.com", 465, "ssl")
    preset = assert_ok(submission.result()).json()
    assert (preset["server"], preset["port"], preset["security"]) == ("smtp.gmail.com", 587, "starttls")
    unsafe = assert_ok(insecure.result())
    assert "warning:" in unsafe.stderr and "certificate validation" in unsafe.stderr

    shown = cli.spawn("targets", "show", "office RELAY")
    by_id = cli.spawn("targets", "show", relay["id"], "--json")
    listed = cli.spawn("targets", "list", "--json")
    delete_key = cli.spawn("account-keys", "delete", "alice")

    details = assert_ok(shown.result()).stdout
    for word in ("Office Relay", "127.0.0.1", "2525", "client.example.org", "alice", "the relay"):
        assert word in details, details
    assert assert_ok(by_id.result()).json()["display_name"] == "Office Relay"
    names = [t["display_name"] for t in assert_ok(listed.result()).json()]
    assert names == ["Gmail", "Gmail Submission", "Insecure", "Office Relay"]
    assert_error(delete_key.result(), 2, "'Office Relay'", "'Gmail'")

    update = cli.spawn(
        "targets", "update", "office relay", "--description", "moved", "--timeout", 9, "--json"
    )
    delete = cli.spawn("targets", "delete", "INSECURE")
    updated = assert_ok(update.result()).json()
    changed = {"description": "moved", "connect_timeout": 9, "command_timeout": 9}
    unchanged = {k: v for k, v in relay.items() if k not in {*changed, "updated_at"}}
    assert {k: updated[k] for k in changed} == changed
    assert {k: updated[k] for k in unchanged} == unchanged
    assert "Insecure" in assert_ok(delete.result()).stdout

    text = assert_ok(cli("targets", "list")).stdout
    assert "Office Relay" in text and "Gmail Submission" in text and "Insecure" not in text, text


def test_targets_update_of_the_port_keeps_the_security(cli: CLI, targets: Targets) -> None:
    targets.target(SimpleNamespace(port=2525), security="none", display_name="Relay", ca_file=None)
    updated = assert_ok(cli("targets", "update", "relay", "--port", 2526, "--json")).json()
    assert updated["port"] == 2526
    # Only the options given change: a relay without TLS must not silently become starttls.
    assert updated["security"] == "none", updated


def create_starttls_target(cli: CLI, port: int, key: str, ca_file: Path) -> None:
    """`targets create` of 'Office' on 127.0.0.1:port, trusting ``ca_file``."""
    assert_ok(
        cli(
            "targets", "create", "--name", "Office", "--server", "127.0.0.1", "--port", port,
            "--security", "starttls", "--account-key", key, "--ca-file", ca_file, "--timeout", 5,
        )
    )  # fmt: skip


def test_targets_test_reports_a_healthy_server(
    cli: CLI, targets: Targets, smtp_server_factory: SMTPServerFactory, tls_files: TLSFiles
) -> None:
    server = smtp_server_factory(tls="starttls", users={USERNAME: PASSWORD}, size_limit=1_000_000)
    create_starttls_target(cli, server.port, targets.key(), tls_files.ca_path)
    text = cli.spawn("targets", "test", "office")
    as_json = cli.spawn("targets", "test", "OFFICE", "--json")

    out = assert_ok(text.result()).stdout
    for words in ("STARTTLS yes", "PLAIN", "SIZE 1000000", "certificate verified", "Authenticated as"):
        assert words in out, out
    report = assert_ok(as_json.result()).json()
    assert report["ok"] is True and report["error"] is None
    assert [(s["name"], s["ok"]) for s in report["steps"]] == [
        (name, True) for name in ("connect", "ehlo", "starttls", "auth", "quit")
    ]
    caps = report["capabilities"]
    assert caps["starttls"] is True and "PLAIN" in caps["auth"] and caps["size"] == 1_000_000
    assert report["tls"]["verified"] is True
    assert report["authenticated_as"] == USERNAME
    assert server.auth_attempts == [(USERNAME, True), (USERNAME, True)]
    cli.assert_never_shown(PASSWORD, username=USERNAME)


def test_targets_test_with_a_wrong_password(
    cli: CLI, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory(tls="starttls", users={USERNAME: "the-right-one"})
    targets.target(server, security="starttls", key=targets.key(), display_name="Office")
    text = cli.spawn("targets", "test", "office")
    as_json = cli.spawn("targets", "test", "office", "--json")

    result = text.result()
    assert_error(result, 1, "refused the login", "'alice'", "username and password")
    json_result = as_json.result()
    assert json_result.returncode == 1, str(json_result)
    report = json_result.json()
    assert report["ok"] is False
    assert report["error"]["code"] == "auth_error"
    assert server.auth_attempts == [(USERNAME, False), (USERNAME, False)]
    cli.assert_never_shown(PASSWORD, username=USERNAME)
    # The step that failed is the one reported as failed.
    assert {s["name"]: s["ok"] for s in report["steps"]}["auth"] is False, report["steps"]
    assert re.search(r"FAIL\s+auth", result.stdout), result.stdout


def test_targets_test_with_an_untrusted_ca(
    cli: CLI, targets: Targets, smtp_server_factory: SMTPServerFactory, tls_files: TLSFiles
) -> None:
    server = smtp_server_factory(tls="starttls", users={USERNAME: PASSWORD})
    create_starttls_target(cli, server.port, targets.key(), tls_files.other_ca_path)
    result = cli("targets", "test", "office")
    assert_error(result, 1, "is not trusted", "--ca-file")
    assert re.search(r"FAIL\s+starttls", result.stdout), result.stdout
    assert server.auth_attempts == []  # no login over a connection that is not trusted
    cli.assert_never_shown(PASSWORD, username=USERNAME)
    # The server did offer STARTTLS (the handshake failed): no warning may claim otherwise.
    assert "did not offer STARTTLS" not in result.output, str(result)


# --------------------------------------------------------------------------------------
# send
# --------------------------------------------------------------------------------------


def test_send_delivers_recipients_bodies_attachment_and_headers(
    cli: CLI, targets: Targets, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    server = smtp_server_factory(tls="starttls", users={USERNAME: PASSWORD}, size_limit=1_000_000)
    key = targets.key(sender="Alice <alice@example.org>")
    targets.target(server, security="starttls", key=key, display_name="Office")
    body_file = tmp_path / "body.txt"
    body_file.write_text("Hello from a file\nsecond line ü\n", encoding="utf-8")
    payload = bytes(range(256)) * 40 + b"\r\n.\r\n"  # binary, with an SMTP end-of-data sequence
    attachment = tmp_path / "data.bin"
    attachment.write_bytes(payload)

    full = cli.spawn(
        "send", "--target", "office", "--to", "a@example.net", "--to", "b@example.net",
        "--cc", "c@example.net", "--bcc", "hidden@example.net", "--subject", "Report ü",
        "--body-file", body_file, "--html", "<p>Hello <b>HTML</b></p>", "--attach", attachment,
        "--header", "X-Ticket: 42", "--json",
    )  # fmt: skip
    plain = cli.spawn(
        "send", "--target", "OFFICE", "--to", "d@example.net, e@example.net", "--subject", "Plain",
        "--body", "Just text",
    )  # fmt: skip

    everyone = ["a@example.net", "b@example.net", "c@example.net", "hidden@example.net"]
    result = assert_ok(full.result()).json()
    assert result["status"] == "sent"
    assert (result["target"], result["account_key"]) == ("Office", "alice")
    assert [(r["address"], r["status"]) for r in result["recipients"]] == [(a, "accepted") for a in everyone]
    text = assert_ok(plain.result()).stdout
    assert text.startswith("sent:"), text
    assert re.search(r"accepted\s+d@example\.net", text) and re.search(r"accepted\s+e@example\.net", text)

    received = {str(parse(m)["Subject"]): m for m in server.wait_for(2)}
    report = received["Report ü"]
    assert sorted(report.rcpt_tos) == everyone
    assert report.mail_from == USERNAME and report.auth_login == USERNAME and report.tls
    assert b"hidden@example.net" not in report.content  # Bcc: envelope only
    message = parse(report)
    assert message["Bcc"] is None
    assert str(message["To"]) == "a@example.net, b@example.net"
    assert str(message["Cc"]) == "c@example.net"
    assert str(message["From"]) == "Alice <alice@example.org>"
    assert str(message["X-Ticket"]) == "42"
    assert str(message["Message-ID"]) == result["message_id"]
    plain_part = message.get_body(("plain",))
    html_part = message.get_body(("html",))
    assert plain_part is not None and html_part is not None
    assert lines(plain_part.get_content()) == ["Hello from a file", "second line ü"]
    assert "<b>HTML</b>" in html_part.get_content()
    (attached,) = message.iter_attachments()
    assert attached.get_filename() == "data.bin"
    assert attached.get_content() == payload

    just_text = received["Plain"]
    assert just_text.rcpt_tos == ["d@example.net", "e@example.net"]
    assert lines(parse(just_text).get_content()) == ["Just text"]
    cli.assert_never_shown(PASSWORD, username=USERNAME)


def test_send_refuses_bad_input_before_connecting(
    cli: CLI, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory()
    targets.target(server, security="none", display_name="Relay", ca_file=None)
    send = ("send", "--target", "relay", "--from", "ops@example.org", "--subject", "Hi", "--body", "x")
    bad_to = cli.spawn(*send, "--to", "not-an-address")
    bad_cc = cli.spawn(*send, "--to", "a@example.net", "--cc", "bob at example.net")
    no_target = cli.spawn("send", "--target", "nowhere", "--to", "a@example.net", "--from", "o@example.org")
    no_from = cli.spawn("send", "--target", "relay", "--to", "a@example.net", "--body", "x")

    error = assert_error(bad_to.result(), 2, "'not-an-address'")
    assert re.search(r"\bto\b", first_line(error)), error
    error = assert_error(bad_cc.result(), 2, "'bob at example.net'")
    assert re.search(r"\bcc\b", first_line(error)), error
    assert_error(no_target.result(), 2, "nowhere")
    assert_error(no_from.result(), 2, "From")
    assert server.connections == 0
    assert server.messages == []


def test_send_failures_exit_1_and_never_show_the_password(
    cli: CLI, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    refusing = smtp_server_factory(faults=Faults(reply={"data": (554, "5.7.1 no")}))
    locked = smtp_server_factory(tls="starttls", users={USERNAME: "the-right-one"})
    targets.target(refusing, security="none", display_name="Refusing", ca_file=None)
    targets.target(locked, security="starttls", key=targets.key(), display_name="Locked")
    message = ("--to", "bob@example.net", "--subject", "Hi", "--body", "Hello")
    refused = cli.spawn("send", "--target", "refusing", "--from", "ops@example.org", *message)
    refused_json = cli.spawn("send", "--target", "refusing", "--from", "ops@example.org", *message, "--json")
    wrong_password = cli.spawn("send", "--target", "locked", *message)

    assert_error(refused.result(), 1, "554 5.7.1 no")
    assert_error(wrong_password.result(), 1, "refused the login", "'alice'")
    assert refusing.messages == []
    assert locked.auth_attempts == [(USERNAME, False)]
    assert locked.messages == []
    cli.assert_never_shown(PASSWORD, username=USERNAME)
    # --json promises JSON on stdout, for a failed send too (as for refused recipients).
    result: CLIResult = refused_json.result()
    assert result.returncode == 1, str(result)
    outcome = result.json()
    assert outcome["status"] == "failed"
    assert "554 5.7.1 no" in json.dumps(outcome)


# --------------------------------------------------------------------------------------
# tokens, help, usage errors
# --------------------------------------------------------------------------------------


def test_tokens_are_shown_once_listed_by_prefix_and_revoked(cli: CLI) -> None:
    created = assert_ok(cli("tokens", "create", "ci"))
    token = created.stdout.strip()
    assert re.fullmatch(r"mw_[A-Za-z0-9_-]{20,}", token), created
    assert "ci" in created.stderr

    table = cli.spawn("tokens", "list")
    listed = cli.spawn("tokens", "list", "--json")
    second = cli.spawn("tokens", "create", "deploy", "--json")

    text = assert_ok(table.result()).stdout
    assert "ci" in text and token[:10] in text and token not in text
    listing = assert_ok(listed.result())
    (ci,) = [t for t in listing.json() if t["name"] == "ci"]
    assert token.startswith(ci["prefix"]) and len(ci["prefix"]) < len(token)
    assert ci["revoked_at"] is None
    assert token not in listing.stdout
    deploy = assert_ok(second.result()).json()
    assert deploy["token"].startswith("mw_") and deploy["info"]["name"] == "deploy"

    assert_ok(cli("tokens", "revoke", "CI"))
    after = {t["name"]: t for t in assert_ok(cli("tokens", "list", "--json")).json()}
    assert after["ci"]["revoked_at"] is not None
    assert after["deploy"]["revoked_at"] is None
    for full in (token, deploy["token"]):
        cli.assert_not_stored(full)  # stored hashed
        shown_in = [r.args for r in cli.results if full in r.output]
        assert len(shown_in) == 1, shown_in  # only by its own `tokens create`


def test_help_of_every_command_group_and_secret_key(cli: CLI) -> None:
    groups: dict[tuple[str, ...], tuple[str, ...]] = {
        (): ("account-keys", "targets", "tokens", "send", "serve", "secret-key"),
        ("account-keys",): ("create", "list", "show", "update", "delete"),
        ("targets",): ("create", "list", "show", "update", "delete", "test"),
        ("tokens",): ("create", "list", "revoke"),
        ("secret-key",): ("generate",),
    }
    helps = {group: cli.spawn(*group, "--help") for group in groups}
    key = cli.spawn("secret-key", "generate")

    for group, words in groups.items():
        out = assert_ok(helps[group].result()).stdout
        assert "Usage:" in out
        for word in words:
            assert word in out, f"{word!r} not in `mailwright {' '.join(group)} --help`:\n{out}"
    assert len(base64.urlsafe_b64decode(assert_ok(key.result()).stdout.strip())) == 32


def test_usage_errors_exit_2_without_traceback_or_echoed_password(cli: CLI) -> None:
    secret = "Sekr3t-on-the-command-line"
    typo = cli.spawn("targets", "lst")
    group_typo = cli.spawn("acount-keys", "list")
    password_option = cli.spawn(
        "account-keys", "create", "--name", "bob", "--username", "bob@example.org", "--password", secret
    )
    results = [typo.result(), group_typo.result(), password_option.result()]
    for result in results:
        assert result.returncode == 2, str(result)
        assert "Traceback" not in result.output, str(result)
    assert "'list'" in typo.result().stderr  # "Did you mean 'list'?"
    assert "'account-keys'" in group_typo.result().stderr
    assert "--password-stdin" in password_option.result().stderr
    cli.assert_never_shown(secret)
    # Usage errors follow the same format as every other error: `error:` [+ `hint:`].
    for result in results:
        assert_error(result, 2)
