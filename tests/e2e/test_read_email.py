"""read_email and `mailwright read` against the real Dovecot: search, peek, then mark, move, delete."""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import sys
import uuid
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailwright.activities.read_email import ReadEmailInput, read_messages
from mailwright.config import Settings
from mailwright.errors import ValidationError
from mailwright.secrets import Secret
from mailwright.services.account_keys import AccountKeyCreate
from mailwright.services.app import Services
from mailwright.services.targets import TargetCreate
from tests.support.mailstack import MailStack


def _mailbox(mw: Services, stack: MailStack) -> tuple[str, str]:
    password = f"pw-{uuid.uuid4().hex}"
    address = stack.add_user(f"reader{uuid.uuid4().hex[:6]}", password)
    mw.account_keys.create(AccountKeyCreate(name=address, username=address, password=Secret(password)))
    mw.targets.create(
        TargetCreate.model_validate(
            {
                "display_name": f"IMAP {address}",
                "type": "imap",
                "server": stack.host,
                "port": stack.imaps_port,
                "ca_file": str(stack.ca_cert_path),
                "account_key": address,
            }
        )
    )
    return address, password


def _deliver(stack: MailStack, to: str, subject: str, *, attachment: bytes | None = None) -> None:
    message = EmailMessage()
    message["From"] = "alerts@example.org"
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = f"<{uuid.uuid4().hex}@example.org>"
    message.set_content(f"body of {subject}")
    if attachment is not None:
        message.add_attachment(attachment, maintype="application", subtype="pdf", filename="report.pdf")
    with smtplib.SMTP(stack.host, stack.smtp_port, timeout=15) as smtp:
        smtp.send_message(message)


async def test_read_peek_then_mark_move_delete(mw: Services, mailstack: MailStack) -> None:
    address, password = _mailbox(mw, mailstack)
    _deliver(mailstack, address, "Disk full")
    _deliver(mailstack, address, "Weekly report", attachment=b"%PDF-1.7 weekly")
    _deliver(mailstack, address, "Disk ok")
    mailstack.wait_for_messages(address, password, 3)
    target = f"IMAP {address}"

    peek = await read_messages(mw.targets, target, ReadEmailInput(unseen=True))
    assert peek["count"] == 3 and peek["uidvalidity"] > 0
    again = await read_messages(mw.targets, target, ReadEmailInput(unseen=True))
    assert again["count"] == 3  # reading did not mark anything read

    report = await read_messages(
        mw.targets, target, ReadEmailInput(subject="report", download_attachments=True, after="mark_read")
    )
    (message,) = report["messages"]
    assert message["subject"] == "Weekly report" and message["text"].strip() == "body of Weekly report"
    (attachment,) = message["attachments"]
    assert attachment["file_name"] == "report.pdf" and attachment["size"] == len(b"%PDF-1.7 weekly")
    assert attachment["content"]  # base64, ready for a later send_email step
    unseen = await read_messages(mw.targets, target, ReadEmailInput(unseen=True))
    assert sorted(m["subject"] for m in unseen["messages"]) == ["Disk full", "Disk ok"]

    moved = await read_messages(
        mw.targets, target, ReadEmailInput(subject="Disk", after="move", move_to="Processed")
    )
    assert moved["count"] == 2
    assert (await read_messages(mw.targets, target, ReadEmailInput(folder="Processed")))["count"] == 2
    assert (await read_messages(mw.targets, target, ReadEmailInput()))["count"] == 1
    await read_messages(mw.targets, target, ReadEmailInput(folder="Processed", after="delete"))
    assert (await read_messages(mw.targets, target, ReadEmailInput(folder="Processed")))["count"] == 0
    with_attachment = await read_messages(mw.targets, target, ReadEmailInput(has_attachment=True))
    assert with_attachment["count"] == 1

    with pytest.raises(ValidationError, match="move_to"):
        await read_messages(mw.targets, target, ReadEmailInput(after="move"))


