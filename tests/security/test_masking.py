"""Finding 1: a server that echoes the login never gets the password stored or shown.

The echoing server refuses AUTH with the AUTH line in its reply (PLAIN, LOGIN, a 4xx),
or accepts it and echoes it at RCPT. Then every place a reply can land is searched for
the password and its encodings: the whole home folder as bytes (database and WAL),
the log records, the API's answers and the CLI's output.
"""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Literal

import httpx
import pytest

from mailwright.domain.smtp import Security
from mailwright.errors import TargetError
from mailwright.secrets import Secret
from mailwright.services.app import Services
from mailwright.transport.imap import (
    IMAP,
    CredentialsOutcome,
    MailEndpoint,
    auth_refused,
    credentials_failure,
)
from mailwright.transport.smtp import Login, SMTPConnection, SMTPEndpoint
from mailwright.transport.tls import build_ssl_context
from tests.integration.test_web_targets import Browserless, web
from tests.security.servers import EchoMailboxServer, EchoSMTPServer
from tests.support.cli import CLI, assert_ok
from tests.support.tlsfiles import TLSFiles

__all__ = ["web"]

USER = "alice@example.org"
# Long enough that each alignment inside a base64 stream is distinct; odd characters on purpose.
PASSWORD = 'Ech0-me "if\\you" dare-Zq9'


def secret_forms(user: str = USER, password: str = PASSWORD) -> list[str]:
    """The password, and base64 of every string AUTH could carry it in."""

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    return [
        password,
        b64(password),
        b64(f"\0{user}\0{password}"),
        b64(f"{user}\0{user}\0{password}"),
        b64(f"user={user}\x01auth=Bearer {password}\x01\x01"),
        b64(password).rstrip("="),
        # AUTH PLAIN with another authorization identity: the mask knows no such string.
        b64(f"admin@example.org\0{user}\0{password}"),
    ]


def assert_clean(text: str | bytes, where: str) -> None:
    data = text.encode() if isinstance(text, str) else text
    for form in secret_forms():
        assert form.encode() not in data, f"{form!r} found in {where}"


def assert_home_clean(home: Path) -> None:
    files = [p for p in home.rglob("*") if p.is_file()]
    assert any(p.name.startswith("mailwright.db") for p in files), files
    for path in files:
        assert_clean(path.read_bytes(), str(path.relative_to(home)))


def endpoint(port: int, tls_files: TLSFiles, security: Security = Security.SSL) -> SMTPEndpoint:
    return SMTPEndpoint(
        target_name="echo",
        host="localhost",
        port=port,
        security=security,
        ssl_context=build_ssl_context(ca_file=str(tls_files.ca_path), verify=True),
        connect_timeout=5,
        command_timeout=5,
    )


def _items(body: object) -> list[dict[str, str]]:
    return body["items"] if isinstance(body, dict) else body  # type: ignore[return-value]


LOGIN = Login(key_name="alice", username=USER, password=Secret(PASSWORD))


# --- the mask itself ------------------------------------------------------------


def test_the_mask_knows_every_form_of_the_password() -> None:
    from mailwright.transport.replies import ReplyMask

    mask = ReplyMask.of(LOGIN)
    for form in secret_forms():
        masked = mask(f"535 5.7.8 no: AUTH PLAIN {form} (end)")
        assert form not in masked and "(end)" in masked and "535 5.7.8 no" in masked
    assert mask("250 2.0.0 OK queued") == "250 2.0.0 OK queued"
    # The IMAP LOGIN command quotes the password.
    quoted = '"' + PASSWORD.replace("\\", "\\\\").replace('"', '\\"') + '"'
    assert quoted[1:-1] not in mask(f"NO [AUTHENTICATIONFAILED] LOGIN alice {quoted}")


# --- the transport: each protocol's error is built masked ----------------------


@pytest.mark.parametrize(
    ("mechanisms", "auth"),
    [("PLAIN LOGIN", "refuse"), ("LOGIN", "refuse"), ("PLAIN", "defer")],
)
async def test_smtp_auth_refusal_echoing_the_login_is_masked(
    tls_files: TLSFiles, mechanisms: str, auth: Literal["refuse", "defer"]
) -> None:
    extra = base64.b64encode(f"user={USER}\x01auth=Bearer {PASSWORD}\x01\x01".encode()).decode()
    with EchoSMTPServer(
        server_context=tls_files.server_context(),
        mechanisms=mechanisms,
        auth=auth,
        extra_echo=extra,
    ) as server:
        connection = SMTPConnection(endpoint(server.port, tls_files))
        with pytest.raises(TargetError) as caught:
            await connection.open(LOGIN)
        await connection.close()
        assert server.auth_lines, "the server never saw AUTH"
    error = caught.value
    assert error.stage == "auth"
    text = f"{error} {json.dumps(error.details())} {error.args!r}"
    assert_clean(text, "the error")
    assert "********" in text


def test_imap_and_pop3_refusals_are_masked_with_the_key_itself() -> None:
    # No process-wide memory of revealed secrets: the key's own forms mask the reply.
    ep = MailEndpoint(
        target_name="imap",
        host="127.0.0.1",
        port=143,
        security=Security.STARTTLS,
        ssl_context=build_ssl_context(ca_file=None, verify=True),
    )
    login = Login(key_name="bob", username="bob@example.org", password=Secret("never-revealed-Pw-77"))
    token = base64.b64encode(b"\0bob@example.org\0never-revealed-Pw-77").decode()
    error = auth_refused(ep, IMAP, login, f"[AUTHENTICATIONFAILED] bad {token} never-revealed-Pw-77")
    assert token not in str(error) and "never-revealed-Pw-77" not in str(error)
    lost = credentials_failure(ep, IMAP, login, CredentialsOutcome("lost", f"EOF after {token}"))
    assert lost is not None and token not in str(lost)


