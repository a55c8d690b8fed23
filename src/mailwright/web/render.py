"""Rendering pages: the Jinja2 environment, flash messages and field errors."""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from typing import Any
from urllib.parse import quote, unquote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from mailwright import __version__
from mailwright.domain.roles import Role
from mailwright.errors import MailwrightError
from mailwright.services.web_auth import WebSession
from mailwright.web.form_errors import FormErrors, web_hint
from mailwright.web.times import FILTERS as TIME_FILTERS

FLASH_COOKIE = "mw_flash"

templates = Jinja2Templates(directory=str(resources.files("mailwright.web").joinpath("templates")))
templates.env.globals["version"] = __version__
templates.env.filters.update(TIME_FILTERS)  # ago, absolute, when (web/times.py)
templates.env.filters["web_hint"] = web_hint  # a hint without command-line wording, or None

NAV = [
    ("dashboard", "Dashboard", "/"),
    ("targets", "Targets", "/targets"),
    ("account_keys", "Account Keys", "/account-keys"),
    ("send", "Send Email", "/send"),
    ("sandbox", "Sandbox mailbox", "/sandbox"),
    ("workflows", "Workflows", "/workflows"),
    ("runs", "Runs", "/runs"),
    ("triggers", "Triggers", "/triggers"),
    ("workers", "Workers", "/workers"),
]
AUDIT_NAV = ("audit", "Audit log", "/audit")  # admins only


def render(
    request: Request,
    template: str,
    *,
    session: WebSession | None,
    section: str = "",
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    flash = request.cookies.get(FLASH_COOKIE)
    flash = unquote(flash) if flash else flash
    response = templates.TemplateResponse(
        request,
        template,
        {
            "nav": _nav(session),
            "section": section,
            "csrf_token": session.csrf_token if session else "",
            # What the signed-in role may do: the templates hide the rest (the routes refuse it).
            "role": session.role.value if session else "",
            "can_change": session is not None and session.role.allows(Role.ADMIN),
            "can_operate": session is not None and session.role.allows(Role.OPERATOR),
            "flash": flash,
            **context,
        },
        status_code=status_code,
    )
    if flash:
        response.delete_cookie(FLASH_COOKIE, path="/")
    response.headers["Cache-Control"] = "no-store"
    return response


def _nav(session: WebSession | None) -> list[tuple[str, str, str]]:
    if session is None:
        return []
    if session.role.allows(Role.ADMIN):
        return [*NAV, AUDIT_NAV]
    # What the role may not open is not offered (a viewer cannot send).
    return [entry for entry in NAV if entry[0] != "send" or session.role.allows(Role.OPERATOR)]


def redirect(url: str, *, flash: str | None = None) -> RedirectResponse:
    response = RedirectResponse(url, status_code=303)
    if flash:
        # Percent-encoded: a cookie is Latin-1 on the wire, and names and subjects are any Unicode.
        value = quote(flash[:300], safe=" ")
        response.set_cookie(FLASH_COOKIE, value, max_age=60, httponly=True, samesite="lax", path="/")
    return response


def field_errors(error: MailwrightError, labels: Mapping[str, str] | None = None) -> dict[str, str]:
    """Errors keyed by form field (every one a `ValidationError` lists); a general message under ""."""
    errors = FormErrors(labels)
    errors.add(error)
    return errors.by_field
