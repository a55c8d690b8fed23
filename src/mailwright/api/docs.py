"""The API's documentation pages, served with their scripts and styles from the app itself.

FastAPI's own /docs loads Swagger UI from a CDN: on a machine without internet (a common
place for a mail relay) it is a blank page. The files come from a pinned package
(fastapi-offline 1.7.7: Swagger UI 5, which renders OpenAPI 3.1), mounted
under /api/docs/static; only the two small HTML pages are built here.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/api/docs/static"
OPENAPI_URL = "/api/openapi.json"
ICON = "/static/favicon.svg"
CONTRAST_CSS = "/static/api-docs.css"


def install(app: FastAPI) -> None:
    """GET /api/docs: Swagger UI, to read the API and try it with a token.

    No ReDoc view: its page fetches Redocly's logo from their CDN, so it is not served locally
    in full.
    """
    files = resources.files("fastapi_offline").joinpath("static")
    app.mount(ASSETS, StaticFiles(directory=str(files)), name="api-docs-static")

    # A plain route, as FastAPI's own docs are: the page is public (the API it shows needs a token).
    def swagger(_request: Request) -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=OPENAPI_URL,
            title="Mailwright API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=ICON,
            # No deep links: Swagger UI draws them as links inside each operation's button, a
            # control inside a control that screen readers cannot reach (axe: nested-interactive).
            swagger_ui_parameters={"deepLinking": False},
        )
        # The page's language, for screen readers (FastAPI's template has none).
        body = bytes(page.body).replace(b"<html>", b'<html lang="en">', 1)
        # Swagger UI's colours fail WCAG's contrast (white on light green, blue on white): ours.
        body = body.replace(b"</head>", f'<link rel="stylesheet" href="{CONTRAST_CSS}">\n</head>'.encode(), 1)
        return HTMLResponse(body)

    app.add_route("/api/docs", swagger, include_in_schema=False)
