"""Small things a daily CLI user trips on (issue "The web UI and CLI a daily user wants").

`send-batch --from ADDRESS` gives every line without a sender one; `workflows validate`
takes `--file/-f` as `workflows create` does, and the argument still; help shows flags as
flags; `send` records a run, and `--no-wait` leaves it to a worker.
"""

from __future__ import annotations

import email
import json
import subprocess
import sys
import time
from email import policy
from pathlib import Path

from mailwright.services.app import Services
from tests.integration.conftest import Targets
from tests.support.cli import CLI, assert_error, assert_ok
from tests.support.smtpserver import SMTPServerFactory


def test_send_batch_from_is_the_sender_of_lines_that_name_none(
    cli: CLI, targets: Targets, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    server = smtp_server_factory()
    relay = targets.target(server, security="none")
    lines = tmp_path / "messages.jsonl"
    lines.write_text(
        "\n".join(
            json.dumps(m)
            for m in (
                {"to": ["a@example.org"], "subject": "one", "body": "1"},
                {"to": ["b@example.org"], "subject": "two", "body": "2", "from": "Own <own@example.org>"},
            )
        )
        + "\n"
    )
    without = cli("send-batch", "--target", relay.display_name, "--file", lines)
    assert without.returncode == 2 and "From is required" in without.stderr  # no key to take it from
    sent = assert_ok(
        cli("send-batch", "--target", relay.display_name, "--file", lines, "--from", "Ops <ops@example.org>")
    )
    assert "2" in sent.output
    received = server.wait_for(2)
    senders = {
        str(email.message_from_bytes(m.content, policy=policy.default)["Subject"]): m.mail_from
        for m in received
    }
    assert senders == {"one": "ops@example.org", "two": "own@example.org"}


def test_workflows_validate_takes_file_like_create(cli: CLI, tmp_path: Path) -> None:
    document = tmp_path / "vars.yaml"
    document.write_text(
        "name: Vars\nsteps:\n  - id: v\n    activity: set_variables\n    with: {greeting: hello}\n"
    )
    for args in (["--file", document], ["-f", document], [document]):
        assert "valid: workflow 'Vars'" in assert_ok(cli("workflows", "validate", *args)).stdout
    assert_error(cli("workflows", "validate"), 2, "no document given")
    other = tmp_path / "other.yaml"
    other.write_text(document.read_text())
    assert_error(cli("workflows", "validate", document, "--file", other), 2, "give the document once")


def test_help_shows_flags_without_a_value(cli: CLI) -> None:
    """`--json` is a flag: help must not read `--json <bool>` (users then type `--json true`)."""
    for command in (["runs", "list"], ["targets", "list"], ["workers", "list"], ["send"], ["serve"]):
        shown = assert_ok(cli(*command, "--help")).output
        assert "<bool>" not in shown, command
    assert "<int>" in assert_ok(cli("targets", "create", "--help")).output  # values still show their type


def test_send_records_a_run_and_no_wait_leaves_it_to_a_worker(
    cli: CLI, mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory()
    relay = targets.target(server, security="none")
    common = ("--target", relay.display_name, "--from", "ops@example.org", "--to", "bob@example.net")
    sent = assert_ok(cli("send", *common, "--subject", "waited", "--json"))
    result = json.loads(sent.stdout)
    assert result["status"] == "sent" and result["run_id"]
    listed = assert_ok(cli("runs", "list", "--json")).stdout
    assert result["run_id"] in listed  # `runs list` shows a CLI send like every other
    assert mw.runs.get(result["run_id"]).status == "succeeded"

    queued = assert_ok(cli("send", *common, "--subject", "later", "--no-wait"))
    assert queued.stdout.startswith("queued: run ") and "no worker is running" in queued.stderr
    run_id = queued.stdout.split()[2]
    assert mw.runs.get(run_id).status == "queued" and len(server.messages) == 1  # nothing sent yet
    worker = subprocess.Popen(
        [str(Path(sys.executable).parent / "mailwright"), "worker"],
        env=cli.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while mw.runs.status(run_id) != "succeeded":
            assert time.monotonic() < deadline, "the worker did not send the queued message"
            time.sleep(0.1)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    subjects = [
        email.message_from_bytes(m.content, policy=policy.default)["Subject"] for m in server.messages
    ]
    assert subjects == ["waited", "later"]
