"""Workers page: the worker processes running now, on every machine, from their heartbeats."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from mailwright.services.workers import LIVE_SECONDS
from mailwright.web.deps import ServicesDep
from mailwright.web.render import render
from mailwright.web.roles import ViewerSession

router = APIRouter(include_in_schema=False)


@router.get("/workers")
def workers(request: Request, services: ServicesDep, session: ViewerSession) -> HTMLResponse:
    return render(
        request,
        "workers/list.html",
        session=session,
        section="workers",
        workers=services.workers.live(),
        live_seconds=int(LIVE_SECONDS),
    )
