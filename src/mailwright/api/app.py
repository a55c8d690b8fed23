"""The REST API on a FastAPI application: its routes, error answers, request limits and OpenAPI.

The application itself (the API and the web pages together, with the embedded worker)
is made by `mailwright.server`.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from mailwright.api import errors, metrics, openapi
from mailwright.api.limits import RequestLimits
from mailwright.api.routes import router
from mailwright.api.routes_audit import router as audit_router
from mailwright.api.routes_batch import router as batch_router
from mailwright.api.routes_workers import router as workers_router
from mailwright.api.routes_workflows import router as workflow_router
from mailwright.services.app import Services

# How the API answers our errors: the web answers them the same way under /api/.
error_handler = errors.mailwright_error


def install(app: FastAPI, services: Services) -> None:
    """The routes under /api/ (and /metrics), with their error answers and the request limits."""
    errors.install(app)
    app.include_router(router)
    app.include_router(batch_router)
    app.include_router(workflow_router)
    app.include_router(audit_router)
    app.include_router(workers_router)
    metrics.install(app, services)  # GET /metrics, outside /api/ where Prometheus looks
    # Added before the web's middleware, so that its security headers wrap the 401 and 413 too.
    app.add_middleware(
        RequestLimits,
        max_bytes=services.settings.max_request_bytes,
        batch_max_bytes=services.settings.max_batch_request_bytes,
        verify_token=services.tokens.verify,
    )


PageError = Callable[[Request, Exception], Awaitable[Response]]


def describe(app: FastAPI, *, page_error: PageError | None = None) -> None:
    """Only the routes under /api/ are the API (the web pages are not described); its 404 and 405.

    `page_error` answers an HTTP error outside /api/ (the web UI's page; else FastAPI's JSON)."""
    app.openapi = functools.partial(openapi.document, app)  # type: ignore[method-assign]
    app.add_exception_handler(HTTPException, functools.partial(_http_error, page_error=page_error))


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


async def _http_error(request: Request, exc: Exception, *, page_error: PageError | None = None) -> Response:
    """No such path (404) or method (405) under /api/: the API's error body, not FastAPI's `detail`."""
    assert isinstance(exc, HTTPException)
    if not request.url.path.startswith(openapi.API_PREFIX):
        if page_error is not None and exc.status_code in (404, 405):
            return await page_error(request, exc)
        return await http_exception_handler(request, exc)
    if exc.status_code == 400:  # FastAPI could not parse the body: bad input, as everywhere else
        return JSONResponse(
            {
                "error": {
                    "code": "validation_error",
                    "message": f"the request body cannot be read: {exc.detail}",
                    "hint": "send a JSON object with 'Content-Type: application/json'",
                    "field": "body",
                }
            },
            status_code=422,
        )
    message = f"{request.method} {request.url.path}: {exc.detail}"
    body = {"error": {"code": _HTTP_CODES.get(exc.status_code, "http_error"), "message": message}}
    if exc.status_code in _HTTP_CODES:
        body["error"]["hint"] = "the operations are listed in /api/openapi.json (and /api/docs)"
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)
