"""Every page at a phone's width (390 px) in Chromium: nothing scrolls sideways, axe-core finds
no serious or critical violation, and the navigation collapses into a menu that keyboards and
screen readers can use.

axe-core comes from the npm registry, pinned in tests/axe/package-lock.json and installed by
`make test` (`npm ci --prefix tests/axe`); the app never serves it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from mailwright.config import Settings
from mailwright.domain.send_request import SendEmailRequest
from mailwright.sandbox import SANDBOX_TARGET_NAME, SandboxServer, SandboxStore
from mailwright.secrets import Secret
from mailwright.server import create_app
from mailwright.services.account_keys import AccountKeyCreate
from mailwright.services.app import Services
from mailwright.services.targets import TargetCreate
from tests.support.apiserver import APIServer
from tests.support.webapp import ADMIN_PASSWORD, KEY_PASSWORD, WebApp, first_login, shot

WIDTH = 390
AXE = Path(__file__).resolve().parents[1] / "axe" / "node_modules" / "axe-core" / "axe.min.js"
AXE_HINT = "axe-core is not installed: run `npm ci --prefix tests/axe` (`make test` does)"
LONG = "a-rather-long-unbroken-name-that-phones-must-wrap@very-long-subdomain.example.org"

WORKFLOW = f"""\
# Seen on every page at 390 px
name: Quarterly report to the whole distribution list
description: a workflow with a trigger, so the Triggers page has a row
target: {SANDBOX_TARGET_NAME}
triggers:
  - type: email
    target: Inbox of {LONG}
    folder: INBOX
    conditions: {{all: [{{field: subject, op: contains, value: Report}}]}}
steps:
  - id: mail
    activity: send_email
    with:
      from: robot@example.org
      to: ["{LONG}"]
      subject: Quarterly report
      body: Attached.
"""


@dataclass
class Site:
    web: WebApp
    paths: dict[str, str]
    state: Any  # the logged-in browser context's storage state


def seed(mw: Services) -> dict[str, str]:
    """Data with long values on every page; the ids the pages are reached by."""
    key = mw.account_keys.create(
        AccountKeyCreate(name="ops-mailbox-key", username=LONG, password=Secret(KEY_PASSWORD))
    )
    inbox = mw.targets.create(
        TargetCreate.model_validate(
            {
                "display_name": f"Inbox of {LONG}",
                "description": "Reads the reports mailbox " * 6,
                "type": "imap",
                "server": "imap.very-long-subdomain-of-the-company.example.org",
                "port": 1,  # nothing listens: the trigger shows an error, as it would
                "account_key": key.name,
            }
        )
    )
    workflow = mw.workflows.create(WORKFLOW)
    run = mw.runs.start_send_email(
        SendEmailRequest.model_validate(
            {
                "target": SANDBOX_TARGET_NAME,
                "from": f"Robot <{LONG}>",
                "to": [LONG, "alice@example.test"],
                "subject": "A subject long enough to need two lines on a phone, and then some more",
                "body": "x" * 300,
            }
        )
    )
    deadline = time.monotonic() + 20
    while mw.runs.get(run.id).status not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, "the sandbox send did not finish"
        time.sleep(0.1)
    return {"target": inbox.id, "key": key.id, "workflow": workflow.id, "run": run.id}


@pytest.fixture(scope="module")
def site(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One served app with data for all the pages of this module (started once: Chromium is heavy)."""
    home = tmp_path_factory.mktemp("small") / "home"
    services = Services(Settings(home=home))
    store = SandboxStore(home / "sandbox")
    capture = SandboxServer(store, port=0).start()
    services.targets.ensure_sandbox_target(name=SANDBOX_TARGET_NAME, port=capture.port)
    admin = services.tokens.ensure_admin()
    assert admin is not None
    app = create_app(services, sandbox_store=store, sandbox_address=f"127.0.0.1:{capture.port}")
    try:
        with APIServer(services, app=app) as server:
            web = WebApp(base_url=server.base_url, services=services, store=store, admin_token=admin.token)
            paths = seed(services)
            paths["message"] = store.list()[0].id
            context = browser.new_context(base_url=web.base_url)
            first_login(context.new_page(), web)
            state = context.storage_state()
            context.close()
            yield Site(web=web, paths=paths, state=state)
    finally:
        capture.stop()
        services.close()


