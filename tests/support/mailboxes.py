"""Mailboxes on the test Dovecot for email-trigger tests: put mail in, look at what happened."""

from __future__ import annotations

import contextlib
import email
import imaplib
import json
import time
import uuid
from email import policy
from email.message import EmailMessage
from typing import Any

from mailwright.secrets import Secret
from mailwright.services.account_keys import AccountKeyCreate
from mailwright.services.app import Services
from mailwright.services.targets import TargetCreate
from tests.support.mailstack import MailStack

PDF = b"%PDF-1.7\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"


class Mailbox:
    """A Dovecot user, seen through imaplib (to put mail in and look at what happened)."""

    def __init__(self, stack: MailStack, address: str, password: str) -> None:
        self.stack, self.address, self.password = stack, address, password

    @contextlib.contextmanager
    def imap(self) -> Any:
        client = imaplib.IMAP4_SSL(
            self.stack.host, self.stack.imaps_port, ssl_context=self.stack.ssl_context()
        )
        try:
            client.login(self.address, self.password)
            yield client
        finally:
            with contextlib.suppress(Exception):
                client.logout()

    def append(self, subject: str, *, attachment: bytes | None = None, folder: str = "INBOX") -> str:
        message = EmailMessage()
        message["From"] = "Billing <billing@supplier.example>"
        message["To"] = self.address
        message["Subject"] = subject
        message_id = f"<{uuid.uuid4().hex}@supplier.example>"
        message["Message-ID"] = message_id
        message.set_content(f"body of {subject}")
        if attachment is not None:
            message.add_attachment(attachment, maintype="application", subtype="pdf", filename="invoice.pdf")
        with self.imap() as client:
            client.append(folder, "", imaplib.Time2Internaldate(time.time()), message.as_bytes())
        return message_id

    def listing(self, folder: str = "INBOX") -> list[tuple[str, bool]]:
        """(subject, seen) of each message in the folder."""
        with self.imap() as client:
            typ, _ = client.select(f'"{folder}"', readonly=True)
            if typ != "OK":
                return []
            _, data = client.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            out = []
            for item in data:
                if isinstance(item, tuple):
                    head = email.message_from_bytes(item[1], policy=policy.default)
                    out.append((str(head["Subject"]), b"\\Seen" in item[0]))
            return sorted(out)

    def messages(self) -> list[EmailMessage]:
        return [
            email.message_from_bytes(raw, policy=policy.default)
            for raw in self.stack.fetch_messages(self.address, self.password)
        ]


def new_mailbox(mw: Services, stack: MailStack, kind: str = "imap") -> Mailbox:
    password = f"pw-{uuid.uuid4().hex}"
    address = stack.add_user(f"trig{uuid.uuid4().hex[:6]}", password)
    mw.account_keys.create(AccountKeyCreate(name=address, username=address, password=Secret(password)))
    mw.targets.create(
        TargetCreate.model_validate(
            {
                "display_name": f"{kind.upper()} {address}",
                "type": kind,
                "server": stack.host,
                "port": stack.imaps_port if kind == "imap" else stack.pop3s_port,
                "ca_file": str(stack.ca_cert_path),
                "account_key": address,
            }
        )
    )
    return Mailbox(stack, address, password)


def relay(mw: Services, stack: MailStack) -> str:
    name = f"Postfix {uuid.uuid4().hex[:6]}"
    mw.targets.create(
        TargetCreate.model_validate(
            {
                "display_name": name,
                "server": stack.host,
                "port": stack.smtp_port,
                "security": "starttls",
                "ca_file": str(stack.ca_cert_path),
                "no_account_keys": True,
            }
        )
    )
    return name


def invoice_workflow(inbox: Mailbox, accounts: Mailbox, smtp: str, **trigger: Any) -> str:
    spec: dict[str, Any] = {
        "type": "email",
        "target": f"IMAP {inbox.address}",
        "folder": "INBOX",
        "conditions": {"all": [{"field": "subject", "op": "contains", "value": "Invoice"}]},
        "download_attachments": True,
        "after_success": {"action": "move", "folder": "Processed"},
        **trigger,
    }
    return json.dumps(
        {
            "name": f"Invoices {uuid.uuid4().hex[:6]}",
            "target": smtp,
            "triggers": [spec],
            "steps": [
                {
                    "id": "forward",
                    "activity": "send_email",
                    "with": {
                        "from": "robot@example.test",
                        "to": [accounts.address],
                        "subject": "Fwd: {{ trigger.message.subject }}",
                        "body": "From {{ trigger.message.from }}",
                        "attachments": "{{ trigger.message.attachments }}",
                    },
                }
            ],
        }
    )
