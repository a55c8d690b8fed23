"""Triggers page: every email trigger, its state and its mail; enable and disable."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from mailwright.web import forms
from mailwright.web.deps import ServicesDep
from mailwright.web.render import redirect, render
from mailwright.web.roles import AdminSession, ViewerSession
from mailwright.web.session import SessionDep, check_csrf

router = APIRouter()


@router.get("/triggers")
def list_triggers(request: Request, services: ServicesDep, session: ViewerSession) -> HTMLResponse:
    return render(
        request,
        "triggers/list.html",
        session=session,
        section="triggers",
        triggers=services.triggers.list_all(),
    )


@router.get("/workflows/{ref}/triggers/messages")
def trigger_messages(
    request: Request, ref: str, services: ServicesDep, session: ViewerSession
) -> HTMLResponse:
    workflow = services.workflows.get(ref)
    return render(
        request,
        "triggers/messages.html",
        session=session,
        section="triggers",
        workflow=workflow,
        messages=services.triggers.messages(workflow.id, limit=200),
    )


async def _toggle(
    request: Request, ref: str, index: int, enabled: bool, services: ServicesDep, session: SessionDep
) -> Response:
    form = await request.form()
    check_csrf(session, forms.optional(form, "csrf_token"))
    trigger = services.triggers.set_enabled(ref, index, enabled)
    back = forms.optional(form, "back") or "/triggers"
    if not back.startswith("/") or back.startswith("//"):
        back = "/triggers"  # only our own pages: never an open redirect
    word = "enabled: a running worker picks it up within seconds" if enabled else "disabled"
    return redirect(back, flash=f"Trigger {trigger.index} of {trigger.workflow!r} {word}.")


@router.post("/workflows/{ref}/triggers/{index}/enable")
async def enable(
    request: Request, ref: str, index: int, services: ServicesDep, session: AdminSession
) -> Response:
    return await _toggle(request, ref, index, True, services, session)


@router.post("/workflows/{ref}/triggers/{index}/disable")
async def disable(
    request: Request, ref: str, index: int, services: ServicesDep, session: AdminSession
) -> Response:
    return await _toggle(request, ref, index, False, services, session)
