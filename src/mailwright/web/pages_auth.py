"""Log-in, first-start password set-up, log-out."""

from __future__ import annotations

import hmac
import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from mailwright import http_status
from mailwright.errors import LoginThrottledError, MailwrightError, WrongLoginError
from mailwright.web.deps import ServicesDep
from mailwright.web.render import field_errors, redirect, render
from mailwright.web.session import (
    SessionDep,
    check_csrf,
    clear_session_cookie,
    secure_cookies,
    set_session_cookie,
)

router = APIRouter(include_in_schema=False)


def _safe_next(next_url: str | None) -> str:
    # Only local paths: never bounce a signed-in browser to another site.
    if next_url and next_url.startswith("/") and not next_url.startswith("//"):
        return next_url
    return "/targets"


LOGIN_CSRF_COOKIE = "mw_login_csrf"


def _login_form(
    request: Request, template: str, *, next_url: str, errors: dict[str, str], status: int = 200
) -> Response:
    # Before a session exists, forms are protected by a double-submit cookie.
    token = secrets.token_urlsafe(32)
    response = render(
        request, template, session=None, next=next_url, errors=errors, status_code=status, login_csrf=token
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        httponly=True,
        secure=secure_cookies(request),
        samesite="strict",
        path="/",
        max_age=3600,
    )
    return response


def _login_csrf_ok(request: Request, token: str) -> bool:
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    return bool(token) and hmac.compare_digest(expected, token)


@router.get("/login")
def login_page(request: Request, services: ServicesDep, next: str | None = None) -> Response:
    template = "login.html" if services.web_auth.has_password() else "setup.html"
    return _login_form(request, template, next_url=_safe_next(next), errors={})


@router.post("/login")
async def login(
    request: Request,
    services: ServicesDep,
    secret: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "",
    login_csrf: Annotated[str, Form()] = "",
) -> Response:
    has_password = await run_in_threadpool(services.web_auth.has_password)
    template = "login.html" if has_password else "setup.html"
    if not _login_csrf_ok(request, login_csrf):
        return _login_form(
            request,
            template,
            next_url=_safe_next(next),
            status=403,
            errors={"secret": "This form expired. Please try again."},
        )
    address = request.client.host if request.client else "unknown"
    try:
        # Password hashing (scrypt, 16 MB) and the database: off the event loop.
        new = await run_in_threadpool(services.web_auth.sign_in, secret, address=address)
    except LoginThrottledError as exc:
        refused = _login_form(
            request,
            template,
            next_url=_safe_next(next),
            status=http_status.status_for(exc),
            errors={"secret": f"Too many failed log-ins. Wait {exc.retry_after} s, then try again."},
        )
        refused.headers.update(http_status.retry_headers(exc))
        return refused
    except WrongLoginError as exc:
        # After a few failures in a row, each wrong answer comes later (the lock's length).
        await services.web_auth.throttle.pause(exc.slow_down)
        return _login_form(
            request,
            template,
            next_url=_safe_next(next),
            status=http_status.status_for(exc),
            errors={"secret": "Wrong password or token. Try again."},
        )
    response = redirect(_safe_next(next))
    set_session_cookie(request, response, new.cookie)
    return response


@router.post("/setup")
def setup(
    request: Request,
    services: ServicesDep,
    token: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    confirm: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "",
    login_csrf: Annotated[str, Form()] = "",
) -> Response:
    if services.web_auth.has_password():
        return redirect("/login")
    errors: dict[str, str] = {}
    if not _login_csrf_ok(request, login_csrf):
        errors["token"] = "This form expired. Please try again."
    elif not services.web_auth.check_token(token):
        errors["token"] = "This is not a valid API token. Use the admin token printed on the first start."
    else:
        try:
            services.web_auth.set_password(password, confirm)
        except MailwrightError as exc:
            errors = field_errors(exc)
    if errors:
        return _login_form(request, "setup.html", next_url=_safe_next(next), errors=errors, status=422)
    new = services.web_auth.open_session()
    response = redirect(_safe_next(next), flash="Admin password set. You are signed in.")
    set_session_cookie(request, response, new.cookie)
    return response


@router.post("/logout")
def logout(
    request: Request, services: ServicesDep, session: SessionDep, csrf_token: Annotated[str, Form()] = ""
) -> Response:
    check_csrf(session, csrf_token)
    services.web_auth.sign_out(session.id)
    response = redirect("/login", flash="Signed out.")
    clear_session_cookie(response)
    return response
