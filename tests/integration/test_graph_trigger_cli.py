"""An email trigger on a Microsoft Graph target run by `mailwright worker` processes, across a restart.

Everything as a user sets it up, through the installed command: a Graph key and target, a
workflow whose trigger watches the inbox and marks each mail read after its run succeeds, a
worker that is stopped (SIGTERM) and started again while mail keeps arriving. One run per
message, none twice, and mail marked read only once its run succeeded. Graph and the token
server are the stand-ins (tests/support/graph_server.py, tests/support/oauth_server.py).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mailwright.oauth.tokens import forget
from tests.support.cli import CLI, MAILWRIGHT, assert_ok
from tests.support.graph_keys import APP_SECRET, ROLES
from tests.support.graph_server import GraphServer
from tests.support.oauth_server import OAuthClient, OAuthTestServer
from tests.support.tlsfiles import TLSFiles

MAILBOX = "alerts@contoso.example"
WORKFLOW = """
name: Alerts
triggers:
  - type: email
    target: Contoso mail
    folder: inbox
    after_success: {action: mark_read}
steps:
  - id: note
    activity: set_variables
    with:
      subject: "{{ trigger.message.subject }}"
"""


@pytest.fixture
def graph(tls_files: TLSFiles) -> Iterator[tuple[OAuthTestServer, GraphServer]]:
    with OAuthTestServer(ssl_context=tls_files.server_context()) as oauth:
        oauth.register(OAuthClient("contoso-app", secret=APP_SECRET))

        def roles(token: str) -> frozenset[str] | None:
            return ROLES["good"] if oauth.introspect(token).get("active") else None

        with GraphServer(tokens=roles, users=[MAILBOX]) as server:
            yield oauth, server
    forget()


def _raw(subject: str) -> bytes:
    return (
        f"From: Carol <carol@example.org>\r\nTo: {MAILBOX}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@example.org>\r\n\r\nAlert body.\r\n"
    ).encode()


def _worker(cli: CLI) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(MAILWRIGHT), "worker"], env=cli.env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _stop(worker: subprocess.Popen[str]) -> str:
    worker.send_signal(signal.SIGTERM)
    output, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, output
    return output


def _wait_for(what: str, check: Callable[[], bool], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.5)


def _subjects(cli: CLI) -> list[str]:
    """The subjects the succeeded runs noted, as `runs list` and `runs show` give them."""
    runs = assert_ok(cli("runs", "list", "--json")).json()
    out = []
    for run in runs:
        if run["status"] != "succeeded":
            continue
        shown = assert_ok(cli("runs", "show", run["id"], "--json")).json()
        out.append(shown["steps"][0]["output"]["subject"])
    return sorted(out)


def test_a_graph_trigger_runs_once_per_message_across_a_worker_restart(
    cli: CLI, tls_files: TLSFiles, graph: tuple[OAuthTestServer, GraphServer], tmp_path: Path
) -> None:
    oauth, server = graph
    assert_ok(
        cli(
            "account-keys", "create", "--type", "graph", "--name", "contoso", "--tenant-id", "contoso-tenant",
            "--client-id", "contoso-app", "--client-secret-env", "GRAPH_SECRET",
            "--ca-file", tls_files.ca_path, env={"GRAPH_SECRET": APP_SECRET},
        )
    )  # fmt: skip
    assert_ok(
        cli(
            "targets", "create", "--type", "graph", "--name", "Contoso mail", "--account-key", "contoso",
            "--mailbox", MAILBOX, "--graph-url", server.base_url, "--login-url", oauth.base_url,
            "--polling-interval", 5,
        )
    )  # fmt: skip
    document = tmp_path / "alerts.yaml"
    document.write_text(WORKFLOW)
    assert_ok(cli("workflows", "create", "--file", document))
    server.deliver(MAILBOX, _raw("Before the trigger"))  # already there: not taken (no include_existing)

    worker = _worker(cli)
    try:
        _wait_for("the trigger's first look", lambda: bool(server.requests_to("GET", "/delta")))
        first = server.deliver(MAILBOX, _raw("Alert one"))
        server.deliver(MAILBOX, _raw("Alert two"))
        _wait_for("two runs", lambda: len(_subjects(cli)) == 2)
    finally:
        _stop(worker)
    _wait_for("mail marked read", lambda: server.folder(MAILBOX, "inbox")["messages"][first]["isRead"])

    server.deliver(MAILBOX, _raw("Alert three"))  # arrives while no worker runs
    worker = _worker(cli)
    try:
        _wait_for("the third run", lambda: len(_subjects(cli)) == 3)
        looks = len(server.requests_to("GET", "/delta"))
        _wait_for("two more looks", lambda: len(server.requests_to("GET", "/delta")) >= looks + 2)
    finally:
        _stop(worker)

    assert _subjects(cli) == ["Alert one", "Alert three", "Alert two"]  # once each, never twice
    inbox = server.folder(MAILBOX, "inbox")["messages"].values()
    read = sorted(m["subject"] for m in inbox if m["isRead"])
    assert read == ["Alert one", "Alert three", "Alert two"]  # "Before the trigger" left alone
    listed = assert_ok(cli("triggers", "list", "--json")).json()
    assert json.dumps(listed).count("Contoso mail") >= 1
    cli.assert_never_shown(APP_SECRET)
