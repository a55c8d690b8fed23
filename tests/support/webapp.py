"""The web UI under test: a served app with the sandbox, Chromium, log-in and page helpers."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from mailwright.config import Settings
from mailwright.sandbox import SANDBOX_TARGET_NAME, SandboxServer, SandboxStore
from mailwright.server import create_app
from mailwright.services.app import Services
from tests.support.apiserver import APIServer
from tests.support.browser import CHROMIUM_ARGS, chromium_path, screenshot_path

ADMIN_PASSWORD = "Admin-Passw0rd-For-Tests"
KEY_PASSWORD = "Key-Secret-Never-Shown-42"


@dataclass
class WebApp:
    base_url: str
    services: Services
    store: SandboxStore
    admin_token: str


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Module scope: Playwright's sync API keeps an event loop running in this thread,
    # which must be gone before other modules' asyncio tests start.
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True
        )
        yield launched
        launched.close()


@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebApp]:
    services = Services(Settings(home=tmp_path / "home"))
    store = SandboxStore(tmp_path / "home" / "sandbox")
    capture = SandboxServer(store, port=0).start()
    services.targets.ensure_sandbox_target(name=SANDBOX_TARGET_NAME, port=capture.port)
    admin = services.tokens.ensure_admin()
    assert admin is not None
    app = create_app(services, sandbox_store=store, sandbox_address=f"127.0.0.1:{capture.port}")
    with APIServer(services, app=app) as server:
        yield WebApp(base_url=server.base_url, services=services, store=store, admin_token=admin.token)
    capture.stop()
    services.close()


@pytest.fixture
def page(browser: Browser, web: WebApp) -> Iterator[Page]:
    context = browser.new_context(base_url=web.base_url, viewport={"width": 1280, "height": 860})
    context.set_default_timeout(10_000)
    opened = context.new_page()
    yield opened
    context.close()


def first_login(page: Page, web: WebApp) -> None:
    """The first start: set the admin password with the printed token."""
    page.goto("/targets")
    expect(page).to_have_url(re.compile(r"/login\?next=/targets"))
    page.get_by_label("Admin API token").fill(web.admin_token)
    page.get_by_label("New password").fill(ADMIN_PASSWORD)
    page.get_by_label("Confirm the password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Set password and log in").click()
    expect(page.get_by_role("heading", name="Targets")).to_be_visible()


def nav(page: Page, name: str) -> None:
    page.get_by_role("navigation", name="Main").get_by_role("link", name=name).click()


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(screenshot_path(name)), full_page=True)
