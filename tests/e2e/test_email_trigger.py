"""The email trigger against the real Dovecot (and Postfix): once per mail, actions only on success, IDLE."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

from sqlalchemy import select

from mailwright.engine.triggers import TriggerManager
from mailwright.engine.worker import Worker
from mailwright.secrets import Secret
from mailwright.services.account_keys import AccountKeyUpdate
from mailwright.services.app import Services
from mailwright.storage.tables import RunRow, TriggerMessageRow
from tests.support.cli import CLI
from tests.support.mailboxes import PDF, invoice_workflow, new_mailbox, relay
from tests.support.mailstack import MailStack


@contextlib.asynccontextmanager
async def running(
    mw: Services, *, execute: bool = True, managers: int = 1
) -> AsyncIterator[list[TriggerManager]]:
    """Trigger watchers (and, when asked, a worker that executes the runs) until the block ends."""
    stop = asyncio.Event()
    started = [TriggerManager(mw, reconcile_seconds=0.3, poll_seconds=0.5) for _ in range(managers)]
    tasks = [asyncio.create_task(m.run(stop)) for m in started]
    if execute:
        worker = Worker(Services(mw.settings.model_copy(update={"triggers": False})), poll_interval=0.2)
        tasks.append(asyncio.create_task(worker.run(stop)))
    try:
        yield started
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=60)


async def eventually(check: Callable[[], Any], *, timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(check)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        await asyncio.sleep(0.1)


def taken(mw: Services) -> list[TriggerMessageRow]:
    with mw.db.session() as session:
        rows = session.scalars(select(TriggerMessageRow).order_by(TriggerMessageRow.created_at)).all()
        session.expunge_all()
        return list(rows)


def arrived(mw: Services, count: int) -> bool:
    return len(taken(mw)) == count


def runs(mw: Services) -> list[RunRow]:
    with mw.db.session() as session:
        rows = session.scalars(select(RunRow).where(RunRow.trigger.is_not(None))).all()
        session.expunge_all()
        return list(rows)


async def test_invoice_workflow_forwards_attachments_and_moves_mail(
    mw: Services, mailstack: MailStack
) -> None:
    inbox, accounts = new_mailbox(mw, mailstack), new_mailbox(mw, mailstack)
    smtp = relay(mw, mailstack)
    inbox.append("Invoice 0 (was there before)", attachment=PDF)
    workflow = mw.workflows.create(invoice_workflow(inbox, accounts, smtp))
    async with running(mw):
        await eventually(lambda: mw.triggers.list_all(workflow.id)[0].status == "idle", what="IDLE")
        inbox.append("Invoice 42", attachment=PDF)
        inbox.append("Lunch on Friday?")
        done = await eventually(
            lambda: [m for m in taken(mw) if m.status == "succeeded"], timeout=60, what="the run and the move"
        )
    (row,) = done
    assert row.subject == "Invoice 42"
    assert {m.subject: m.status for m in taken(mw)} == {
        "Invoice 42": "succeeded",
        "Lunch on Friday?": "skipped",
    }
    # The mail that was there before the trigger was enabled is left alone.
    assert inbox.listing() == [("Invoice 0 (was there before)", False), ("Lunch on Friday?", False)]
    assert inbox.listing("Processed") == [("Invoice 42", False)]
    (forwarded,) = accounts.messages()
    assert forwarded["Subject"] == "Fwd: Invoice 42"
    (part,) = list(forwarded.iter_attachments())
    assert part.get_filename() == "invoice.pdf" and part.get_content() == PDF  # byte for byte
    run = mw.runs.get(row.run_id or "")
    assert run.status == "succeeded" and run.trigger is not None
    assert run.trigger["subject"] == "Invoice 42" and run.trigger["folder"] == "INBOX"
    (stored,) = next(r for r in runs(mw) if r.id == run.id).trigger["message"]["attachments"]  # type: ignore[index]
    # The run record holds a reference to the stored file, not the attachment's bytes.
    assert "content" not in stored and mw.files.get(stored["file"]) == PDF
    shown = CLI(mw.settings.home)("runs", "show", run.id)
    assert (
        f"started by mail 'Invoice 42' from Billing <billing@supplier.example> (IMAP {inbox.address}"
        in shown.stdout
    )


async def test_idle_picks_up_new_mail_within_a_second(mw: Services, mailstack: MailStack) -> None:
    inbox, accounts = new_mailbox(mw, mailstack), new_mailbox(mw, mailstack)
    workflow = mw.workflows.create(invoice_workflow(inbox, accounts, relay(mw, mailstack)))
    async with running(mw, execute=False):
        await eventually(lambda: mw.triggers.list_all(workflow.id)[0].status == "idle", what="IDLE")
        await asyncio.sleep(0.5)  # well into IDLE
        delays = []
        for n in range(3):
            await asyncio.to_thread(inbox.append, f"Invoice {n}")
            appended = time.monotonic()
            await eventually(partial(arrived, mw, n + 1), timeout=10, what="the new mail")
            delays.append(time.monotonic() - appended)
    print(f"IDLE pick-up delays: {[round(d, 3) for d in delays]} s")
    assert max(delays) < 1.0, delays


async def test_one_run_per_mail_across_two_watchers_restarts_and_edits(
    mw: Services, mailstack: MailStack
) -> None:
    inbox, accounts = new_mailbox(mw, mailstack), new_mailbox(mw, mailstack)
    text = invoice_workflow(inbox, accounts, relay(mw, mailstack))
    workflow = mw.workflows.create(text)
    # Two "workers": each its own Services on the same database, as two processes would be.
    other = Services(mw.settings)
    try:
        for round_ in range(3):
            async with running(mw, execute=False), running(other, execute=False):
                await eventually(lambda: mw.triggers.list_all(workflow.id)[0].status == "idle", what="IDLE")
                for n in range(4):
                    inbox.append(f"Invoice {round_}-{n}")
                await eventually(partial(arrived, mw, 4 * (round_ + 1)), what="the mail")
                await asyncio.sleep(1.0)  # time for a double to show, if there were one
            if round_ == 1:
                # An edit of the trigger (another condition) keeps its place in the folder.
                mw.workflows.create(text.replace('"Invoice"', '"Invoice "'), replace=True)
    finally:
        other.close()
    rows = taken(mw)
    assert len(rows) == 12 and len({r.message_key for r in rows}) == 12
    assert len(runs(mw)) == 12 and len({r.run_id for r in rows}) == 12


async def test_after_success_only_when_the_run_succeeds(mw: Services, mailstack: MailStack) -> None:
    inbox, accounts = new_mailbox(mw, mailstack), new_mailbox(mw, mailstack)
    smtp = relay(mw, mailstack)
    text = invoice_workflow(
        inbox,
        accounts,
        smtp,
        after_success={"action": "mark_read"},
        on_failure={"action": "retry", "max_attempts": 2, "retry_after": 1},
    )
    # A failing mail is one whose subject says so: the recipient is then not an address.
    text = text.replace(
        f'"to": ["{accounts.address}"]',
        "\"to\": [\"{{ 'not an address' if 'broken' in trigger.message.subject else "
        f"'{accounts.address}' }}}}\"]",
    )
    workflow = mw.workflows.create(text)
    async with running(mw):
        await eventually(lambda: mw.triggers.list_all(workflow.id)[0].status == "idle", what="IDLE")
        inbox.append("Invoice good")
        inbox.append("Invoice broken")
        await eventually(
            lambda: sorted(m.status for m in taken(mw)) == ["failed", "succeeded"],
            timeout=60,
            what="outcomes",
        )
    by_subject = {m.subject: m for m in taken(mw)}
    assert inbox.listing() == [("Invoice broken", False), ("Invoice good", True)]
    broken = by_subject["Invoice broken"]
    assert broken.attempts == 2 and "the mail stays in 'INBOX', untouched" in (broken.error or "")
    attempts = [
        r for r in runs(mw) if (r.trigger or {}).get("message", {}).get("subject") == "Invoice broken"
    ]
    assert sorted(r.status for r in attempts) == ["failed", "failed"]
    (state,) = mw.triggers.list_all(workflow.id)
    assert (state.runs_started, state.runs_failed) == (2, 1)


async def test_pop3_trigger_takes_new_mail_once_and_deletes_after_success(
    mw: Services, mailstack: MailStack
) -> None:
    inbox = new_mailbox(mw, mailstack, "pop3")
    accounts = new_mailbox(mw, mailstack)
    smtp = relay(mw, mailstack)
    inbox.append("Invoice before")
    text = invoice_workflow(inbox, accounts, smtp, after_success={"action": "delete"})
    workflow = mw.workflows.create(text.replace(f'"IMAP {inbox.address}"', f'"POP3 {inbox.address}"'))
    async with running(mw):
        await eventually(lambda: mw.triggers.list_all(workflow.id)[0].status == "polling", what="a poll")
        inbox.append("Invoice new", attachment=PDF)
        await eventually(
            lambda: [m for m in taken(mw) if m.status == "succeeded"], timeout=60, what="run and delete"
        )
        await asyncio.sleep(1.5)  # more polls: nothing is taken twice
    assert inbox.listing() == [("Invoice before", False)]
    assert sorted((m.subject or "", m.status) for m in taken(mw)) == [
        ("", "skipped"),  # there before the trigger: recorded by key, never read
        ("Invoice new", "succeeded"),
    ]
    (forwarded,) = accounts.messages()
    (part,) = list(forwarded.iter_attachments())
    assert part.get_content() == PDF


def test_triggers_cli_lists_and_toggles(mw: Services, mailstack: MailStack) -> None:
    inbox, accounts = new_mailbox(mw, mailstack), new_mailbox(mw, mailstack)
    workflow = mw.workflows.create(invoice_workflow(inbox, accounts, relay(mw, mailstack)))
    cli = CLI(mw.settings.home)
    listed = cli("triggers", "list")
    assert listed.returncode == 0, listed.stderr
    assert workflow.name in listed.stdout and "INBOX" in listed.stdout and "move → Processed" in listed.stdout
    off = cli("triggers", "disable", workflow.name)
    assert off.returncode == 0 and mw.triggers.list_all(workflow.id)[0].status == "disabled"
    on = cli("triggers", "enable", workflow.name, "--index", "0")
    assert on.returncode == 0 and mw.triggers.list_all(workflow.id)[0].enabled
    missing = cli("triggers", "enable", workflow.name, "--index", "3")
    assert missing.returncode == 2 and "has no trigger number 3 (it has 1: 0 to 0)" in missing.stderr


async def test_a_refused_login_shows_as_errored_with_the_reason(mw: Services, mailstack: MailStack) -> None:
    inbox, accounts = new_mailbox(mw, mailstack), new_mailbox(mw, mailstack)
    workflow = mw.workflows.create(invoice_workflow(inbox, accounts, relay(mw, mailstack)))
    mw.account_keys.update(inbox.address, AccountKeyUpdate(password=Secret("not-the-password")))
    async with running(mw, execute=False):
        state = await eventually(
            lambda: next((t for t in mw.triggers.list_all(workflow.id) if t.status == "errored"), None),
            what="the errored state",
        )
    assert state.error is not None and "refused" in state.error
    assert "not-the-password" not in state.error
    mw.triggers.set_enabled(workflow.name, 0, False)
    assert mw.triggers.list_all(workflow.id)[0].status == "disabled"
