"""Workflows pages: upload or edit a document, start it with a generated form (runs: pages_runs.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from mailwright.errors import MailwrightError
from mailwright.services.app import Services
from mailwright.services.workflows import WorkflowPublic
from mailwright.web import forms
from mailwright.web.deletion import Deletable, confirm_page, delete_confirmed
from mailwright.web.deps import ServicesDep
from mailwright.web.render import field_errors, redirect, render
from mailwright.web.roles import AdminSession, OperatorSession, ViewerSession
from mailwright.web.session import SessionDep, check_csrf
from mailwright.web.workflow_diagram import diagram

router = APIRouter(include_in_schema=False)

EXAMPLE = """name: Alert and follow-up
description: Send an alert, then a follow-up threaded on it
inputs:
  recipient: {type: string, default: ops@example.org}
target: Local sandbox
steps:
  - id: alert
    activity: send_email
    with:
      from: robot@example.org
      to: ["{{ inputs.recipient }}"]
      subject: Disk almost full
      body: The disk of db01 is 95% full.
  - id: followup
    activity: send_email
    with:
      from: robot@example.org
      to: [oncall@example.org]
      subject: "Re: Disk almost full"
      body: Escalated.
      in_reply_to: "{{ steps.alert.output.message_id }}"
"""


async def _document_text(request: Request) -> tuple[str, str | None, Any]:
    form = await request.form()
    upload = forms.uploads(form, "file")
    if upload:
        data = await upload[0].read()
        return data.decode("utf-8", errors="replace"), upload[0].filename, form
    # A browser sends a textarea's line breaks as CRLF: stored as typed, with LF.
    return str(form.get("document") or "").replace("\r\n", "\n"), None, form


def _form_page(
    request: Request,
    session: SessionDep,
    *,
    workflow: WorkflowPublic | None,
    document: str,
    error: MailwrightError | None = None,
) -> HTMLResponse:
    return render(
        request,
        "workflows/form.html",
        session=session,
        section="workflows",
        workflow=workflow,
        document=document,
        errors={"document": field_errors(error).popitem()[1]} if error else {},
        status_code=422 if error else 200,
    )


@router.get("/workflows")
def list_workflows(request: Request, services: ServicesDep, session: ViewerSession) -> HTMLResponse:
    return render(
        request,
        "workflows/list.html",
        session=session,
        section="workflows",
        workflows=services.workflows.list_all(),
    )


@router.get("/workflows/new")
def new_workflow(request: Request, session: AdminSession) -> HTMLResponse:
    return render(
        request,
        "workflows/form.html",
        session=session,
        section="workflows",
        workflow=None,
        document=EXAMPLE,
        errors={},
    )


@router.post("/workflows/new")
async def create_workflow(request: Request, services: ServicesDep, session: AdminSession) -> Response:
    text, filename, form = await _document_text(request)
    check_csrf(session, forms.optional(form, "csrf_token"))
    try:
        workflow = services.workflows.create(text, filename=filename)
    except MailwrightError as exc:
        return _form_page(request, session, workflow=None, document=text, error=exc)
    return redirect(f"/workflows/{workflow.id}", flash=f"Workflow {workflow.name!r} saved.")


def _detail_page(
    request: Request,
    services: Services,
    session: SessionDep,
    *,
    workflow: WorkflowPublic,
    values: dict[str, Any] | None = None,
    error: MailwrightError | None = None,
) -> HTMLResponse:
    """A workflow's page: its diagram, a form to start it, its triggers, its document as written."""
    triggers = services.triggers.list_all(workflow.id)
    flow = diagram(
        services.workflows.document(workflow.id),
        schedules_enabled={s.index: s.enabled for s in services.schedules.list_for(workflow.id)},
        triggers_enabled={t.index: t.enabled for t in triggers},
    )
    return render(
        request,
        "workflows/detail.html",
        session=session,
        section="workflows",
        workflow=workflow,
        document=services.workflows.export(workflow.id).document,
        flow=flow,
        targets=services.targets.list_all(),
        triggers=triggers,
        values=values or {},
        errors=field_errors(error) if error else {},
        status_code=422 if error else 200,
    )


@router.get("/workflows/{ref}")
def show_workflow(request: Request, ref: str, services: ServicesDep, session: ViewerSession) -> HTMLResponse:
    return _detail_page(request, services, session, workflow=services.workflows.get(ref))


@router.get("/workflows/{ref}/edit")
def edit_workflow(request: Request, ref: str, services: ServicesDep, session: AdminSession) -> HTMLResponse:
    workflow = services.workflows.get(ref)
    return _form_page(request, session, workflow=workflow, document=services.workflows.export(ref).document)


@router.post("/workflows/{ref}/edit")
async def update_workflow(
    request: Request, ref: str, services: ServicesDep, session: AdminSession
) -> Response:
    workflow = services.workflows.get(ref)
    text, filename, form = await _document_text(request)
    check_csrf(session, forms.optional(form, "csrf_token"))
    try:
        updated = services.workflows.create(text, filename=filename, replace=True)
    except MailwrightError as exc:
        return _form_page(request, session, workflow=workflow, document=text, error=exc)
    return redirect(f"/workflows/{updated.id}", flash=f"Workflow {updated.name!r} saved.")


@router.post("/workflows/{ref}/start")
async def start_workflow(
    request: Request, ref: str, services: ServicesDep, session: OperatorSession
) -> Response:
    form = await request.form()
    check_csrf(session, forms.optional(form, "csrf_token"))
    workflow = services.workflows.get(ref)
    inputs = {
        name[len("input_") :]: value
        for name, value in form.items()
        if name.startswith("input_") and isinstance(value, str) and value != ""
    }
    try:
        run = await asyncio.to_thread(
            services.runs.start_workflow,
            workflow.id,
            inputs=inputs,
            target=forms.optional(form, "target"),
            account_key=None,
        )
    except MailwrightError as exc:
        values = forms.values(form)
        return _detail_page(request, services, session, workflow=workflow, values=values, error=exc)
    return redirect(f"/runs/{run.id}", flash=f"Run of {workflow.name!r} queued.")


def _deletable(workflow: WorkflowPublic) -> Deletable:
    return Deletable(
        section="workflows",
        what="workflow",
        name=workflow.name,
        id=workflow.id,
        listing="/workflows",
        back=f"/workflows/{workflow.id}",
    )


@router.get("/workflows/{ref}/delete")
def confirm_delete(request: Request, ref: str, services: ServicesDep, session: AdminSession) -> HTMLResponse:
    return confirm_page(request, session, _deletable(services.workflows.get(ref)))


@router.post("/workflows/{ref}/delete")
async def delete_workflow(
    request: Request, ref: str, services: ServicesDep, session: AdminSession
) -> Response:
    workflow = services.workflows.get(ref)
    return await delete_confirmed(request, session, _deletable(workflow), services.workflows.delete)
