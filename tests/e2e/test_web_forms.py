"""The web UI's forms in Chromium: every error at once, suggestions, and the whole Send Email form.

Over plain HTTP (no browser) the same forms are in tests/integration/test_web_forms.py.
"""

from __future__ import annotations

import email
import email.policy
import re

from playwright.sync_api import FilePayload, Page, expect

from mailwright.sandbox import SANDBOX_TARGET_NAME
from tests.support.webapp import WebApp, first_login, nav, shot

RUN_URL = re.compile(r"/runs/[0-9a-f-]{36}$")


def active_id(page: Page) -> str:
    return str(page.evaluate("document.activeElement && document.activeElement.id"))


def test_every_error_at_once_with_a_summary_that_takes_the_focus(page: Page, web: WebApp) -> None:
    first_login(page, web)
    page.goto("/targets/new")
    form = page.locator("#target-form")
    form.get_by_label("SMTP Server").fill("smtp.example.test")
    form.get_by_label("SMTP Port").fill("99999")
    form.get_by_label("No Account Keys").select_option("false")
    page.get_by_role("button", name="Submit").click()

    summary = page.locator("#error-summary")
    expect(summary).to_be_visible()
    expect(summary).to_be_focused()
    expect(summary.get_by_role("heading")).to_have_text("There are 3 problems with this form")
    links = summary.get_by_role("link")
    expect(links).to_have_text(
        [
            "Display Name is required.",
            "SMTP Port must be 65535 or less.",
            re.compile(r"^Default Account Keys: choose a default account key \(Add New makes one\)"),
        ]
    )
    # Beside each field, too; and nothing written for the command line or the API.
    expect(form.locator("#e-display_name")).to_have_text("Display Name is required.")
    expect(form.locator("#e-port")).to_have_text("SMTP Port must be 65535 or less.")
    text = page.locator("main").inner_text()
    assert "--" not in text and "port: " not in text and "input should" not in text
    shot(page, "form-errors-summary")

    links.nth(1).click()
    expect(form.get_by_label("SMTP Port")).to_be_focused()
    links.nth(0).click()
    expect(form.get_by_label("Display Name")).to_be_focused()


def test_add_new_dialog_marks_required_fields_and_shows_every_error(page: Page, web: WebApp) -> None:
    first_login(page, web)
    page.goto("/targets/new")
    page.get_by_role("button", name="Add New").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    for field in ("k-name", "k-username", "k-password"):
        expect(dialog.locator(f"label[for={field}] .req")).to_be_visible()
    expect(dialog.locator("label[for=k-description] .req")).to_have_count(0)
    expect(dialog.get_by_text("Fields marked")).to_be_visible()

    dialog.get_by_role("button", name="Save key").click()
    summary = dialog.locator("#k-general")
    expect(summary).to_be_focused()
    expect(summary.get_by_role("link")).to_have_count(3)
    expect(summary).to_contain_text("Name is required.")
    expect(summary).to_contain_text("Mailbox Password is required.")
    expect(dialog.locator("#ke-name")).to_have_text("Name is required.")
    expect(dialog.get_by_label("Name", exact=True)).to_have_attribute("aria-invalid", "true")
    shot(page, "form-errors-add-new-dialog")
    summary.get_by_role("link", name="Mailbox Password is required.").click()
    expect(dialog.get_by_label("Mailbox Password")).to_be_focused()

    # Fixed: the errors go, the key is made and chosen.
    dialog.get_by_label("Name", exact=True).fill("fixed-key")
    dialog.get_by_label("Mailbox Username").fill("ops@example.test")
    dialog.get_by_label("Mailbox Password").fill("Some-Password-1")
    dialog.get_by_role("button", name="Save key").click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#f-account_key")).to_have_value(web.services.account_keys.get("fixed-key").id)


def test_a_port_change_suggests_rather_than_replaces_a_chosen_security(page: Page, web: WebApp) -> None:
    first_login(page, web)
    page.goto("/targets/new")
    form = page.locator("#target-form")
    security = form.get_by_label("Security")
    port = form.get_by_label("SMTP Port")

    # Not chosen yet: the port brings its usual mode, and the form says so.
    port.fill("465")
    port.dispatch_event("change")
    expect(security).to_have_value("ssl")
    note = form.locator("#suggest-security")
    expect(note).to_contain_text("SMTP Port 465 is usually used with SSL")
    form.get_by_label("SMTP Server").focus()  # the port's own change event on leaving it
    expect(note).to_contain_text("Security set to")

    # Chosen by hand: kept; the usual one is offered, with why.
    security.select_option("starttls")
    expect(note).to_be_hidden()
    port.fill("2465")
    port.dispatch_event("change")
    port.fill("465")
    port.dispatch_event("change")
    expect(security).to_have_value("starttls")
    expect(note).to_contain_text("is usually used with")
    expect(note).to_contain_text("it is kept")
    shot(page, "form-port-suggests-security")
    note.get_by_role("button", name=re.compile("^Use ")).click()
    expect(security).to_have_value("ssl")
    expect(security).to_be_focused()


def test_an_edited_targets_security_is_the_users_choice(page: Page, web: WebApp) -> None:
    first_login(page, web)
    sandbox = web.services.targets.get(SANDBOX_TARGET_NAME)
    page.goto(f"/targets/{sandbox.id}/edit")
    form = page.locator("#target-form")
    before = form.get_by_label("Security").input_value()
    port = form.get_by_label("SMTP Port")
    port.fill("465" if before != "ssl" else "587")
    port.dispatch_event("change")
    expect(form.get_by_label("Security")).to_have_value(before)
    expect(form.locator("#suggest-security")).to_contain_text("it is kept")


