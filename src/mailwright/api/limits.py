"""Bounded requests: a body over the limit is refused (413) before it is held in memory.

`RequestLimits` is plain ASGI, outside FastAPI's body parsing:

- A declared `Content-Length` over the limit is refused at once, nothing read.
- A chunked body (or one whose length lies) is counted as it streams in; the request is
  refused as soon as the count passes the limit, and the rest is never buffered (uvicorn
  discards what still arrives).
- Under `/api/v1/`, a request that carries a body needs a valid bearer token before any
  of the body is read: without one it gets 401 at once. FastAPI reads a route's body
  before its dependencies run, so the route's own token check (api/deps.py) would come
  too late to spare the memory.

`POST /api/v1/send-email/batch` has its own, larger limit.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mailwright.api import errors as api_errors
from mailwright.errors import AuthorizationError

MAX_REQUEST_SETTING = "MAILWRIGHT_MAX_REQUEST_BYTES"
MAX_BATCH_REQUEST_SETTING = "MAILWRIGHT_MAX_BATCH_REQUEST_BYTES"
BATCH_PATH = "/api/v1/send-email/batch"
TOKEN_PREFIX = "/api/v1/"

_MIB = 1024 * 1024


class _BodyTooLarge(Exception):
    """Raised into the application from `receive` once the body passed the limit."""


def _size(count: int) -> str:
    return f"{count} bytes ({count / _MIB:.1f} MiB)" if count >= _MIB else f"{count} bytes"


def too_large_response(*, path: str, limit: int, setting: str, declared: int | None) -> JSONResponse:
    """The 413: what was too large, the limit, and the setting that raises it."""
    got = f"is {_size(declared)}" if declared is not None else "passed the limit while it was read"
    if setting == MAX_BATCH_REQUEST_SETTING:
        hint = f"split the batch into smaller ones, or raise {setting} (in bytes) on the server"
    else:
        hint = (
            f"send a smaller body (attachments count in base64, 4/3 of their size), "
            f"or raise {setting} (in bytes) on the server"
        )
    body = {
        "error": {
            "code": "request_too_large",
            "message": f"the request body {got}; {path} accepts at most {_size(limit)}",
            "hint": hint,
            "limit": limit,
            "setting": setting,
        }
    }
    return JSONResponse(body, status_code=413)


def _has_body(headers: Headers) -> bool:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return True
    length = headers.get("content-length")
    return length is not None and length.strip() not in ("", "0")


def _declared_length(headers: Headers) -> int | None:
    try:
        return int(headers.get("content-length", ""))
    except ValueError:
        return None  # missing or malformed: the server refuses a malformed one itself


class RequestLimits:
    """Refuses bodies over the limit (413) and, under /api/v1/, bodies sent without a valid token (401)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        batch_max_bytes: int,
        verify_token: Callable[[str], object],
    ) -> None:
        self._app = app
        self._max_bytes = max_bytes
        self._batch_max_bytes = batch_max_bytes
        self._verify_token = verify_token  # raises AuthorizationError for an unknown or revoked token

    def _limit_for(self, path: str) -> tuple[int, str]:
        if path.rstrip("/") == BATCH_PATH:
            return self._batch_max_bytes, MAX_BATCH_REQUEST_SETTING
        return self._max_bytes, MAX_REQUEST_SETTING

    async def _token_refusal(self, scope: Scope, headers: Headers) -> JSONResponse | None:
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        try:
            if scheme.lower() != "bearer" or not credentials.strip():
                raise AuthorizationError(
                    "this request needs an API token: send 'Authorization: Bearer TOKEN'",
                    hint="the admin token is printed on the first start of `mailwright serve`; "
                    "create more with `mailwright tokens create NAME`",
                )
            # The token check reads the database: off the event loop, like the route's own.
            verified = await run_in_threadpool(self._verify_token, credentials.strip())
        except AuthorizationError as exc:
            return await api_errors.mailwright_error(Request(scope), exc)
        # Kept for the request (`request.state.verified_token`), so a later check may reuse it.
        scope.setdefault("state", {})["verified_token"] = verified
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        headers = Headers(scope=scope)
        if path.startswith(TOKEN_PREFIX) and _has_body(headers):
            refusal = await self._token_refusal(scope, headers)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        limit, setting = self._limit_for(path)
        declared = _declared_length(headers)
        if declared is not None and declared > limit:
            await too_large_response(path=path, limit=limit, setting=setting, declared=declared)(
                scope, receive, send
            )
            return

        received = 0
        too_large = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, too_large
            if too_large:
                raise _BodyTooLarge()
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True
                    raise _BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if too_large and not started:
                return  # the application's answer to a cut-off body: ours replaces it
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self._app(scope, counting_receive, guarded_send)
        except Exception:
            # Whatever the application made of the cut-off body, the answer is the 413.
            if not too_large or started:
                raise
        if too_large and not started:
            await too_large_response(path=path, limit=limit, setting=setting, declared=None)(
                scope, receive, send
            )
