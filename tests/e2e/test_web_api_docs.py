"""The API docs in a real Chromium with no internet: Swagger UI loads from the app."""

from __future__ import annotations

from playwright.sync_api import Page, Request, expect

from tests.support.webapp import WebApp


def test_api_docs_render_from_the_apps_own_files(page: Page, web: WebApp) -> None:
    elsewhere: list[str] = []

    def note(request: Request) -> None:
        if not request.url.startswith((web.base_url, "data:", f"blob:{web.base_url}")):
            elsewhere.append(request.url)

    page.on("request", note)
    page.goto("/api/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Mailwright")
    expect(page.locator(".opblock-summary-path", has_text="/api/v1/send-email").first).to_be_visible()
    assert page.request.get("/api/redoc").status == 404  # not offered: ReDoc would call a CDN
    assert elsewhere == [], f"the docs asked the network for {elsewhere}"
    page.goto("/login")
    expect(page.get_by_role("link", name="API docs")).to_have_attribute("href", "/api/docs")
