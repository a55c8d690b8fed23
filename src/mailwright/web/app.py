"""Mounting the web UI on the FastAPI application."""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from mailwright.api import errors as api_errors
from mailwright.errors import MailwrightError
from mailwright.web import (
    pages_account_keys,
    pages_auth,
    pages_sandbox,
    pages_send,
    pages_targets,
    pages_triggers,
    pages_workflows,
)
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


async def _mailwright_error(request: Request, exc: Exception) -> Response:
    if request.url.path.startswith("/api/"):
        return await api_errors.mailwright_error(request, exc)
    assert isinstance(exc, MailwrightError)
    status = api_errors.status_for(exc)
    return render(
        request,
        "error.html",
        session=None,
        status_code=status,
        title="Something went wrong",
        message=str(exc),
    )


def install(app: FastAPI) -> None:
    static = resources.files("mailwright.web").joinpath("static")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    routers = (
        pages_auth,
        pages_targets,
        pages_account_keys,
        pages_send,
        pages_sandbox,
        pages_workflows,
        pages_triggers,
    )
    for module in routers:
        app.include_router(module.router)
    app.add_exception_handler(LoginRequired, _login_required)
    app.add_exception_handler(CSRFMismatch, _csrf_mismatch)
    app.add_exception_handler(MailwrightError, _mailwright_error)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):  # type: ignore[no-untyped-def]
        response: Response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if not request.url.path.startswith("/api/") and "content-security-policy" not in response.headers:
            response.headers["Content-Security-Policy"] = PAGE_CSP
        return response
