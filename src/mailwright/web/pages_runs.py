"""Runs pages: the list (filtered by status, workflow and target, paged) and a run's page (a batch's
totals, its live progress, its steps filtered by status, searched and paged), cancel and retry."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from mailwright.domain.runs import RunStatus
from mailwright.errors import ValidationError
from mailwright.services.app import Services
from mailwright.services.batches import BATCH_NAME
from mailwright.services.run_pages import Page, RunFilter, StepFilter, ordered_counts
from mailwright.services.runs import RUN_STATUSES, SEND_EMAIL_RUN, RunPublic
from mailwright.web import forms
from mailwright.web.deps import ServicesDep
from mailwright.web.render import redirect, render
from mailwright.web.roles import OperatorSession, ViewerSession
from mailwright.web.session import SessionDep, check_csrf

router = APIRouter(include_in_schema=False)

RUNS_PER_PAGE = 50
STEPS_PER_PAGE = 50
LIST_STATUSES = (*RUN_STATUSES, "preparing")
ACTIVE = ("queued", "running", "preparing")
Text = Annotated[str, Query(max_length=200)]
Offset = Annotated[int, Query(ge=0, le=10_000_000)]


def page_link(path: str, params: dict[str, str], offset: int | None) -> str | None:
    """The address of another page of the same list: the same filters, another offset."""
    if offset is None:
        return None
    kept = {name: value for name, value in params.items() if value}
    if offset:
        kept["offset"] = str(offset)
    return f"{path}?{urlencode(kept)}" if kept else path


def _links(path: str, params: dict[str, str], page: Page[Any]) -> dict[str, str | None]:
    last = (max(page.total - 1, 0) // page.limit) * page.limit
    return {
        "first": page_link(path, params, 0 if page.offset else None),
        "previous": page_link(path, params, page.previous_offset),
        "next": page_link(path, params, page.next_offset),
        "last": page_link(path, params, last if page.next_offset is not None else None),
    }


def _checked_status(status: str) -> str | None:
    value = status.strip().lower()
    if value and value not in LIST_STATUSES:
        raise ValidationError(
            f"unknown run status {status!r}",
            field="status",
            hint=f"choose one of: {', '.join(LIST_STATUSES)}",
        )
    return value or None


def _workflow_names(services: Services) -> list[str]:
    """What the workflow filter offers: the saved workflows, the one-message sends and batches."""
    names = {w.name for w in services.workflows.list_all()} | {SEND_EMAIL_RUN, BATCH_NAME}
    return sorted(names, key=str.casefold)


@router.get("/runs")
def list_runs(
    request: Request,
    services: ServicesDep,
    session: ViewerSession,
    status: Text = "",
    workflow: Text = "",
    target: Text = "",
    offset: Offset = 0,
) -> HTMLResponse:
    where = RunFilter(status=_checked_status(status), workflow=workflow.strip(), target=target.strip())
    page = services.runs.page_runs(where, offset=offset, limit=RUNS_PER_PAGE)
    params = {"status": where.status or "", "workflow": where.workflow or "", "target": where.target or ""}
    return render(
        request,
        "runs/list.html",
        session=session,
        section="runs",
        page=page,
        runs=page.items,
        filters=params,
        filtered=any(params.values()),
        statuses=LIST_STATUSES,
        workflows=_workflow_names(services),
        targets=sorted((t.display_name for t in services.targets.list_all()), key=str.casefold),
        links=_links("/runs", params, page),
    )


def _workflow_counts(services: Services, run_id: str, run: RunPublic, state: str | None) -> dict[str, int]:
    """Counts of a workflow run's steps by status (a batch's come from the service)."""
    every = run if state is None else services.runs.get(run_id)
    return ordered_counts(dict(Counter(s.status.value for s in every.steps)))


@router.get("/runs/{run_id}")
def show_run(
    request: Request,
    run_id: str,
    services: ServicesDep,
    session: ViewerSession,
    state: Text = "",
    q: Text = "",
    offset: Offset = 0,
) -> HTMLResponse:
    shown = state.strip().lower() or None
    summary = services.runs.summary(run_id)
    if summary.step_counts is None:
        return _workflow_run(request, services, session, run_id, shown)
    where = StepFilter(state=shown, search=q.strip() or None)
    page = services.runs.steps_page(run_id, where, offset=offset, limit=STEPS_PER_PAGE)
    params = {"state": shown or "", "q": where.search or ""}
    return render(
        request,
        "runs/detail.html",
        session=session,
        section="runs",
        run=summary,
        batch=True,
        running=summary.status in ACTIVE,
        state=shown,
        search=where.search or "",
        counts=summary.step_counts,
        page=page,
        steps=page.items,
        links=_links(f"/runs/{summary.id}", params, page),
    )


def _workflow_run(
    request: Request, services: Services, session: SessionDep, run_id: str, state: str | None
) -> HTMLResponse:
    run = services.runs.get(run_id, state=state)
    return render(
        request,
        "runs/detail.html",
        session=session,
        section="runs",
        run=run,
        batch=False,
        running=run.status in ACTIVE,
        state=state,
        search="",
        counts=_workflow_counts(services, run_id, run, state),
        page=None,
        steps=run.steps,
        links={},
    )


@router.get("/runs/{run_id}/progress.json")
def run_progress(run_id: str, services: ServicesDep, session: ViewerSession) -> JSONResponse:
    """What the run page polls while a run goes on: its status and its steps by status."""
    response = JSONResponse(services.runs.progress(run_id).as_json())
    response.headers["Cache-Control"] = "no-store"
    return response


@router.post("/runs/{run_id}/cancel")
async def cancel_run(
    request: Request, run_id: str, services: ServicesDep, session: OperatorSession
) -> Response:
    form = await request.form()
    check_csrf(session, forms.optional(form, "csrf_token"))
    run = services.runs.cancel(run_id)
    return redirect(
        f"/runs/{run.id}",
        flash="Cancelled." if run.status == RunStatus.CANCELLED else "Cancellation requested.",
    )


@router.post("/runs/{run_id}/retry")
async def retry_run(
    request: Request, run_id: str, services: ServicesDep, session: OperatorSession
) -> Response:
    form = await request.form()
    check_csrf(session, forms.optional(form, "csrf_token"))
    include_unknown = forms.optional(form, "include_unknown") == "true"
    run = services.runs.retry(run_id, include_unknown=include_unknown)
    flash = "Queued again; steps that succeeded are not repeated."
    if include_unknown:
        flash += " Messages whose outcome was unknown are sent again, with their Message-ID."
    return redirect(f"/runs/{run.id}", flash=flash)
