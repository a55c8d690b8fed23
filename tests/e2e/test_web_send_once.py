"""The Send Email form in Chromium: one message per form, whatever the browser does after.

The form carries a one-time key; the answer is a 303 to the run's page. Reloading
that page, or going back and pressing Send on the same form, must not send the
message again; a form changed after it was sent is a new message, said so first.
"""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from mailwright.sandbox import SANDBOX_TARGET_NAME
from tests.support.webapp import WebApp, first_login, nav, shot

RUN_URL = re.compile(r"/runs/[0-9a-f-]{36}$")


def _fill(page: Page, web: WebApp, subject: str) -> None:
    page.get_by_label("Target").select_option(web.services.targets.get(SANDBOX_TARGET_NAME).id)
    page.get_by_label("From", exact=True).fill("Robot <robot@example.test>")
    page.get_by_label("To", exact=True).fill("alice@example.test")
    page.get_by_label("Subject").fill(subject)
    page.get_by_label("Text", exact=True).fill("Sent once, whatever happens next.")


def _send(page: Page) -> int:
    """Press Send; the status of the form's POST."""
    with page.expect_response(
        lambda r: r.request.method == "POST" and r.url.endswith("/send/message")
    ) as posted:
        page.get_by_role("button", name="Send", exact=True).click()
    return posted.value.status


def test_reload_and_resubmit_send_nothing_more(page: Page, web: WebApp) -> None:
    first_login(page, web)
    nav(page, "Send Email")
    key = page.locator("input[name=idempotency_key]").input_value()
    assert len(key) >= 32
    _fill(page, web, "Once only")

    assert _send(page) == 303
    expect(page).to_have_url(RUN_URL)
    run_url = page.url
    expect(page.get_by_role("status")).to_contain_text("Sent: Message-ID")
    expect(page.get_by_role("cell", name="alice@example.test")).to_be_visible()
    shot(page, "send-email-run-page")
    assert len(web.store.list()) == 1

    # Reload: the run's page is fetched again (GET); nothing is posted.
    with page.expect_response(lambda r: r.url == run_url) as reloaded:
        page.reload()
    assert reloaded.value.request.method == "GET"
    expect(page.get_by_role("heading", level=1)).to_contain_text("Send Email")

    # Back to the very form (same key, same fields) and Send: the first run answers.
    page.go_back()
    expect(page).to_have_url(re.compile(r"/send$"))
    assert page.locator("input[name=idempotency_key]").input_value() == key
    expect(page.get_by_label("Subject")).to_have_value("Once only")
    assert _send(page) == 303
    expect(page).to_have_url(run_url)
    expect(page.get_by_role("status")).to_contain_text("already sent; nothing was sent again")

    # Back again, change the form and Send: a changed message is not the one sent; say so.
    page.go_back()
    expect(page).to_have_url(re.compile(r"/send$"))
    page.get_by_label("Subject").fill("Once only, corrected")
    assert _send(page) == 409
    expect(page.get_by_role("alert")).to_contain_text("already sent, and it has changed since")
    expect(page.get_by_label("Subject")).to_have_value("Once only, corrected")
    assert page.locator("input[name=idempotency_key]").input_value() != key
    assert len(web.store.list()) == 1  # still only the first
    shot(page, "send-email-changed-after-sending")

    # Sending it now is a deliberate new message.
    assert _send(page) == 303
    expect(page).to_have_url(RUN_URL)
    assert page.url != run_url
    expect(page.get_by_role("status")).to_contain_text("Sent: Message-ID")
    subjects = sorted(m.subject for m in web.store.list())
    assert subjects == ["Once only", "Once only, corrected"]
    assert len(web.services.runs.list_runs()) == 2
