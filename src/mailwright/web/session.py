"""Signed-in browsers: the session cookie, CSRF checks and the redirect to the log-in page."""

from __future__ import annotations

import hmac
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, Request
from starlette.responses import Response

from mailwright.services.app import Services
from mailwright.services.web_auth import SESSION_LIFETIME, WebSession
from mailwright.web.deps import ServicesDep

COOKIE = "mw_session"


class LoginRequired(Exception):
    def __init__(self, next_url: str) -> None:
        self.next_url = next_url


class CSRFMismatch(Exception):
    pass


def current_session(request: Request, services: ServicesDep) -> WebSession:
    session = services.web_auth.session_for(request.cookies.get(COOKIE))
    if session is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(quote(target, safe="/?=&"))
    return session


SessionDep = Annotated[WebSession, Depends(current_session)]


def check_csrf(session: WebSession, token: str | None) -> None:
    if not token or not hmac.compare_digest(session.csrf_token, token):
        raise CSRFMismatch()


def secure_cookies(request: Request) -> bool:
    """`Secure` on our cookies: decided by the settings (MAILWRIGHT_PUBLIC_URL with https://, or
    `serve --behind-https`), never by the request's Host header, which the client chooses."""
    services: Services = request.app.state.services
    # A request that did arrive over HTTPS (uvicorn, or a trusted proxy's X-Forwarded-Proto) too.
    return services.settings.secure_cookies or request.url.scheme == "https"


def set_session_cookie(request: Request, response: Response, cookie: str) -> None:
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=int(SESSION_LIFETIME.total_seconds()),
        httponly=True,
        secure=secure_cookies(request),
        samesite="lax",
        path="/",
    )


def clear_session_cookie(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/")