PAGES = {
    "dashboard": "/",
    "targets list": "/targets",
    "target form (new)": "/targets/new",
    "target detail": "/targets/{target}",
    "target form (edit)": "/targets/{target}/edit",
    "target delete": "/targets/{target}/delete",
    "account keys list": "/account-keys",
    "account key form (new)": "/account-keys/new",
    "account key form (edit)": "/account-keys/{key}/edit",
    "account key delete": "/account-keys/{key}/delete",
    "send": "/send",
    "sandbox list": "/sandbox",
    "sandbox detail": "/sandbox/{message}",
    "workflows list": "/workflows",
    "workflow form (new)": "/workflows/new",
    "workflow detail": "/workflows/{workflow}",
    "workflow form (edit)": "/workflows/{workflow}/edit",
    "workflow delete": "/workflows/{workflow}/delete",
    "trigger messages": "/workflows/{workflow}/triggers/messages",
    "runs list": "/runs",
    "run detail": "/runs/{run}",
    "run timeline": "/runs/{run}/timeline",
    "triggers": "/triggers",
    "workers": "/workers",
    "audit": "/audit",
    "error (not found)": "/targets/no-such-target",
}


def narrow_page(browser: Browser, base_url: str, state: Any = None) -> Page:
    # bypass_csp: the app's CSP (script-src 'self') would refuse the injected axe-core.
    context = browser.new_context(
        base_url=base_url, viewport={"width": WIDTH, "height": 844}, storage_state=state, bypass_csp=True
    )
    context.set_default_timeout(10_000)
    return context.new_page()


def page_width(page: Page) -> int:
    return int(page.evaluate("document.documentElement.scrollWidth"))


def axe_problems(page: Page) -> list[str]:
    """axe-core's serious and critical violations on the page, one line each."""
    assert AXE.is_file(), AXE_HINT
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:5]}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def check(page: Page, name: str) -> None:
    """Both checks, reported together: the width and axe's findings (with every <details> open)."""
    page.evaluate("document.querySelectorAll('details').forEach((d) => { d.open = true; })")
    shot(page, f"w390-{name.replace(' ', '-').replace('(', '').replace(')', '')}")
    width = page_width(page)
    problems = axe_problems(page)
    report = {"page": name, "url": page.url, "scrollWidth": width, "axe": problems}
    assert width <= WIDTH and not problems, json.dumps(report, indent=2)


@pytest.mark.parametrize("name", list(PAGES))
def test_page_fits_390px_and_passes_axe(browser: Browser, site: Site, name: str) -> None:
    page = narrow_page(browser, site.web.base_url, site.state)
    try:
        page.goto(PAGES[name].format(**site.paths))
        expect(page.get_by_role("heading", level=1)).to_be_visible()
        check(page, name)
        # The same page wide (sidebar beside the page): axe again.
        page.set_viewport_size({"width": 1280, "height": 860})
        assert axe_problems(page) == [], f"{name} at 1280 px"
    finally:
        page.context.close()


def submit_without_browser_checks(page: Page, button: str) -> None:
    """Submit as a browser that does not check `required` would: the server's errors show."""
    page.evaluate("document.querySelectorAll('form').forEach((f) => { f.noValidate = true; })")
    page.get_by_role("button", name=button, exact=True).click()


def target_form_errors(page: Page, site: Site) -> None:
    page.goto("/targets/new")
    page.get_by_label("SMTP Port").fill("99999")
    submit_without_browser_checks(page, "Submit")
    expect(page.locator(".error").first).to_be_visible()


def add_new_key_dialog(page: Page, site: Site) -> None:
    page.goto("/targets/new")
    page.locator("#target-form").get_by_label("No Account Keys").select_option("false")
    page.get_by_role("button", name="Add New").click()
    expect(page.get_by_role("dialog")).to_be_visible()


def send_errors(page: Page, site: Site) -> None:
    page.goto("/send")
    submit_without_browser_checks(page, "Send")
    expect(page.locator(".error, .alert").first).to_be_visible()


def workflow_form_errors(page: Page, site: Site) -> None:
    page.goto("/workflows/new")
    page.get_by_label("Document (YAML or JSON)").fill("name: [unclosed")
    submit_without_browser_checks(page, "Save")
    expect(page.locator(".error, .alert").first).to_be_visible()


def target_connection_test(page: Page, site: Site) -> None:
    page.goto(f"/targets/{site.paths['target']}")
    page.get_by_role("button", name="Test connection").click()
    expect(page.locator(".badge.bad").first).to_be_visible()


STATES = {
    "target form with errors": target_form_errors,
    "add new key dialog": add_new_key_dialog,
    "send with errors": send_errors,
    "workflow form with errors": workflow_form_errors,
    "target after a failed connection test": target_connection_test,
}


