"""The ASGI application `mailwright serve` runs: the REST API and the web pages on one
FastAPI app, with the embedded worker in its lifespan.

Composed here, above both faces, so that neither the API nor the web imports the other.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from mailwright import __version__
from mailwright.api import app as api
from mailwright.api import docs as api_docs
from mailwright.engine.broker import Announcer, broker_kind, make_queue
from mailwright.engine.worker import Worker
from mailwright.sandbox import SANDBOX_DIRECTORY_NAME, SandboxStore
from mailwright.services.app import Services
from mailwright.web import app as web

__all__ = ["create_app"]


def _lifespan(
    services: Services, *, run_worker: bool
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # The embedded worker executes queued runs inside the server process; without it, the
        # runs this process queues are announced to the workers elsewhere (RabbitMQ).
        stop = asyncio.Event()
        task = asyncio.create_task(Worker(services).run(stop)) if run_worker else None
        announcer = None if run_worker else _announcer(services)
        if announcer is not None:
            await announcer.start()
            services.runs.on_queued = announcer.notify
        try:
            yield
        finally:
            stop.set()
            if task is not None:
                await task
            if announcer is not None:
                services.runs.on_queued = None
                await announcer.stop()
            await services.aclose()

    return lifespan


def _announcer(services: Services) -> Announcer | None:
    """With RabbitMQ, the publisher of this process's runs; None with the embedded broker (workers
    elsewhere find queued runs in the shared database by themselves)."""
    settings = services.settings
    if broker_kind(settings.broker) == "embedded":
        return None

    async def not_here(run_id: str) -> None:
        raise RuntimeError("serve --no-worker executes no runs")

    queue = make_queue(
        settings.broker, execute=not_here, pool=None, concurrency=settings.worker_concurrency, consume=False
    )
    return Announcer(queue, services.ledger.pool_of)


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
        docs_url=None,  # served with local files by api/docs.py
        redoc_url=None,
    )
    app.state.services = services
    app.state.sandbox_store = sandbox_store or SandboxStore(services.settings.home / SANDBOX_DIRECTORY_NAME)
    app.state.sandbox_address = sandbox_address
    api.install(app, services)
    web.install(app, api_error=api.error_handler)
    api.describe(app, page_error=web.http_error_page)
    api_docs.install(app)

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> RedirectResponse:
        # Browsers ask for it on pages that name none (JSON answers, the API docs).
        return RedirectResponse("/static/favicon.svg", status_code=301)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
