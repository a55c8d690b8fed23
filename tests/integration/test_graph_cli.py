"""A user's way through Microsoft Graph with the `mailwright` command, against the stand-ins.

Create an OAuth2 Microsoft Graph Credentials key and a Microsoft Graph Endpoint target,
test it, send with a 5 MB attachment (an upload session), read the inbox and move a
message, every step through the installed console script. The token server
(tests/support/oauth_server.py) and Graph (tests/support/graph_server.py) are stand-ins
written from Microsoft's published contracts: Microsoft's servers cannot be reached here.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailwright.oauth.tokens import forget
from tests.support.cli import CLI, assert_error, assert_ok
from tests.support.graph_keys import APP_SECRET, ROLES
from tests.support.graph_server import GraphServer
from tests.support.oauth_server import OAuthClient, OAuthTestServer
from tests.support.tlsfiles import TLSFiles

MAILBOX = "alice@contoso.example"


@pytest.fixture
def stand_ins(tls_files: TLSFiles) -> Iterator[tuple[OAuthTestServer, GraphServer]]:
    with OAuthTestServer(ssl_context=tls_files.server_context()) as oauth:
        oauth.register(OAuthClient("contoso-app", secret=APP_SECRET))
        oauth.register(OAuthClient("send-only-app", secret=APP_SECRET))

        def roles(token: str) -> frozenset[str] | None:
            info = oauth.introspect(token)
            if not info.get("active"):
                return None
            return ROLES["good"] if info["client_id"] == "contoso-app" else ROLES["send-only"]

        with GraphServer(tokens=roles, users=[MAILBOX]) as graph:
            yield oauth, graph
    forget()


def _raw(subject: str) -> bytes:
    return (
        f"From: Carol <carol@example.org>\r\nTo: {MAILBOX}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@example.org>\r\n\r\nHello from Carol.\r\n"
    ).encode()


def test_graph_through_the_cli(
    cli: CLI, tls_files: TLSFiles, stand_ins: tuple[OAuthTestServer, GraphServer], tmp_path: Path
) -> None:
    oauth, graph = stand_ins
    env = {"GRAPH_SECRET": APP_SECRET}
    assert_ok(
        cli(
            "account-keys", "create", "--type", "graph", "--name", "contoso-graph", "--tenant-id",
            "contoso.onmicrosoft.com", "--client-id", "contoso-app", "--client-secret-env", "GRAPH_SECRET",
            "--ca-file", tls_files.ca_path, env=env,
        )
    )  # fmt: skip
    created = assert_ok(
        cli(
            "targets", "create", "--type", "graph", "--name", "Contoso mail",
            "--account-key", "contoso-graph", "--mailbox", MAILBOX, "--graph-url", graph.base_url,
            "--login-url", oauth.base_url, "--json",
        )
    ).json()  # fmt: skip
    assert (created["type_label"], created["mailbox"]) == ("Microsoft Graph Endpoint", MAILBOX)

    tested = assert_ok(cli("targets", "test", "Contoso mail"))
    for step in ("token", "mailbox", "Mail.Send", "Mail.Read", "Mail.ReadWrite"):
        assert step in tested.stdout

    attachment = tmp_path / "report.bin"
    attachment.write_bytes(bytes(range(256)) * (5 * 1024 * 1024 // 256))  # 5 MB
    sent = assert_ok(
        cli(
            "send", "--target", "Contoso mail", "--to", "bob@example.org", "--cc", "dan@example.org",
            "--subject", "Quarterly report", "--body", "See attached.", "--attach", attachment,
            "--header", "X-Ticket: 42", "--importance", "high", "--json",
        )
    ).json()  # fmt: skip
    assert sent["status"] == "sent", sent
    assert len(graph.sent) == 1 and graph.sent[0]["via"] == "draft"  # over 3 MB: an upload session
    message = graph.sent[0]["message"]
    assert message["subject"] == "Quarterly report" and message["importance"] == "high"
    assert {"name": "X-Ticket", "value": "42"} in message["internetMessageHeaders"]
    uploads = graph.requests_to("PUT", "")
    assert sum(r.size for r in uploads if r.path.startswith("/upload/")) == attachment.stat().st_size

    graph.deliver(MAILBOX, _raw("Invoice 7"))
    graph.deliver(MAILBOX, _raw("Lunch"))
    read = assert_ok(cli("read", "--target", "Contoso mail", "--subject", "Invoice", "--json")).json()
    assert [m["subject"] for m in read["messages"]] == ["Invoice 7"]
    moved = assert_ok(
        cli(
            "read",
            "--target",
            "Contoso mail",
            "--subject",
            "Invoice",
            "--after",
            "move",
            "--move-to",
            "Archive",
        )
    )
    assert "Invoice 7" in moved.stdout
    assert [m["subject"] for m in graph.folder(MAILBOX, "archive")["messages"].values()] == ["Invoice 7"]

    tokens = oauth.access_tokens()
    assert tokens
    for secret in (APP_SECRET, *tokens):
        cli.assert_never_shown(secret)
        cli.assert_not_stored(secret)
    assert base64.b64encode(APP_SECRET.encode()).decode() not in tested.output


def test_a_missing_permission_is_named_with_its_fix(
    cli: CLI, tls_files: TLSFiles, stand_ins: tuple[OAuthTestServer, GraphServer]
) -> None:
    oauth, graph = stand_ins
    assert_ok(
        cli(
            "account-keys", "create", "--type", "graph", "--name", "sender-only", "--tenant-id", "t",
            "--client-id", "send-only-app", "--client-secret-env", "GRAPH_SECRET",
            "--ca-file", tls_files.ca_path,
            env={"GRAPH_SECRET": APP_SECRET},
        )
    )  # fmt: skip
    assert_ok(
        cli(
            "targets", "create", "--type", "graph", "--name", "Outbox", "--account-key", "sender-only",
            "--mailbox", MAILBOX, "--graph-url", graph.base_url, "--login-url", oauth.base_url,
        )
    )  # fmt: skip
    refused = cli("read", "--target", "Outbox")
    assert_error(refused, 1, "Mail.Read", "admin consent")
