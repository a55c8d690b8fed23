"""IMAP and POP3 Endpoint targets against the real Dovecot: create, test, diagnose."""

from __future__ import annotations

import uuid

import pytest

from mailwright.domain.smtp import Security
from mailwright.errors import ValidationError
from mailwright.secrets import Secret
from mailwright.services.account_keys import AccountKeyCreate
from mailwright.services.app import Services
from mailwright.services.sending import SendEmailRequest
from mailwright.services.targets import TargetCreate
from tests.support.mailstack import MailStack


def _key(mw: Services, stack: MailStack) -> tuple[str, str]:
    password = f"pw-{uuid.uuid4().hex}"
    address = stack.add_user(f"box{uuid.uuid4().hex[:6]}", password)
    name = f"key-{uuid.uuid4().hex[:6]}"
    mw.account_keys.create(AccountKeyCreate(name=name, username=address, password=Secret(password)))
    return name, password


@pytest.mark.parametrize(
    ("kind", "port_attr", "security", "capability"),
    [
        ("imap", "imaps_port", "ssl", "idle"),
        ("imap", "imap_port", "starttls", "uidplus"),
        ("pop3", "pop3s_port", "ssl", "uidl"),
        ("pop3", "pop3_port", "starttls", "top"),
    ],
)
async def test_mailbox_target_test_connection(
    mw: Services, mailstack: MailStack, kind: str, port_attr: str, security: str, capability: str
) -> None:
    key, password = _key(mw, mailstack)
    target = mw.targets.create(
        TargetCreate.model_validate(
            {
                "display_name": f"{kind} {security}",
                "type": kind,
                "server": mailstack.host,
                "port": getattr(mailstack, port_attr),
                "security": security,
                "ca_file": str(mailstack.ca_cert_path),
                "account_key": key,
                "polling_interval": 15,
            }
        )
    )
    assert target.protocol == kind.upper() and target.type_label == f"{kind.upper()} Endpoint"
    assert target.polling_interval == 15
    report = await mw.targets.test(target.id)
    assert report.ok, report.error
    assert report.protocol == kind.upper()
    assert report.capabilities[capability] is True
    assert report.tls is not None and report.tls["verified"]
    assert password not in str(report.as_dict())
    assert mw.targets.get(target.id).last_test is not None


async def test_mailbox_target_diagnoses(mw: Services, mailstack: MailStack) -> None:
    key, _ = _key(mw, mailstack)
    untrusted = mw.targets.create(
        TargetCreate.model_validate(
            {
                "display_name": "untrusted imap",
                "type": "imap",
                "server": mailstack.host,
                "port": mailstack.imaps_port,
                "ca_file": str(mailstack.other_ca_path),
                "account_key": key,
            }
        )
    )
    report = await mw.targets.test(untrusted.id)
    assert report.error is not None and report.error["code"] == "certificate_untrusted"
    wrong_mode = mw.targets.create(
        TargetCreate.model_validate(
            {
                "display_name": "plain as ssl",
                "type": "pop3",
                "server": mailstack.host,
                "port": mailstack.pop3_port,
                "security": "ssl",
                "ca_file": str(mailstack.ca_cert_path),
                "account_key": key,
            }
        )
    )
    report = await mw.targets.test(wrong_mode.id)
    assert report.error is not None and "choose starttls" in str(report.error.get("hint"))


async def test_defaults_presets_and_refusals(mw: Services) -> None:
    imap = mw.targets.create(
        TargetCreate(display_name="Gmail IMAP", type="imap", preset="gmail", no_account_keys=True)
    )
    assert (imap.server, imap.port, imap.security.value) == ("imap.gmail.com", 993, "ssl")
    pop = mw.targets.create(
        TargetCreate(
            display_name="POP 110", type="pop3", server="pop.example.org", port=110, no_account_keys=True
        )
    )
    assert pop.security.value == "starttls"
    with pytest.raises(ValidationError, match="port 993 expects implicit TLS"):
        mw.targets.create(
            TargetCreate(
                display_name="bad",
                type="imap",
                server="h.example",
                port=993,
                security=Security.STARTTLS,
                no_account_keys=True,
            )
        )
    with pytest.raises(ValidationError, match="ehlo_name"):
        mw.targets.create(
            TargetCreate(
                display_name="bad2",
                type="imap",
                server="h.example",
                ehlo_name="x.example",
                no_account_keys=True,
            )
        )
    with pytest.raises(ValidationError, match="needs an SMTP or Microsoft Graph Endpoint target"):
        await mw.sending.send(
            SendEmailRequest.model_validate(
                {"target": "Gmail IMAP", "from": "a@example.org", "to": "b@example.org"}
            )
        )
