"""Mounting the web UI on the FastAPI application."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mailwright import http_status
from mailwright.errors import MailwrightError
from mailwright.web import (
    pages_account_keys,
    pages_audit,
    pages_auth,
    pages_dashboard,
    pages_runs,
    pages_sandbox,
    pages_send,
    pages_targets,
    pages_triggers,
    pages_workers,
    pages_workflows,
)
from mailwright.web.form_errors import web_message
from mailwright.web.render import render
from mailwright.web.session import CSRFMismatch, LoginRequired

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "SAMEORIGIN",
    "Referrer-Policy": "same-origin",
}
# Pages use only local assets; the sandboxed mail view sets its own, stricter policy.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "frame-src 'self'; form-action 'self'; base-uri 'none'; object-src 'none'"
)


async def _login_required(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoginRequired)
    return RedirectResponse(f"/login?next={exc.next_url}", status_code=303)


async def _csrf_mismatch(request: Request, _exc: Exception) -> Response:
    return render(
        request,
        "error.html",
        session=None,
        status_code=403,
        title="Form expired",
        message="This form is out of date or came from another site. Go back, reload the page and try again.",
    )


ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]


def _mailwright_error(api_error: ErrorHandler) -> ErrorHandler:
    """Our errors as a page; under /api/ as the API answers them (`api_error`, given by the app)."""

    async def handler(request: Request, exc: Exception) -> Response:
        if request.url.path.startswith("/api/"):
            return await api_error(request, exc)
        assert isinstance(exc, MailwrightError)
        return _error_page(request, exc)

    return handler


def _error_page(request: Request, exc: MailwrightError) -> Response:
    status = http_status.status_for(exc)
    page = render(
        request,
        "error.html",
        session=None,
        status_code=status,
        title="Not allowed" if status == 403 else "Something went wrong",
        message=web_message(exc),
    )
    page.headers.update(http_status.retry_headers(exc))
    return page


async def http_error_page(request: Request, exc: Exception) -> Response:
    """No such page (404) or a form's address opened directly (405): a page, never JSON.

    Given to the API's handler of HTTP errors (server.py), which answers under /api/ itself.
    """
    assert isinstance(exc, HTTPException)
    path = request.url.path
    parent = path.rstrip("/").rsplit("/", 1)[0] or "/"
    if exc.status_code == 405:
        title, message = (
            "This address takes a form",
            "This address is where a form sends what you entered; opening it directly does nothing. "
            "Go back to the page and use its button instead.",
        )
    elif exc.status_code == 404:
        title, message = (
            "Page not found",
            "There is no page at this address. Check the link, or start again below.",
        )
        parent = "/"
    else:
        title, message = "Something went wrong", str(exc.detail)
    page = render(
        request,
        "error.html",
        session=None,
        status_code=exc.status_code,
        title=title,
        message=message,
        back=parent,
    )
    if exc.headers:
        page.headers.update(exc.headers)
    return page


def install(app: FastAPI, *, api_error: ErrorHandler) -> None:
    """The pages, their static files and security headers; `api_error` answers our errors under /api/."""
    static = resources.files("mailwright.web").joinpath("static")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    routers = (
        pages_auth,
        pages_targets,
        pages_account_keys,
        pages_send,
        pages_sandbox,
        pages_workflows,
        pages_runs,
        pages_triggers,
        pages_workers,
        pages_audit,
        pages_dashboard,
    )
    for module in routers:
        app.include_router(module.router)
    app.add_exception_handler(LoginRequired, _login_required)
    app.add_exception_handler(CSRFMismatch, _csrf_mismatch)
    app.add_exception_handler(MailwrightError, _mailwright_error(api_error))

    app.add_middleware(SecurityHeaders)


class SecurityHeaders:
    """The security headers on every response, and the pages' Content-Security-Policy.

    Plain ASGI rather than `@app.middleware("http")`: that one runs every request
    through a second task and a streamed copy of the response, which cost a single
    send-email about a millisecond.
    """

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        page = not str(scope.get("path", "")).startswith("/api/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                if page and "content-security-policy" not in headers:
                    headers["Content-Security-Policy"] = PAGE_CSP
            await send(message)

        await self._app(scope, receive, with_headers)