def test_cli_read(mailstack: MailStack, tmp_path: Path) -> None:
    home = tmp_path / "home"
    services = Services(Settings(home=home))
    address, password = _mailbox(services, mailstack)
    services.close()
    _deliver(mailstack, address, "From the CLI test")
    mailstack.wait_for_messages(address, password, 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILWRIGHT_")}
    env["MAILWRIGHT_HOME"] = str(home)
    cli = str(Path(sys.executable).parent / "mailwright")
    result = subprocess.run(
        [cli, "read", "--target", f"IMAP {address}", "--unseen", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [m["subject"] for m in data["messages"]] == ["From the CLI test"]
    assert password not in result.stdout + result.stderr
    table = subprocess.run(
        [cli, "read", "--target", f"IMAP {address}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert table.returncode == 0 and "From the CLI test" in table.stdout
    _deliver(mailstack, address, "With a report", attachment=b"%PDF-1.7 cli")
    mailstack.wait_for_messages(address, password, 2)
    out = str(tmp_path / "out")
    saved = subprocess.run(
        [
            cli,
            "read",
            "--target",
            f"IMAP {address}",
            "--subject",
            "report",
            "--save-attachments",
            out,
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert saved.returncode == 0, saved.stderr
    (message,) = json.loads(saved.stdout)["messages"]
    (attachment,) = message["attachments"]
    assert Path(attachment["saved_to"]).read_bytes() == b"%PDF-1.7 cli" and "content" not in attachment
    assert Path(attachment["saved_to"]).name == f"{message['uid']}-report.pdf"


async def test_workflow_reads_and_forwards_the_attachment(mw: Services, mailstack: MailStack) -> None:
    import yaml

    address, password = _mailbox(mw, mailstack)
    archive = mailstack.add_user(f"archive{uuid.uuid4().hex[:6]}", "archive-password")
    mw.targets.create(
        TargetCreate.model_validate(
            {
                "display_name": "Relay",
                "server": mailstack.host,
                "port": mailstack.smtp_port,
                "security": "starttls",
                "ca_file": str(mailstack.ca_cert_path),
                "no_account_keys": True,
            }
        )
    )
    _deliver(mailstack, address, "Invoice 42", attachment=b"%PDF-1.7 invoice")
    mailstack.wait_for_messages(address, password, 1)
    document = {
        "name": "Forward invoices",
        "steps": [
            {
                "id": "read",
                "activity": "read_email",
                "target": f"IMAP {address}",
                "with": {"subject": "Invoice", "download_attachments": True, "after": "mark_read"},
            },
            {
                "id": "forward",
                "activity": "send_email",
                "target": "Relay",
                "for_each": "{{ steps.read.output.messages }}",
                "with": {
                    "from": "robot@example.test",
                    "to": [archive],
                    "subject": "Fwd: {{ item.subject }}",
                    "body": "Forwarded",
                    "attachments": "{{ item.attachments }}",
                },
            },
        ],
    }
    workflow = mw.workflows.create(yaml.safe_dump(document, sort_keys=False))
    run = mw.runs.start_workflow(workflow.id)
    status = await mw.executor(worker_id="t", with_files=False).execute(run.id)
    assert status == "succeeded", [(s.step, s.status, s.error) for s in mw.runs.get(run.id).steps]
    (raw,) = mailstack.wait_for_messages(archive, "archive-password", 1)
    assert b"Fwd: Invoice 42" in raw
    import email
    from email import policy

    forwarded = email.message_from_bytes(raw, policy=policy.default)
    (pdf,) = list(forwarded.iter_attachments())
    assert pdf.get_content() == b"%PDF-1.7 invoice"


async def test_move_mark_delete_and_pop3_retrieve_in_a_workflow(mw: Services, mailstack: MailStack) -> None:
    import yaml

    address, password = _mailbox(mw, mailstack)
    mw.targets.create(
        TargetCreate.model_validate(
            {
                "display_name": f"POP3 {address}",
                "type": "pop3",
                "server": mailstack.host,
                "port": mailstack.pop3s_port,
                "ca_file": str(mailstack.ca_cert_path),
                "account_key": address,
            }
        )
    )
    for subject in ("one", "two", "three"):
        _deliver(mailstack, address, subject)
    mailstack.wait_for_messages(address, password, 3)
    imap = f"IMAP {address}"
    document = {
        "name": "Mailbox chores",
        "target": imap,
        "steps": [
            {"id": "read", "activity": "read_email", "with": {"order": "oldest"}},
            {
                "id": "flag",
                "activity": "mark_email",
                "with": {
                    "uids": ["{{ steps.read.output.messages[0].uid }}"],
                    "mark": "flagged",
                    "uidvalidity": "{{ steps.read.output.uidvalidity }}",
                },
            },
            {
                "id": "move",
                "activity": "move_email",
                "with": {"uids": ["{{ steps.read.output.messages[1].uid }}"], "to_folder": "Archive"},
            },
            {
                "id": "delete",
                "activity": "delete_email",
                "with": {"uids": ["{{ steps.read.output.messages[2].uid }}"]},
            },
            {
                "id": "pop",
                "activity": "retrieve_email",
                "target": f"POP3 {address}",
                "with": {"delete_after": True},
            },
        ],
    }
    workflow = mw.workflows.create(yaml.safe_dump(document, sort_keys=False))
    run = mw.runs.start_workflow(workflow.id)
    status = await mw.executor(worker_id="t", with_files=False).execute(run.id)
    steps = {s.step: s for s in mw.runs.get(run.id).steps}
    assert status == "succeeded", [(s.step, s.status, s.error) for s in steps.values()]
    # Postfix's queue does not keep submission order, so compare by what was read, not by subject.
    read = steps["read"].output
    assert read is not None
    subjects = [m["subject"] for m in read["messages"]]
    assert sorted(subjects) == ["one", "three", "two"]
    pop = steps["pop"].output
    assert pop is not None and [m["subject"] for m in pop["messages"]] == [subjects[0]]  # the first, flagged
    archive = await read_messages(mw.targets, imap, ReadEmailInput(folder="Archive"))
    assert [m["subject"] for m in archive["messages"]] == [subjects[1]]
    assert (await read_messages(mw.targets, imap, ReadEmailInput()))["count"] == 0  # POP3 deleted it

    with pytest.raises(ValidationError, match="stale"):
        await _open_with_stale_uidvalidity(mw, imap)


async def _open_with_stale_uidvalidity(mw: Services, target: str) -> None:
    from mailwright.activities.mailbox import imap_folder

    async with imap_folder(mw.targets, target, activity="mark_email", folder="INBOX", uidvalidity=1):
        pass


def test_cli_read_on_a_pop3_target_retrieves_without_deleting(mailstack: MailStack, tmp_path: Path) -> None:
    home = tmp_path / "home"
    services = Services(Settings(home=home))
    address, password = _mailbox(services, mailstack)
    services.targets.create(
        TargetCreate.model_validate(
            {
                "display_name": f"POP3 {address}",
                "type": "pop3",
                "server": mailstack.host,
                "port": mailstack.pop3s_port,
                "ca_file": str(mailstack.ca_cert_path),
                "account_key": address,
            }
        )
    )
    services.close()
    for count, subject in enumerate(("Disk full", "Weekly report", "Disk ok"), start=1):
        _deliver(mailstack, address, subject)
        mailstack.wait_for_messages(address, password, count)  # in this order in the drop
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILWRIGHT_")}
    env["MAILWRIGHT_HOME"] = str(home)
    cli = str(Path(sys.executable).parent / "mailwright")

    def read(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [cli, "read", "--target", f"POP3 {address}", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )

    newest = read("--max", "2", "--json")
    assert newest.returncode == 0, newest.stderr
    data = json.loads(newest.stdout)
    assert data["matched"] == 3 and [m["subject"] for m in data["messages"]] == ["Disk ok", "Weekly report"]
    assert all(m["uidl"] for m in data["messages"])
    disk = json.loads(read("--subject", "disk", "--json").stdout)
    assert sorted(m["subject"] for m in disk["messages"]) == ["Disk full", "Disk ok"]
    table = read()
    assert table.returncode == 0 and "3 of 3 matching message(s) on the POP3 server" in table.stdout
    unseen = read("--unseen")
    assert unseen.returncode == 2 and "POP3 mailbox keeps no read/unread flags" in unseen.stderr
    assert "hint:" in unseen.stderr
    moved = read("--after", "move", "--move-to", "Done")
    assert moved.returncode == 2 and "can only keep or delete" in moved.stderr
    # Nothing was removed by reading; --after delete removes what was read, at the end of the session.
    assert len(mailstack.fetch_messages(address, password)) == 3
    deleted = json.loads(read("--subject", "report", "--after", "delete", "--json").stdout)
    assert [m["subject"] for m in deleted["messages"]] == ["Weekly report"]
    left = json.loads(read("--json").stdout)
    assert sorted(m["subject"] for m in left["messages"]) == ["Disk full", "Disk ok"]
    assert password not in newest.stdout + newest.stderr
