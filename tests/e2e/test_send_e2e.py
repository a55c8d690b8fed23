"""Send through a real Postfix (submission with AUTH via Dovecot), read the Dovecot mailbox back."""

from __future__ import annotations

import base64
import email
import itertools
import os
import subprocess
import sys
import uuid
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailwright import errors
from mailwright.secrets import Secret
from mailwright.services.account_keys import AccountKeyCreate
from mailwright.services.app import Services
from mailwright.services.sending import SendEmailRequest
from mailwright.services.target_public import TargetPublic
from mailwright.services.targets import TargetCreate
from tests.support.mailstack import MailStack

_names = itertools.count()


def mailbox(stack: MailStack) -> tuple[str, str]:
    """A fresh mailbox user (address, password) so each test reads only its own mail."""
    local = f"u{next(_names)}x{uuid.uuid4().hex[:6]}"
    password = f"pw-{uuid.uuid4().hex}"
    return stack.add_user(local, password), password


def make_target(
    mw: Services,
    stack: MailStack,
    *,
    port: int,
    security: str,
    login: tuple[str, str] | None,
    **extra: object,
) -> TargetPublic:
    key = None
    if login is not None:
        key = f"key-{uuid.uuid4().hex[:8]}"
        mw.account_keys.create(AccountKeyCreate(name=key, username=login[0], password=Secret(login[1])))
    values: dict[str, object] = {
        "display_name": f"Postfix {uuid.uuid4().hex[:6]}",
        "server": stack.host,
        "port": port,
        "security": security,
        "ca_file": str(stack.ca_cert_path),
        "account_key": key,
        "no_account_keys": key is None,
        "connect_timeout": 5,
        "command_timeout": 20,
    }
    values.update(extra)
    return mw.targets.create(TargetCreate.model_validate(values))


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


@pytest.mark.parametrize("mode", ["ssl", "starttls"])
async def test_send_with_auth_and_read_the_mailbox_back(
    mw: Services, mailstack: MailStack, mode: str
) -> None:
    sender = mailbox(mailstack)
    to, cc, bcc = mailbox(mailstack), mailbox(mailstack), mailbox(mailstack)
    port = mailstack.smtps_port if mode == "ssl" else mailstack.submission_port
    target = make_target(mw, mailstack, port=port, security=mode, login=sender)
    payload = os.urandom(50_000) + b"\x00\r\n.\r\n" + bytes(range(256))
    result = await mw.sending.send(
        SendEmailRequest.model_validate(
            {
                "target": target.display_name,
                "from": f"Zoë Ångström <{sender[0]}>",
                "to": [f"Bob Example <{to[0]}>"],
                "cc": cc[0],
                "bcc": [bcc[0]],
                "reply_to": "help@example.test",
                "subject": "Quarterly report — ünïcödé ✓ " + "long " * 20,
                "body": "Hello Bob,\n.leading dot\nline with trailing spaces   \nBye",
                "html": "<p>Hello <b>Bob</b></p>",
                "attachments": [
                    {"filename": "data.bin", "content": base64.b64encode(payload).decode()},
                    {
                        "filename": "résumé.pdf",
                        "content_type": "application/pdf",
                        "content": base64.b64encode(b"%PDF-1.7\n%\xe2\xe3").decode(),
                    },
                ],
                "headers": {"X-Ticket": "INC-42"},
                "in_reply_to": "<thread-1@example.test>",
                "references": ["<thread-0@example.test>", "<thread-1@example.test>"],
                "importance": "high",
            }
        )
    )
    assert result.status == "sent"
    assert result.server_reply.code == 250 and "queued as" in result.server_reply.text
    assert result.account_key is not None
    for recipient in (to, cc, bcc):
        (raw,) = mailstack.wait_for_messages(recipient[0], recipient[1], 1)
        delivered = parse(raw)
        assert delivered["Message-ID"] == result.message_id
        assert str(delivered["Subject"]) == "Quarterly report — ünïcödé ✓ " + "long " * 20
        assert delivered["From"].addresses[0].display_name == "Zoë Ångström"
        assert delivered["From"].addresses[0].addr_spec == sender[0]
        assert delivered["To"].addresses[0].addr_spec == to[0]
        assert delivered["Cc"].addresses[0].addr_spec == cc[0]
        assert delivered["Bcc"] is None
        if recipient is not bcc:
            # The Bcc copy names its own mailbox in Delivered-To; the others never see it.
            assert bcc[0].encode() not in raw
        assert delivered["X-Ticket"] == "INC-42"
        assert delivered["In-Reply-To"] == "<thread-1@example.test>"
        assert delivered["Importance"] == "High"
        text = delivered.get_body(preferencelist=("plain",))
        html = delivered.get_body(preferencelist=("html",))
        assert text is not None and html is not None
        assert text.get_content().replace("\r\n", "\n").rstrip("\n") == (
            "Hello Bob,\n.leading dot\nline with trailing spaces   \nBye"
        )
        assert "<b>Bob</b>" in html.get_content()
        attachments = {a.get_filename(): a.get_content() for a in delivered.iter_attachments()}
        assert attachments == {"data.bin": payload, "résumé.pdf": b"%PDF-1.7\n%\xe2\xe3"}