@pytest.mark.parametrize("name", list(STATES))
def test_page_state_fits_390px_and_passes_axe(browser: Browser, site: Site, name: str) -> None:
    page = narrow_page(browser, site.web.base_url, site.state)
    try:
        STATES[name](page, site)
        check(page, name)
    finally:
        page.context.close()


def test_login_page_fits_390px_and_passes_axe(browser: Browser, site: Site) -> None:
    page = narrow_page(browser, site.web.base_url)
    try:
        page.goto("/targets")
        expect(page.get_by_role("heading", name="Log in")).to_be_visible()
        check(page, "login")
        page.get_by_label("Admin password or API token").fill("wrong-password")
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_text("Wrong password or token")).to_be_visible()
        check(page, "login (wrong password)")
    finally:
        page.context.close()


def test_setup_page_fits_390px_and_passes_axe(browser: Browser, web: WebApp) -> None:
    page = narrow_page(browser, web.base_url)
    page.goto("/targets")
    expect(page.get_by_role("heading", level=1)).to_be_visible()
    check(page, "setup")
    page.get_by_label("Admin API token").fill("not-the-token")
    page.get_by_label("New password").fill(ADMIN_PASSWORD)
    page.get_by_label("Confirm the password").fill(ADMIN_PASSWORD + "x")
    page.get_by_role("button", name="Set password and log in").click()
    expect(page.locator(".error, .alert").first).to_be_visible()
    check(page, "setup (errors)")


def test_menu_collapses_and_works_with_the_keyboard(browser: Browser, site: Site) -> None:
    page = narrow_page(browser, site.web.base_url, site.state)
    try:
        page.goto("/targets")
        menu = page.get_by_role("button", name="Menu")
        main_nav = page.get_by_role("navigation", name="Main")
        expect(menu).to_have_attribute("aria-expanded", "false")
        expect(main_nav.get_by_role("link", name="Runs")).to_be_hidden()
        # A table in its own scroll box is still a table to a screen reader, and takes the focus.
        table = page.get_by_role("table", name="Targets")
        expect(table.get_by_role("row")).to_have_count(3)
        expect(table.get_by_role("columnheader", name="Server")).to_have_count(1)
        expect(table).to_have_attribute("tabindex", "0")
        # Keyboard: Tab past the skip link and the brand to the button, Enter opens.
        menu.focus()
        page.keyboard.press("Enter")
        expect(menu).to_have_attribute("aria-expanded", "true")
        expect(main_nav.get_by_role("link", name="Runs")).to_be_visible()
        check(page, "menu open")
        page.keyboard.press("Tab")
        expect(main_nav.get_by_role("link", name="Dashboard")).to_be_focused()  # the first item
        # Escape closes it and gives the focus back to the button.
        page.keyboard.press("Escape")
        expect(menu).to_have_attribute("aria-expanded", "false")
        expect(menu).to_be_focused()
        expect(main_nav.get_by_role("link", name="Runs")).to_be_hidden()
        # Space opens it too; a link then goes to its page, where the menu starts closed.
        page.keyboard.press("Space")
        main_nav.get_by_role("link", name="Runs").click()
        expect(page.get_by_role("heading", name="Runs", level=1)).to_be_visible()
        expect(page.get_by_role("button", name="Menu")).to_have_attribute("aria-expanded", "false")
        # Wide: no menu button, the links are always there.
        page.set_viewport_size({"width": 1280, "height": 860})
        expect(page.get_by_role("button", name="Menu")).to_be_hidden()
        expect(main_nav.get_by_role("link", name="Sandbox")).to_be_visible()
    finally:
        page.context.close()


def test_api_docs_fit_390px(browser: Browser, site: Site) -> None:
    """Swagger UI's page: its width, and axe (its colours are ours to fix: static/api-docs.css;
    its deep links inside each operation's button are turned off)."""
    page = narrow_page(browser, site.web.base_url, site.state)
    try:
        page.goto("/api/docs")
        expect(page.get_by_role("heading", name=re.compile("^Mailwright"))).to_be_visible()
        assert page.locator("html").get_attribute("lang") == "en"
        expect(page.locator(".opblock-summary-method").first).to_be_visible()
        shot(page, "w390-api-docs")
        assert page_width(page) <= WIDTH
        assert axe_problems(page) == []
        # An operation opened (its parameters, responses and "Try it out"), on a wide screen too.
        page.set_viewport_size({"width": 1280, "height": 860})
        page.locator(".opblock-summary-control").first.click()
        expect(page.get_by_role("button", name="Try it out")).to_be_visible()
        assert axe_problems(page) == []
    finally:
        page.context.close()