# --- everything a user or an operator can see --------------------------------------


def test_echoed_login_is_nowhere_in_home_logs_api_or_cli(
    mw: Services,
    api: httpx.Client,
    web: Browserless,
    cli: CLI,
    tls_files: TLSFiles,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    refusing = EchoSMTPServer(server_context=tls_files.server_context(), auth="refuse").start()
    accepting = EchoSMTPServer(
        server_context=tls_files.server_context(), auth="accept", echo_at_rcpt=True
    ).start()
    try:
        assert_ok(
            cli(
                "account-keys",
                "create",
                "--name",
                "alice",
                "--username",
                USER,
                "--password-stdin",
                input=PASSWORD,
            )
        )
        for name, server in (("refusing", refusing), ("accepting", accepting)):
            assert_ok(
                cli(
                    "targets",
                    "create",
                    "--name",
                    name,
                    "--server",
                    "localhost",
                    "--port",
                    server.port,
                    "--security",
                    "ssl",
                    "--ca-file",
                    tls_files.ca_path,
                    "--account-key",
                    "alice",
                    "--timeout",
                    "5",
                )
            )
        outputs: list[str] = []
        tested = cli("targets", "test", "refusing", "--json")
        assert tested.returncode == 1, str(tested)
        assert tested.json()["error"]["code"] == "auth_error"
        outputs.append(tested.output)
        for name in ("refusing", "accepting"):
            sent = cli(
                "send",
                "--target",
                name,
                "--from",
                USER,
                "--to",
                "bob@example.net",
                "--subject",
                "probe",
                "--body",
                "x",
                "--json",
            )
            assert sent.returncode == 1, str(sent)
            outputs.append(sent.output)
        listed = assert_ok(cli("runs", "list", "--json"))
        outputs.append(listed.output)
        run_ids = [run["id"] for run in listed.json()]
        for run_id in run_ids:
            outputs.append(assert_ok(cli("runs", "show", run_id)).output)
            outputs.append(assert_ok(cli("runs", "show", run_id, "--json")).output)
        outputs.append(assert_ok(cli("targets", "show", "refusing", "--json")).output)

        # The API, in this process: a test, a send through the worker, the runs.
        answer = api.post("/api/v1/targets/refusing/test")
        outputs.append(answer.text)
        assert answer.json()["ok"] is False
        answer = api.post(
            "/api/v1/send-email",
            json={
                "target": "accepting",
                "from": USER,
                "to": ["bob@example.net"],
                "subject": "s",
                "body": "b",
            },
        )
        assert answer.status_code == 502, answer.text
        outputs.append(answer.text)
        for run in _items(api.get("/api/v1/runs").json()):
            outputs.append(api.get(f"/api/v1/runs/{run['id']}").text)
            outputs.append(api.get(f"/api/v1/runs/{run['id']}/steps").text)
        outputs.append(api.get("/api/v1/targets/refusing").text)
        # The web pages: the target (its last test) and every run.
        target_id = api.get("/api/v1/targets/refusing").json()["id"]
        outputs.append(web.client.get(f"/targets/{target_id}").text)
        for run in _items(api.get("/api/v1/runs").json()):
            page = web.client.get(f"/runs/{run['id']}")
            assert page.status_code == 200, page.text
            outputs.append(page.text)
        assert accepting.auth_lines and refusing.auth_lines
    finally:
        refusing.stop()
        accepting.stop()
    joined = "\n".join(outputs)
    assert "********" in joined, "the echo was expected to show masked"
    assert_clean(joined, "API answers or CLI output")
    assert_clean("\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records), "the log")
    assert_clean(caplog.text, "the log")
    mw.close()
    assert_home_clean(cli.home)


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_imap_and_pop3_echoes_are_masked_in_the_test_report_and_home(
    mw: Services, cli: CLI, tls_files: TLSFiles, protocol: str
) -> None:
    with EchoMailboxServer(protocol=protocol, server_context=tls_files.server_context()) as server:  # type: ignore[arg-type]
        assert_ok(
            cli(
                "account-keys",
                "create",
                "--name",
                "alice",
                "--username",
                USER,
                "--password-stdin",
                input=PASSWORD,
            )
        )
        assert_ok(
            cli(
                "targets",
                "create",
                "--name",
                "inbox",
                "--type",
                protocol,
                "--server",
                "localhost",
                "--port",
                server.port,
                "--security",
                "ssl",
                "--ca-file",
                tls_files.ca_path,
                "--account-key",
                "alice",
                "--timeout",
                "5",
            )
        )
        tested = cli("targets", "test", "inbox", "--json")
        shown = cli("targets", "show", "inbox", "--json")
        assert any("AUTH" in line for line in server.received), server.received
    assert tested.returncode == 1, str(tested)
    assert tested.json()["error"]["code"] == "auth_error", str(tested)
    assert "********" in tested.stdout
    assert_clean(tested.output + shown.output, f"{protocol} test report")
    mw.close()
    assert_home_clean(cli.home)