async def test_connection_test_reports_postfix_capabilities(mw: Services, mailstack: MailStack) -> None:
    user = mailbox(mailstack)
    target = make_target(mw, mailstack, port=mailstack.submission_port, security="starttls", login=user)
    report = await mw.targets.test(target.display_name)
    assert report.ok, report.error
    caps = report.capabilities
    assert caps["starttls"] and caps["pipelining"] and caps["smtputf8"] and caps["8bitmime"]
    assert caps["size"] == mailstack.message_size_limit
    assert {"PLAIN", "LOGIN"} <= set(caps["auth"])
    assert report.tls is not None and report.tls["verified"]
    assert "mail.test" in report.tls["certificate"]["names"]
    assert report.authenticated_as == user[0]


async def test_open_relay_port_with_a_refused_recipient(mw: Services, mailstack: MailStack) -> None:
    user = mailbox(mailstack)
    target = make_target(mw, mailstack, port=mailstack.smtp_port, security="starttls", login=None)
    fields = {
        "target": target.display_name,
        "from": "robot@example.test",
        "to": [user[0], "x@elsewhere.example"],
        "subject": "relay",
        "body": "b",
    }
    with pytest.raises(errors.RecipientsRefusedError) as info:
        await mw.sending.send(SendEmailRequest.model_validate(fields))
    assert "x@elsewhere.example: 554" in str(info.value)
    result = await mw.sending.send(
        SendEmailRequest.model_validate({**fields, "continue_if_one_address_valid": True})
    )
    assert result.status == "partial"
    (refused,) = [r for r in result.recipients if r.status == "refused"]
    assert refused.code == 554 and "Relay access denied" in refused.reply
    (raw,) = mailstack.wait_for_messages(user[0], user[1], 1)
    assert parse(raw)["Message-ID"] == result.message_id


async def test_wrong_password_untrusted_certificate_and_wrong_tls_mode(
    mw: Services, mailstack: MailStack
) -> None:
    user = mailbox(mailstack)
    wrong = make_target(
        mw, mailstack, port=mailstack.smtps_port, security="ssl", login=(user[0], "not-the-password")
    )
    with pytest.raises(errors.TargetAuthError) as auth:
        await mw.sending.send(SendEmailRequest.model_validate({"target": wrong.display_name, "to": user[0]}))
    assert "535" in str(auth.value) and "not-the-password" not in repr(auth.value.details())

    untrusted = make_target(
        mw,
        mailstack,
        port=mailstack.smtps_port,
        security="ssl",
        login=user,
        ca_file=str(mailstack.other_ca_path),
    )
    report = await mw.targets.test(untrusted.display_name)
    assert report.error is not None and report.error["code"] == "certificate_untrusted"
    assert "mail.test" in report.error["message"] and "--ca-file" in report.error["hint"]

    plain_as_ssl = make_target(mw, mailstack, port=mailstack.submission_port, security="ssl", login=user)
    report = await mw.targets.test(plain_as_ssl.display_name)
    assert report.error is not None
    assert (
        report.error["hint"] == f"port {mailstack.submission_port} speaks plain SMTP first: choose starttls"
    )

    tls_as_starttls = make_target(
        mw, mailstack, port=mailstack.smtps_port, security="starttls", login=user, connect_timeout=1.5
    )
    report = await mw.targets.test(tls_as_starttls.display_name)
    assert report.error is not None
    assert report.error["hint"] == f"port {mailstack.smtps_port} expects implicit TLS: choose ssl"

    no_tls = make_target(mw, mailstack, port=mailstack.submission_port, security="none", login=user)
    report = await mw.targets.test(no_tls.display_name)
    assert report.error is not None
    assert report.error["hint"] == "the server offers AUTH only after STARTTLS: choose starttls"
    assert user[1] not in str(report.as_dict())


def test_cli_send_through_postfix(mailstack: MailStack, tmp_path: Path) -> None:
    user = mailbox(mailstack)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILWRIGHT_")}
    env["MAILWRIGHT_HOME"] = str(tmp_path / "home")
    cli = str(Path(sys.executable).parent / "mailwright")

    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([cli, *args], input=stdin, env=env, capture_output=True, text=True, timeout=60)

    created = run(
        "account-keys",
        "create",
        "--name",
        "box",
        "--username",
        user[0],
        "--password-stdin",
        stdin=user[1] + "\n",
    )
    assert created.returncode == 0, created.stderr
    made = run(
        "targets",
        "create",
        "--name",
        "Postfix",
        "--server",
        mailstack.host,
        "--port",
        str(mailstack.submission_port),
        "--account-key",
        "box",
        "--ca-file",
        str(mailstack.ca_cert_path),
    )
    assert made.returncode == 0, made.stderr
    tested = run("targets", "test", "postfix")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    attachment = tmp_path / "notes.txt"
    attachment.write_text("attached notes\n")
    sent = run(
        "send",
        "--target",
        "Postfix",
        "--to",
        user[0],
        "--subject",
        "From the CLI",
        "--body",
        "cli body",
        "--attach",
        str(attachment),
        "--json",
    )
    assert sent.returncode == 0, sent.stderr
    (raw,) = mailstack.wait_for_messages(user[0], user[1], 1)
    delivered = parse(raw)
    assert str(delivered["Subject"]) == "From the CLI"
    assert [a.get_content() for a in delivered.iter_attachments()] == ["attached notes\n"]
    for output in (created, made, tested, sent):
        assert user[1] not in output.stdout + output.stderr
