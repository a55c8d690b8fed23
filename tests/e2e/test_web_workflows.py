"""The Workflows and Runs pages in Debian's Chromium (Playwright): create, start, follow a run."""

from __future__ import annotations

import email
import re
import time
from email import policy

from playwright.sync_api import Locator, Page, expect

from mailwright.sandbox import SANDBOX_TARGET_NAME
from tests.support.webapp import WebApp, first_login, nav, shot

WORKFLOW = "Disk alert and follow-up"
RECIPIENT = "x@example.net"
SECOND = "oncall@example.net"
RUN_TIMEOUT = 20.0

DOCUMENT = f"""\
name: {WORKFLOW}
description: an alert, then a follow-up threaded on it
inputs:
  recipient: {{type: string, description: who gets the alert}}
  level: {{type: integer, default: 2}}
target: {SANDBOX_TARGET_NAME}
steps:
  - id: alert
    activity: send_email
    with:
      from: robot@example.org
      to: ["{{{{ inputs.recipient }}}}"]
      subject: "Disk alert level {{{{ inputs.level }}}}"
      body: The disk of db01 is 95% full.
  - id: followup
    activity: send_email
    with:
      from: robot@example.org
      to: [{SECOND}]
      subject: "Re: Disk alert"
      body: Escalated.
      in_reply_to: "{{{{ steps.alert.output.message_id }}}}"
"""


def status_badge(step: Locator) -> Locator:
    return step.locator(".badge")


def reload_until_finished(page: Page) -> str:
    """Reload the run page until its status badge is final, for at most RUN_TIMEOUT seconds."""
    badge = page.get_by_role("heading", level=1).locator(".badge")
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        status = badge.inner_text().strip()
        if status in ("succeeded", "failed", "cancelled"):
            return status
        assert time.monotonic() < deadline, f"the run is still {status} after {RUN_TIMEOUT} s"
        time.sleep(0.3)
        page.reload()


def test_create_a_workflow_start_it_and_follow_the_run(page: Page, web: WebApp) -> None:
    first_login(page, web)
    nav(page, "Workflows")
    expect(page.get_by_role("heading", name="Workflows")).to_be_visible()
    page.get_by_role("link", name="New workflow").click()
    expect(page).to_have_url(re.compile(r"/workflows/new$"))
    document = page.get_by_label("Document (YAML or JSON)")
    expect(document).to_have_value(re.compile(r"steps:"))  # an example to start from

    # A bad document: the error is shown next to it, and what was pasted is kept.
    bad = "send_emial".join(DOCUMENT.rsplit("send_email", 1))
    document.fill(bad)
    page.get_by_role("button", name="Save").click()
    error = page.locator("#e-document")
    expect(error).to_contain_text("steps[1].activity")
    expect(error).to_contain_text("unknown activity 'send_emial'")
    expect(document).to_have_attribute("aria-invalid", "true")
    expect(document).to_have_attribute("aria-describedby", "e-document")
    expect(document).to_have_value(bad)
    shot(page, "workflow-form-unknown-activity")
    assert web.services.workflows.list_all() == []

    # The good document is saved and its page shows a form generated from its inputs.
    document.fill(DOCUMENT)
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("heading", name=WORKFLOW, level=1)).to_be_visible()
    workflow = web.services.workflows.get(WORKFLOW)
    expect(page).to_have_url(re.compile(rf"/workflows/{workflow.id}$"))
    recipient = page.get_by_label("recipient")
    level = page.get_by_label("level")
    expect(recipient).to_have_attribute("placeholder", "required")
    expect(recipient).to_have_accessible_description("who gets the alert")
    expect(level).to_have_attribute("type", "number")
    expect(level).to_have_attribute("placeholder", "2")
    expect(page.get_by_label("Target")).to_have_value("")
    expect(page.locator("pre")).to_contain_text("steps.alert.output.message_id")
    shot(page, "workflow-detail")

    # Starting without the required input is refused on the same page.
    page.get_by_role("button", name="Start").click()
    expect(page.get_by_role("alert")).to_contain_text("Missing required input recipient")
    assert web.services.runs.list_runs() == []

    # Start it with a value: the run page follows it to the end.
    page.get_by_label("recipient").fill(RECIPIENT)
    page.get_by_label("level").fill("5")
    page.get_by_role("button", name="Start").click()
    expect(page).to_have_url(re.compile(r"/runs/[0-9a-f-]{36}$"))
    run_id = page.url.rsplit("/", 1)[1]
    expect(page.get_by_role("heading", level=1)).to_contain_text(WORKFLOW)
    assert reload_until_finished(page) == "succeeded"
    alert = page.get_by_role("region", name="Step alert")
    followup = page.get_by_role("region", name="Step followup")
    for step in (alert, followup):
        expect(status_badge(step)).to_have_text("succeeded")
        expect(step.get_by_text("Message-ID")).to_be_visible()
    expect(alert.get_by_role("cell", name=RECIPIENT)).to_be_visible()
    expect(followup.get_by_role("cell", name=SECOND)).to_be_visible()
    expect(page.get_by_text('"level": 5')).to_be_visible()  # the input, coerced to its type
    shot(page, "run-succeeded")

    run = web.services.runs.get(run_id)
    assert run.status == "succeeded" and [s.status for s in run.steps] == ["succeeded", "succeeded"]
    alert_id, followup_id = (s.message_id for s in run.steps)
    expect(alert).to_contain_text(str(alert_id))
    captured = {s.subject: s for s in web.store.list()}
    assert set(captured) == {"Disk alert level 5", "Re: Disk alert"}
    assert captured["Disk alert level 5"].rcpt_tos == (RECIPIENT,)
    raw = web.store.raw(captured["Re: Disk alert"].id)
    threaded = email.message_from_bytes(raw, policy=policy.default)
    assert threaded["In-Reply-To"] == alert_id and threaded["Message-ID"] == followup_id

    # The Runs list shows it; its link leads back to the run.
    nav(page, "Runs")
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()
    row = page.get_by_role("row").filter(has_text=WORKFLOW)
    expect(row).to_have_count(1)
    expect(row.locator(".badge")).to_have_text("succeeded")
    shot(page, "runs-list")
    row.get_by_role("link", name=run_id[:8]).click()
    expect(page).to_have_url(re.compile(rf"/runs/{run_id}$"))

    nav(page, "Workflows")
    listed = page.get_by_role("row").filter(has_text=WORKFLOW)
    expect(listed.get_by_role("cell").last).to_have_text("1")  # runs so far
