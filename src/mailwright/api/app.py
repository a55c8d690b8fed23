"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException

from mailwright import __version__
from mailwright.api import errors, openapi
from mailwright.api.limits import RequestLimits
from mailwright.api.routes import router
from mailwright.api.routes_audit import router as audit_router
from mailwright.api.routes_batch import router as batch_router
from mailwright.api.routes_workflows import router as workflow_router
from mailwright.engine.worker import Worker
from mailwright.sandbox import SANDBOX_DIRECTORY_NAME, SandboxStore
from mailwright.services.app import Services
from mailwright.web import app as web


def _lifespan(
    services: Services, *, run_worker: bool
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # The embedded worker executes queued runs inside the server process.
        stop = asyncio.Event()
        task = asyncio.create_task(Worker(services).run(stop)) if run_worker else None
        try:
            yield
        finally:
            stop.set()
            if task is not None:
                await task
            await services.aclose()

    return lifespan


def create_app(
    services: Services,
    *,
    sandbox_store: SandboxStore | None = None,
    sandbox_address: str | None = None,
    run_worker: bool = True,
) -> FastAPI:
    """The application. `sandbox_address` is where the capture server listens (None: it is off)."""
    app = FastAPI(
        lifespan=_lifespan(services, run_worker=run_worker),
        title="Mailwright",
        version=__version__,
        description="Email automation: targets, account keys, Send Email, workflows and runs.",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
    )
    app.state.services = services
    app.state.sandbox_store = sandbox_store or SandboxStore(services.settings.home / SANDBOX_DIRECTORY_NAME)
    app.state.sandbox_address = sandbox_address
    errors.install(app)
    app.include_router(router)
    app.include_router(batch_router)
    app.include_router(workflow_router)
    app.include_router(audit_router)
    # Added before the web's middleware, so that its security headers wrap the 401 and 413 too.
    app.add_middleware(
        RequestLimits,
        max_bytes=services.settings.max_request_bytes,
        batch_max_bytes=services.settings.max_batch_request_bytes,
        verify_token=services.tokens.verify,
    )

    web.install(app)
    # Only the routes under /api/ are the API; the web pages are not described.
    app.openapi = functools.partial(openapi.document, app)  # type: ignore[method-assign]
    app.add_exception_handler(HTTPException, _http_error)

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/targets")

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


async def _http_error(request: Request, exc: Exception) -> Response:
    """No such path (404) or method (405) under /api/: the API's error body, not FastAPI's `detail`."""
    assert isinstance(exc, HTTPException)
    if not request.url.path.startswith(openapi.API_PREFIX):
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
