"""Audit log page (admins only): who created, changed or deleted what, when, from which face."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from mailwright.services.audit import MAX_LIMIT
from mailwright.web.deps import ServicesDep
from mailwright.web.render import render
from mailwright.web.roles import AdminSession

router = APIRouter(include_in_schema=False)


@router.get("/audit")
def audit_log(
    request: Request,
    services: ServicesDep,
    session: AdminSession,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="entries at most")] = 200,
) -> HTMLResponse:
    return render(
        request,
        "audit/list.html",
        session=session,
        section="audit",
        entries=services.audit.list_recent(limit),
        limit=limit,
    )
