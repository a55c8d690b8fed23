"""The web UI in Debian's Chromium (Playwright): the product page's flows, end to end."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import FilePayload, Locator, Page, expect

from mailwright.sandbox import SANDBOX_TARGET_NAME
from tests.support.mailstack import MailStack
from tests.support.webapp import ADMIN_PASSWORD, KEY_PASSWORD, WebApp, first_login, nav, shot


def assert_no_secret(page: Page, *secrets: str) -> None:
    html = page.content()
    for secret in secrets:
        assert secret not in html


def test_login_logout_and_wrong_password(page: Page, web: WebApp) -> None:
    first_login(page, web)
    shot(page, "targets-list")
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    page.get_by_label("Admin password or API token").fill("wrong-password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_text("Wrong password or token")).to_be_visible()
    page.get_by_label("Admin password or API token").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Targets")).to_be_visible()
    cookie = next(c for c in page.context.cookies() if c["name"] == "mw_session")
    # Plain HTTP with no MAILWRIGHT_PUBLIC_URL: not Secure (the settings decide, not the Host
    # header; tests/security/test_cookies.py covers the Secure cases).
    assert cookie["httpOnly"] and not cookie["secure"]


def test_new_target_with_add_new_key_and_send_through_the_sandbox(page: Page, web: WebApp) -> None:
    first_login(page, web)
    page.get_by_role("link", name="New Target").click()
    form = page.locator("#target-form")
    expect(form.get_by_label("Target Type")).to_have_value("smtp")
    form.get_by_label("Display Name").fill("Ops relay")
    form.get_by_label("Description").fill("Relay for the ops team")
    form.get_by_label("No Account Keys").select_option("false")
    page.get_by_role("button", name="Add New").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    dialog.get_by_label("Name", exact=True).fill("ops-key")
    dialog.get_by_label("Mailbox Username").fill("ops@example.test")
    dialog.get_by_label("Mailbox Password").fill(KEY_PASSWORD)
    shot(page, "add-new-account-key-dialog")
    dialog.get_by_role("button", name="Save key").click()
    expect(dialog).to_be_hidden()
    expect(form.get_by_label("Default Account Keys")).to_have_value(
        web.services.account_keys.get("ops-key").id
    )
    expect(form.get_by_label("Protocol")).to_have_value("SMTP")
    expect(form.get_by_label("Protocol")).to_have_attribute("readonly", "")
    form.get_by_label("SMTP Server").fill("127.0.0.1")
    form.get_by_label("SMTP Port").fill("587")
    form.get_by_label("SMTP Port").dispatch_event("change")
    expect(form.get_by_label("Security")).to_have_value("starttls")
    assert_no_secret(page, KEY_PASSWORD)
    page.get_by_role("button", name="Submit").click()
    expect(page.get_by_role("heading", name="Ops relay")).to_be_visible()
    expect(page.get_by_text("ops-key")).to_be_visible()
    assert web.services.targets.get("ops relay").account_key == "ops-key"

    # Send through the Local sandbox target and read it on the Sandbox mailbox page.
    nav(page, "Send Email")
    page.get_by_label("Target").select_option(web.services.targets.get(SANDBOX_TARGET_NAME).id)
    page.get_by_label("From", exact=True).fill("Robot <robot@example.test>")
    page.get_by_label("To", exact=True).fill("alice@example.test, bob@example.test")
    page.get_by_label("BCC").fill("audit@example.test")
    page.get_by_label("Subject").fill("Hello from the sandbox ✓")
    page.get_by_label("HTML", exact=True).fill(
        "<p>Hi <b>there</b><script>document.title='pwned'</script><img src='http://example.com/t.png'></p>"
    )
    page.get_by_label("Attachments").set_input_files(
        files=[FilePayload(name="notes.txt", mimeType="text/plain", buffer=b"attached notes\n")]
    )
    page.get_by_role("button", name="Send", exact=True).click()
    expect(page).to_have_url(re.compile(r"/runs/[0-9a-f-]{36}$"))  # POST/redirect/GET
    expect(page.get_by_role("status")).to_contain_text("Sent: Message-ID")
    expect(page.get_by_role("cell", name="audit@example.test")).to_be_visible()
    shot(page, "send-email-result")
    nav(page, "Sandbox mailbox")
    page.get_by_role("link", name="Hello from the sandbox ✓").click()
    expect(page.get_by_role("heading", name="Hello from the sandbox ✓")).to_be_visible()
    expect(page.locator("#text-part")).to_contain_text("Hi there")
    frame = page.frame_locator("iframe.mail")
    expect(frame.locator("b")).to_have_text("there")
    assert page.title() != "pwned"
    assert frame.locator("script").count() == 0
    assert frame.locator("img[src*='example.com']").count() == 0  # remote image blocked
    expect(page.get_by_text("audit@example.test")).to_be_visible()  # envelope only
    with page.expect_download() as download:
        page.get_by_role("link", name="notes.txt").click()
    assert Path(download.value.path()).read_bytes() == b"attached notes\n"
    shot(page, "sandbox-message")
    (captured,) = web.store.list()
    assert "audit@example.test" in captured.rcpt_tos
    assert b"audit@example.test" not in web.store.raw(captured.id).split(b"\r\n\r\n")[0]


def test_validation_errors_next_to_their_fields(page: Page, web: WebApp) -> None:
    first_login(page, web)
    page.goto("/targets/new")
    form = page.locator("#target-form")
    form.get_by_label("Display Name").fill("Local sandbox")
    form.get_by_label("No Account Keys").select_option("true")
    form.get_by_label("SMTP Server").fill("smtp.example.test")
    form.get_by_label("SMTP Port").fill("70000")
    form.get_by_role("button", name="Submit").click()
    port = form.get_by_label("SMTP Port")
    expect(port).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#e-port")).to_contain_text("65535")
    expect(form.get_by_label("Display Name")).to_have_value("Local sandbox")  # what was typed is kept
    shot(page, "target-form-bad-port")
    port.fill("2525")
    form.get_by_role("button", name="Submit").click()
    expect(page.locator("#e-display_name")).to_contain_text("already exists")
    expect(form.get_by_label("Display Name")).to_have_attribute("aria-invalid", "true")
    form.get_by_label("SMTP Port").fill("465")
    form.get_by_label("SMTP Port").press("Tab")  # the port's change picks ssl; the user overrides it
    form.get_by_label("Security").select_option("starttls")
    form.get_by_label("Display Name").fill("Another")
    form.get_by_role("button", name="Submit").click()
    expect(page.locator("#e-security")).to_contain_text("port 465 expects implicit TLS")


def test_gmail_preset_account_keys_pages_and_no_secret_in_html(page: Page, web: WebApp) -> None:
    first_login(page, web)
    page.goto("/account-keys/new")
    page.get_by_role("textbox", name="Name", exact=True).fill("gmail-key")
    page.get_by_label("Mailbox Username").fill("me@gmail.com")
    page.get_by_label("Mailbox Password").fill(KEY_PASSWORD)
    page.get_by_role("button", name="Submit").click()
    expect(page.get_by_role("cell", name="gmail-key", exact=True)).to_be_visible()
    assert_no_secret(page, KEY_PASSWORD)

    page.goto("/targets/new")
    form = page.locator("#target-form")
    form.get_by_role("button", name="Use Gmail").click()
    expect(form.get_by_label("SMTP Server")).to_have_value("smtp.gmail.com")
    expect(form.get_by_label("SMTP Port")).to_have_value("465")
    expect(form.get_by_label("Security")).to_have_value("ssl")
    note = page.locator("#preset-note")
    expect(note).to_contain_text("app password")
    expect(note.get_by_role("link")).to_have_attribute("href", re.compile("support.google.com"))
    form.get_by_label("Default Account Keys").select_option(web.services.account_keys.get("gmail-key").id)
    shot(page, "new-target-gmail-preset")
    page.get_by_role("button", name="Submit").click()
    expect(page.get_by_role("heading", name="Gmail")).to_be_visible()
    shot(page, "target-detail")

    # Edit the key: a blank password keeps the stored one.
    page.goto("/account-keys")
    page.get_by_role("link", name="Edit gmail-key").click()
    expect(page.get_by_label("Mailbox Password")).to_have_value("")
    page.get_by_label("Description").fill("Personal Gmail")
    page.get_by_role("button", name="Submit").click()
    assert web.services.targets.resolve("Gmail").login is not None
    assert web.services.targets.resolve("Gmail").login.password.reveal() == KEY_PASSWORD  # type: ignore[union-attr]
    shot(page, "account-keys-list")
    # Deleting a key in use is refused, naming the target.
    page.get_by_role("link", name="Delete gmail-key").click()
    expect(page.get_by_role("alert")).to_contain_text("'Gmail'")
    for path in (
        "/account-keys",
        "/targets",
        "/send",
        f"/targets/{web.services.targets.get('Gmail').id}/edit",
    ):
        page.goto(path)
        assert_no_secret(page, KEY_PASSWORD, ADMIN_PASSWORD)


def test_target_at_postfix_test_connection_and_send_with_attachment(
    page: Page, web: WebApp, mailstack: MailStack
) -> None:
    password = "Webui-Mailbox-Pw-1"
    address = mailstack.add_user("webui", password)
    first_login(page, web)
    page.goto("/targets/new")
    form = page.locator("#target-form")
    form.get_by_label("Display Name").fill("Test Postfix")
    page.get_by_role("button", name="Add New").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Name", exact=True).fill("webui-box")
    dialog.get_by_label("Mailbox Username").fill(address)
    dialog.get_by_label("Mailbox Password").fill(password)
    dialog.get_by_role("button", name="Save key").click()
    expect(dialog).to_be_hidden()
    form.get_by_label("SMTP Server").fill(mailstack.host)
    form.get_by_label("SMTP Port").fill(str(mailstack.submission_port))
    form.get_by_label("Security").select_option("starttls")
    page.get_by_text("Advanced").click()
    form.get_by_label("CA file (PEM path on the server)").fill(str(mailstack.ca_cert_path))
    page.get_by_role("button", name="Submit").click()
    expect(page.get_by_role("heading", name="Test Postfix")).to_be_visible()
    page.get_by_role("button", name="Test connection").click()
    report = page.locator("section.report")
    expect(report).to_contain_text("OK")
    expect(report).to_contain_text("PIPELINING")
    expect(report).to_contain_text(f"Authenticated as {address}")
    shot(page, "target-test-connection")
    assert_no_secret(page, password)

    page.locator("#main").get_by_role("link", name="Send Email").click()
    page.get_by_label("To", exact=True).fill(address)
    page.get_by_label("Subject").fill("Report with attachment")
    page.get_by_label("Text", exact=True).fill("Please find the report attached.")
    page.get_by_label("Attachments").set_input_files(
        files=[FilePayload(name="report.pdf", mimeType="application/pdf", buffer=b"%PDF-1.7 web ui")]
    )
    page.get_by_role("button", name="Send", exact=True).click()
    expect(page.get_by_role("status")).to_contain_text("Sent: Message-ID")
    (raw,) = mailstack.wait_for_messages(address, password, 1)
    assert b"Report with attachment" in raw
    assert b"report.pdf" in raw

    # A wrong TLS mode is diagnosed in the page.
    page.goto("/targets")
    page.get_by_role("link", name="Test Postfix").click()
    page.get_by_role("link", name="Edit").click()
    page.locator("#target-form").get_by_label("Security").select_option("ssl")
    page.get_by_role("button", name="Submit").click()
    page.get_by_role("button", name="Test connection").click()
    expect(page.locator("section.report")).to_contain_text("speaks plain SMTP first: choose starttls")
    shot(page, "target-test-diagnosis")


def test_new_imap_target_switches_the_email_area(page: Page, web: WebApp) -> None:
    first_login(page, web)
    page.goto("/targets/new")
    form = page.locator("#target-form")
    form.get_by_label("Target Type").select_option("imap")
    expect(form.get_by_label("Protocol")).to_have_value("IMAP")
    expect(form.get_by_label("IMAP Port")).to_have_value("993")
    expect(form.get_by_label("Security")).to_have_value("ssl")
    expect(form.get_by_label("EHLO name")).to_be_hidden()
    form.get_by_role("button", name="Use Gmail").click()
    expect(form.get_by_label("IMAP Server")).to_have_value("imap.gmail.com")
    expect(page.locator("#preset-note")).to_contain_text("IMAP")
    form.get_by_label("No Account Keys").select_option("true")
    form.get_by_label("Polling interval (seconds)").fill("60")
    shot(page, "new-imap-target")
    form.get_by_role("button", name="Submit").click()
    expect(page.get_by_role("heading", name="Gmail")).to_be_visible()
    created = web.services.targets.get("Gmail")
    assert (created.type, created.server, created.port, created.polling_interval) == (
        "imap",
        "imap.gmail.com",
        993,
        60,
    )
    expect(page.get_by_text("IMAP Server")).to_be_visible()


def prop(page: Page, name: str) -> Locator:
    """The value (dd) of one property on a detail page."""
    term = page.locator("dl.props dt").filter(has_text=re.compile(f"^{re.escape(name)}$"))
    return term.locator("xpath=following-sibling::dd[1]")


def test_target_sending_limits_preset_edit_clear_and_errors(page: Page, web: WebApp) -> None:
    first_login(page, web)
    page.goto("/targets/new")
    form = page.locator("#target-form")
    limits = form.get_by_role("group", name="Sending limits and connections")
    expect(limits).to_be_visible()
    form.get_by_label("Target Type").select_option("imap")
    expect(limits).to_be_hidden()  # SMTP only
    form.get_by_label("Target Type").select_option("smtp")
    expect(limits).to_be_visible()
    expect(form.get_by_label("Max connections")).to_have_value("8")
    expect(form.get_by_label("Rate per day")).to_have_value("")
    expect(form.get_by_label("Rate per day")).to_have_attribute(
        "aria-describedby", re.compile(r"\bh-rate_per_day\b")
    )
    expect(page.locator("#h-rate_per_day")).to_contain_text("blank: no limit")

    form.get_by_role("button", name="Use Gmail").click()
    expect(form.get_by_label("Rate per day")).to_have_value("500")
    expect(form.get_by_label("Max messages per connection")).to_have_value("100")
    expect(page.locator("#preset-note")).to_contain_text("Rate per day 500")
    # Another provider's preset does not keep Gmail's limits.
    form.get_by_role("button", name="Use Outlook").click()
    expect(form.get_by_label("Rate per day")).to_have_value("")
    form.get_by_role("button", name="Use Gmail").click()
    expect(form.get_by_label("Rate per day")).to_have_value("500")
    form.get_by_label("No Account Keys").select_option("true")
    shot(page, "new-target-sending-limits")
    form.get_by_role("button", name="Submit").click()
    expect(page.get_by_role("heading", name="Gmail")).to_be_visible()
    expect(prop(page, "Rate limits")).to_have_text("500 messages per day")
    expect(prop(page, "Connection pool")).to_have_text(
        "up to 8 connections, 100 messages each, closed after 30 s idle"
    )
    created = web.services.targets.get("Gmail")
    assert (created.rate_per_day, created.max_messages_per_connection, created.rate_per_minute) == (
        500,
        100,
        None,
    )
    api = page.request.get(
        f"/api/v1/targets/{created.id}", headers={"Authorization": f"Bearer {web.admin_token}"}
    )
    assert api.ok, api.text()
    assert (api.json()["rate_per_day"], api.json()["max_messages_per_connection"]) == (500, 100)

    # Edit: the stored limits are shown; new ones are saved and described.
    page.get_by_role("link", name="Edit").click()
    expect(form.get_by_label("Rate per day")).to_have_value("500")
    expect(form.get_by_label("Rate per minute")).to_have_value("")
    form.get_by_label("Rate per minute").fill("30")
    form.get_by_label("Max connections").fill("4")
    form.get_by_role("button", name="Submit").click()
    expect(prop(page, "Rate limits")).to_have_text("30 messages per minute, 500 messages per day")
    expect(prop(page, "Connection pool")).to_have_text(
        "up to 4 connections, 100 messages each, closed after 30 s idle"
    )
    shot(page, "target-detail-sending-limits")

    # A blank rate clears that limit, and only that one.
    page.get_by_role("link", name="Edit").click()
    expect(form.get_by_label("Rate per minute")).to_have_value("30")
    form.get_by_label("Rate per minute").fill("")
    form.get_by_role("button", name="Submit").click()
    expect(prop(page, "Rate limits")).to_have_text("500 messages per day")
    page.get_by_role("link", name="Edit").click()
    form.get_by_label("Rate per day").fill("")
    form.get_by_role("button", name="Submit").click()
    expect(prop(page, "Rate limits")).to_have_text("no limit")
    saved = web.services.targets.get("Gmail")
    assert (saved.rate_per_minute, saved.rate_per_day, saved.max_connections) == (None, None, 4)

    # Out-of-range values come back next to their field, naming it; nothing is saved.
    page.get_by_role("link", name="Edit").click()
    for name, value, error_id, text in (
        ("Max connections", "0", "e-max_connections", "must be 1 or more"),
        ("Max connections", "999", "e-max_connections", "must be 256 or less"),
        ("Rate per day", "-5", "e-rate_per_day", "must be 0 or more"),
    ):
        form.get_by_label(name, exact=True).fill(value)
        with page.expect_response(lambda r: r.request.method == "POST") as posted:
            form.get_by_role("button", name="Submit").click()
        assert posted.value.status == 422
        field = form.get_by_label(name, exact=True)
        expect(field).to_have_attribute("aria-invalid", "true")
        expect(field).to_have_value(value)  # what was typed is kept
        expect(page.locator(f"#{error_id}")).to_contain_text(f"{name} must")
        expect(page.locator(f"#{error_id}")).to_contain_text(text)
        field.fill("4" if name == "Max connections" else "")
    shot(page, "target-form-bad-rate")
    assert web.services.targets.get("Gmail").max_connections == 4