def test_starttls_optional_only_with_starttls_and_protocol_is_not_a_tab_stop(page: Page, web: WebApp) -> None:
    first_login(page, web)
    page.goto("/targets/new")
    form = page.locator("#target-form")
    page.locator("details summary", has_text="Advanced").click()
    optional = form.get_by_label("STARTTLS optional")
    form.get_by_label("Security").select_option("starttls")
    expect(optional).to_be_visible()
    form.get_by_label("Security").select_option("ssl")
    expect(optional).to_be_hidden()
    form.get_by_label("Security").select_option("none")
    expect(optional).to_be_hidden()
    form.get_by_label("Target Type").select_option("imap")
    form.get_by_label("Target Type").select_option("smtp")
    form.get_by_label("Security").select_option("starttls")
    expect(optional).to_be_visible()

    protocol = form.get_by_label("Protocol")
    expect(protocol).to_have_attribute("tabindex", "-1")
    form.get_by_label("Description").focus()
    seen = []
    for _ in range(25):
        page.keyboard.press("Tab")
        seen.append(active_id(page))
    assert "f-protocol" not in seen
    assert "f-server" in seen


def test_a_form_address_opened_directly_is_a_page(page: Page, web: WebApp) -> None:
    first_login(page, web)
    sandbox = web.services.targets.get(SANDBOX_TARGET_NAME)
    response = page.goto(f"/targets/{sandbox.id}/test")
    assert response is not None and response.status == 405
    expect(page.get_by_role("heading", name="This address takes a form")).to_be_visible()
    assert "Method Not Allowed" not in page.content()
    page.get_by_role("link", name="Back to the page").click()
    expect(page.get_by_role("heading", name=SANDBOX_TARGET_NAME)).to_be_visible()
    page.goto("/targets/no-such-target")
    expect(page.get_by_role("alert")).to_contain_text("No target named 'no-such-target'")
    assert "mailwright targets list" not in page.content()


def test_send_email_with_every_part_and_a_reload_sends_nothing_more(page: Page, web: WebApp) -> None:
    first_login(page, web)
    nav(page, "Send Email")
    page.get_by_label("Target").select_option(web.services.targets.get(SANDBOX_TARGET_NAME).id)
    page.get_by_label("From", exact=True).fill("Robot <robot@example.test>")
    page.get_by_label("To", exact=True).fill("alice@example.test")
    page.get_by_label("CC", exact=True).fill("carol@example.test")
    page.get_by_label("BCC", exact=True).fill("audit@example.test")
    page.get_by_label("Reply-To").fill("Help desk <help@example.test>")
    page.get_by_label("Subject").fill("Every part")
    page.get_by_label("Text", exact=True).fill("Plain words for plain readers.")
    page.get_by_label("HTML", exact=True).fill("<p>Rich <b>words</b></p>")
    page.get_by_text("Importance and custom headers").click()
    page.get_by_label("Importance").select_option("high")
    page.get_by_label("Custom headers").fill("X-Campaign: spring\nX-Ticket: 42")
    page.get_by_label("Attachments").set_input_files(
        files=[
            FilePayload(name="one.txt", mimeType="text/plain", buffer=b"first file\n"),
            FilePayload(name="two.csv", mimeType="text/csv", buffer=b"a,b\n1,2\n"),
        ]
    )
    shot(page, "send-email-full-form")
    page.get_by_role("button", name="Send", exact=True).click()
    expect(page).to_have_url(RUN_URL)  # POST/redirect/GET
    expect(page.get_by_role("status")).to_contain_text("Sent: Message-ID")

    (captured,) = web.store.list()
    assert sorted(captured.rcpt_tos) == ["alice@example.test", "audit@example.test", "carol@example.test"]
    message = email.message_from_bytes(web.store.raw(captured.id), policy=email.policy.default)
    assert message["Cc"] == "carol@example.test"
    assert "help@example.test" in str(message["Reply-To"])
    assert message["X-Campaign"] == "spring" and message["X-Ticket"] == "42"
    assert message["Importance"].lower() == "high"
    assert "audit@example.test" not in str(message)
    body = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert body is not None and "Plain words" in body.get_content()
    assert html is not None and "<b>words</b>" in html.get_content()
    names = sorted(part.get_filename() or "" for part in message.iter_attachments())
    assert names == ["one.txt", "two.csv"]

    with page.expect_response(lambda r: r.url == page.url) as reloaded:
        page.reload()
    assert reloaded.value.request.method == "GET"
    assert len(web.store.list()) == 1


def test_send_email_shows_every_error_at_once(page: Page, web: WebApp) -> None:
    first_login(page, web)
    nav(page, "Send Email")
    page.get_by_label("To", exact=True).fill("not an address")
    page.get_by_label("Reply-To").fill("nor this")
    page.get_by_label("From", exact=True).fill("@@")
    page.get_by_role("button", name="Send", exact=True).click()
    summary = page.locator("#error-summary")
    expect(summary).to_be_focused()
    expect(summary.get_by_role("link")).to_have_count(3)
    summary.get_by_role("link", name=re.compile("^Reply-To")).click()
    expect(page.get_by_label("Reply-To")).to_be_focused()
    assert web.store.list() == []
