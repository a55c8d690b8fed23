"""A workflow's page in Chromium: its diagram (triggers, steps in order, if, for_each, failure rule)
and its document kept as written (comments and key order) through the edit form."""

from __future__ import annotations

import re
import socket

from playwright.sync_api import Page, expect

from mailwright.sandbox import SANDBOX_TARGET_NAME
from mailwright.secrets import Secret
from mailwright.services.account_keys import AccountKeyCreate
from mailwright.services.targets import TargetCreate
from tests.support.webapp import WebApp, first_login, shot

WORKFLOW = "Invoices to the team"
INBOX = "Billing inbox"

DOCUMENT = f"""\
# Invoices: owned by the ops team. Ask before changing the recipients.
name: {WORKFLOW}
description: test the relay, forward invoices, tell each person
inputs:
  recipients: {{type: list, default: [ann@example.org, bob@example.org]}}
target: {SANDBOX_TARGET_NAME}
triggers:
  - type: email
    target: {INBOX}       # the IMAP mailbox invoices arrive in
    conditions:
      all:
        - {{field: subject, op: contains, value: Invoice}}
    after_success: {{action: move, folder: Processed}}
schedules:
  - {{cron: "0 7 * * 1-5"}}   # weekdays at 07:00
steps:
  - id: check            # is the relay there?
    activity: test_target
    continue_on_failure: true
  - id: forward
    activity: send_email
    if: "{{{{ steps.check.status == 'succeeded' }}}}"
    with: {{from: robot@example.org, to: [accounts@example.org], subject: Invoice, body: see attached}}
  - with: {{from: robot@example.org, to: ["{{{{ item }}}}"], subject: Done, body: forwarded}}
    id: tell             # 'with' first: the author's order is kept
    activity: send_email
    for_each: "{{{{ inputs.recipients }}}}"
    max_items: 20
    continue_on_failure: true
"""


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def add_inbox(web: WebApp) -> None:
    """An IMAP target for the trigger to name (nothing listens there: the trigger just errs)."""
    mw = web.services
    mw.account_keys.create(AccountKeyCreate(name="billing", username="billing", password=Secret("pw-x")))
    target = {"display_name": INBOX, "type": "imap", "server": "127.0.0.1", "port": closed_port()}
    mw.targets.create(TargetCreate.model_validate({**target, "account_key": "billing"}))


def test_the_diagram_shows_triggers_steps_conditions_loops_and_the_document_as_written(
    page: Page, web: WebApp
) -> None:
    add_inbox(web)
    first_login(page, web)
    page.goto("/workflows/new")
    page.get_by_label("Document (YAML or JSON)").fill(DOCUMENT)
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("heading", name=WORKFLOW, level=1)).to_be_visible()

    figure = page.get_by_role("figure", name="Diagram")
    expect(figure).to_contain_text("3 steps, run one after the other (1 with a condition; 1 repeated)")

    # What starts it: the email trigger with its condition, the schedule, and by hand.
    starts = figure.get_by_role("list", name="Started by").get_by_role("listitem")
    expect(starts).to_have_count(3)
    expect(starts.nth(0)).to_contain_text(f"New mail in {INBOX} (trigger 0)")
    expect(starts.nth(0)).to_contain_text("When subject contains “Invoice”")
    expect(starts.nth(0)).to_contain_text("After success: moved to Processed")
    expect(starts.nth(1)).to_contain_text("Schedule 0: cron 0 7 * * 1-5 (UTC)")
    expect(starts.nth(2)).to_have_text(re.compile(r"By hand or through the API"))

    # The steps, in order, each a box with its rule.
    steps = figure.get_by_role("list", name="Steps, in order").get_by_role("listitem")
    expect(steps).to_have_count(3)
    check, forward, tell = (
        figure.get_by_role("listitem", name=name) for name in ("1. check", "2. forward", "3. tell")
    )
    expect(check).to_contain_text("test_target")
    expect(check).to_contain_text("If it fails: the run goes on")
    expect(forward).to_contain_text("If steps.check.status == 'succeeded'")
    expect(forward).to_contain_text("otherwise this step is skipped")
    expect(forward).to_contain_text("If it fails: the run stops")
    expect(forward.locator(".flow-diamond")).to_be_visible()  # drawn, and hidden from screen readers
    expect(forward.locator(".flow-diamond")).to_have_attribute("aria-hidden", "true")
    expect(tell).to_contain_text("For each item of inputs.recipients (at most 20)")
    expect(tell).to_contain_text("If it fails: the run goes on")
    tops = [steps.nth(i).bounding_box() for i in range(3)]
    assert all(box is not None for box in tops)
    assert [box["y"] for box in tops if box] == sorted(box["y"] for box in tops if box)  # drawn top to bottom
    shot(page, "workflow-diagram")

    # The document is shown as written, comments and order included.
    expect(page.locator("pre")).to_have_text(DOCUMENT)

    # A trigger turned off on the page shows as disabled in the diagram.
    page.get_by_role("region", name="Email triggers").get_by_role("button", name="Disable").click()
    expect(page.get_by_role("figure", name="Diagram").get_by_role("list", name="Started by").get_by_role(
        "listitem").nth(0)).to_contain_text("disabled")  # fmt: skip

    # The edit form holds the text as written; an edited comment is kept as typed.
    page.goto(f"/workflows/{web.services.workflows.get(WORKFLOW).id}/edit")
    textarea = page.get_by_label("Document (YAML or JSON)")
    expect(textarea).to_have_value(DOCUMENT)
    edited = DOCUMENT.replace("owned by the ops team", "owned by the platform team")
    textarea.fill(edited)
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("heading", name=WORKFLOW, level=1)).to_be_visible()
    assert web.services.workflows.export(WORKFLOW).document == edited

    # At phone width the diagram fits a 358 px column (390 px less the page's margins). The
    # page itself may still be wider while a wide table is on it.
    page.set_viewport_size({"width": 390, "height": 844})
    overflow = figure.evaluate("f => { f.style.maxWidth = '358px'; return f.scrollWidth - f.clientWidth; }")
    assert overflow <= 0, f"the diagram is {overflow} px wider than a 358 px column"
    shot(page, "workflow-diagram-390")
