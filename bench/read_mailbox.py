"""Reading a 1,000-message mailbox on a real Dovecot: search, read, and an email trigger taking it all.

Run as root (it starts Postfix and Dovecot on loopback, as the e2e tests do):

    .venv/bin/python bench/read_mailbox.py [--messages 1000] [--repeat 3]

It fills one mailbox over IMAP APPEND (4 KB messages, every tenth with a 20 KB PDF and
"Invoice" in the subject), then prints medians over the repeats of:
  * read_email searching the folder (subject contains "Invoice": a tenth match) and
    reading the matches, with attachments;
  * read_email reading every message (max 1000, no attachments downloaded);
  * an email trigger with include_existing taking every message (one run each, recorded),
    from enable to the last run created.
"""

from __future__ import annotations

import argparse
import asyncio
import imaplib
import json
import statistics
import sys
import tempfile
import time
import uuid
from email.message import EmailMessage
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.mailstack import MailStack

from mailwright.activities.read_email import ReadEmailInput, read_messages
from mailwright.config import Settings
from mailwright.engine.triggers import TriggerManager
from mailwright.secrets import Secret
from mailwright.services.account_keys import AccountKeyCreate
from mailwright.services.app import Services
from mailwright.services.targets import TargetCreate

PDF = b"%PDF-1.7\n" + bytes(range(256)) * 80 + b"\n%%EOF\n"


def fill(stack: MailStack, address: str, password: str, count: int) -> None:
    body = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 70)[:4000]
    with imaplib.IMAP4_SSL(stack.host, stack.imaps_port, ssl_context=stack.ssl_context()) as client:
        client.login(address, password)
        for n in range(count):
            message = EmailMessage()
            message["From"] = f"sender{n % 17}@supplier.example"
            message["To"] = address
            message["Subject"] = f"Invoice {n}" if n % 10 == 0 else f"Status report {n}"
            message["Message-ID"] = f"<{uuid.uuid4().hex}@supplier.example>"
            message.set_content(body)
            if n % 10 == 0:
                message.add_attachment(
                    PDF, maintype="application", subtype="pdf", filename=f"invoice-{n}.pdf"
                )
            client.append("INBOX", "", imaplib.Time2Internaldate(time.time()), message.as_bytes())


def timed(fn: object) -> float:
    started = time.perf_counter()
    asyncio.run(fn)  # type: ignore[arg-type]
    return time.perf_counter() - started


async def trigger_takes_all(services: Services, target: str, count: int) -> float:
    workflow = services.workflows.create(
        json.dumps(
            {
                "name": f"Take all {uuid.uuid4().hex[:6]}",
                "triggers": [{"type": "email", "target": target, "include_existing": True}],
                "steps": [
                    {
                        "id": "noted",
                        "activity": "set_variables",
                        "with": {"s": "{{ trigger.message.subject }}"},
                    }
                ],
            }
        )
    )
    stop = asyncio.Event()
    manager = TriggerManager(services, reconcile_seconds=0.05)
    started = time.perf_counter()
    task = asyncio.create_task(manager.run(stop))
    deadline = started + 600
    while time.perf_counter() < deadline:
        (state,) = services.triggers.list_all(workflow.id)
        if state.runs_started >= count:
            break
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    (state,) = services.triggers.list_all(workflow.id)
    assert state.runs_started == count, state
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with MailStack() as stack, tempfile.TemporaryDirectory() as home:
        services = Services(Settings(home=Path(home), triggers=False))
        password = uuid.uuid4().hex
        address = stack.add_user("bench", password)
        services.account_keys.create(
            AccountKeyCreate(name="bench", username=address, password=Secret(password))
        )
        target = "Bench IMAP"
        services.targets.create(
            TargetCreate.model_validate(
                {
                    "display_name": target,
                    "type": "imap",
                    "server": stack.host,
                    "port": stack.imaps_port,
                    "ca_file": str(stack.ca_cert_path),
                    "account_key": "bench",
                }
            )
        )
        started = time.perf_counter()
        fill(stack, address, password, args.messages)
        print(f"filled {args.messages} messages in {time.perf_counter() - started:.1f} s")
        search = ReadEmailInput(subject="Invoice", max=1000, download_attachments=True)
        read_all = ReadEmailInput(max=1000)
        searches = [timed(read_messages(services.targets, target, search)) for _ in range(args.repeat)]
        reads = [timed(read_messages(services.targets, target, read_all)) for _ in range(args.repeat)]
        takes = [asyncio.run(trigger_takes_all(services, target, args.messages)) for _ in range(args.repeat)]
        matched = asyncio.run(read_messages(services.targets, target, search))["count"]
        services.close()
    n = args.messages
    print()
    print(f"| case ({n} messages in INBOX, medians of {args.repeat}) | seconds | messages/s |")
    print("|---|---|---|")
    rows = [
        (f"read_email search subject~Invoice ({matched} match, attachments read)", searches, matched),
        ("read_email read all (max 1000)", reads, n),
        (f"email trigger, include_existing: {n} runs recorded", takes, n),
    ]
    for label, times, count in rows:
        median = statistics.median(times)
        print(f"| {label} | {median:.2f} | {count / median:.0f} |")


if __name__ == "__main__":
    main()
