"""The security headers middleware: every response gets them; a page's own policy is kept."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from mailwright.web.app import PAGE_CSP, SECURITY_HEADERS, SecurityHeaders

OWN_POLICY = "default-src 'none'; style-src 'unsafe-inline'"


def _page(_request: object) -> Response:
    return HTMLResponse("<p>page</p>")


def _mail_view(_request: object) -> Response:
    return HTMLResponse(
        "<p>mail</p>", headers={"Content-Security-Policy": OWN_POLICY, "X-Frame-Options": "DENY"}
    )


def _api(_request: object) -> Response:
    return JSONResponse({"ok": True})


async def get(path: str) -> httpx.Response:
    app = Starlette(routes=[Route("/page", _page), Route("/mail", _mail_view), Route("/api/v1/thing", _api)])
    transport = httpx.ASGITransport(app=SecurityHeaders(app))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.get(path)


async def test_pages_get_every_header_and_the_page_policy() -> None:
    response = await get("/page")
    assert all(response.headers[name] == value for name, value in SECURITY_HEADERS.items())
    assert response.headers["Content-Security-Policy"] == PAGE_CSP
    assert response.text == "<p>page</p>"


async def test_a_response_that_sets_its_own_policy_and_frame_options_keeps_them() -> None:
    response = await get("/mail")
    assert response.headers["Content-Security-Policy"] == OWN_POLICY
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers.get_list("Content-Security-Policy") == [OWN_POLICY]
    assert response.headers["X-Content-Type-Options"] == "nosniff"


async def test_the_api_gets_the_headers_but_no_page_policy() -> None:
    response = await get("/api/v1/thing")
    assert response.json() == {"ok": True}
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "Content-Security-Policy" not in response.headers
