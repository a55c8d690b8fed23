"""The Triggers page in Chromium: a trigger's state, turning it off and on, the run a mail started."""

from __future__ import annotations

import re
import time

from playwright.sync_api import Page, expect

from tests.support.mailboxes import PDF, invoice_workflow, new_mailbox, relay
from tests.support.mailstack import MailStack
from tests.support.webapp import WebApp, first_login, nav, shot

TIMEOUT = 30.0


def reload_until(page: Page, pattern: str) -> None:
    """Reload until the page's text matches (the worker updates the state in the background)."""
    deadline = time.monotonic() + TIMEOUT
    while not re.search(pattern, page.locator("main").inner_text()):
        assert time.monotonic() < deadline, f"{pattern!r} not shown after {TIMEOUT} s"
        time.sleep(0.3)
        page.reload()


def test_triggers_page_shows_state_toggles_and_links_the_run(
    page: Page, web: WebApp, mailstack: MailStack
) -> None:
    mw = web.services
    inbox, accounts = new_mailbox(mw, mailstack), new_mailbox(mw, mailstack)
    workflow = mw.workflows.create(invoice_workflow(inbox, accounts, relay(mw, mailstack)))
    first_login(page, web)
    nav(page, "Triggers")
    expect(page.get_by_role("heading", name="Triggers", level=1)).to_be_visible()
    row = page.get_by_role("row").filter(has_text=workflow.name)
    expect(row).to_contain_text(f"IMAP {inbox.address}")
    expect(row).to_contain_text("move → Processed")
    reload_until(page, r"\bidle\b")  # the served app's worker watches the folder in IDLE
    shot(page, "triggers-idle")

    row.get_by_role("button", name="Disable").click()
    expect(page.get_by_text("disabled", exact=False).first).to_be_visible()
    expect(page.get_by_role("row").filter(has_text=workflow.name).locator(".badge")).to_have_text("disabled")
    assert not mw.triggers.list_all(workflow.id)[0].enabled
    page.get_by_role("row").filter(has_text=workflow.name).get_by_role("button", name="Enable").click()
    reload_until(page, r"\bidle\b")

    inbox.append("Invoice 77", attachment=PDF)
    page.goto(f"/workflows/{workflow.id}")
    expect(page.get_by_role("heading", name="Email triggers")).to_be_visible()
    page.get_by_role("link", name=re.compile(r"^\d+$")).first.click()  # the runs count
    reload_until(page, r"\bsucceeded\b")
    page.get_by_role("row").filter(has_text="Invoice 77").get_by_role("link").click()
    expect(page).to_have_url(re.compile(r"/runs/[0-9a-f-]{36}$"))
    expect(page.get_by_text("Started by mail")).to_be_visible()
    expect(page.locator("main")).to_contain_text("“Invoice 77” from Billing <billing@supplier.example>")
    shot(page, "run-started-by-mail")
