"""Routes for workflows and runs under /api/v1."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from mailwright.api.deps import ServicesDep, require_token
from mailwright.services.runs import RunPublic
from mailwright.services.schedules import SchedulePublic
from mailwright.services.triggers import TriggerPublic
from mailwright.services.workflows import ExportedWorkflow, WorkflowPublic

router = APIRouter(prefix="/api/v1", dependencies=[Depends(require_token)])

WAIT_LIMIT = 600.0


class WorkflowIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    document: str | dict[str, Any] = Field(
        description="the workflow document: YAML/JSON text or a JSON object"
    )
    replace: bool = False


class StartIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str | None = Field(default=None, description="the workflow's target for this run")
    account_key: str | None = None
    inputs: dict[str, Any] = Field(default_factory=dict)
    wait: bool = Field(default=False, description="answer with the finished run")
    timeout: float = Field(default=180.0, gt=0, le=WAIT_LIMIT, description="seconds to wait at most")


def _text(document: str | dict[str, Any]) -> str:
    import json

    return document if isinstance(document, str) else json.dumps(document)


# A worker of another process finishes runs without telling this one: look at the row this often.
RECHECK_SECONDS = 0.25


async def wait_for_run(services: Any, run_id: str, timeout: float) -> RunPublic:
    """The run once finished, or as it is when the timeout passes.

    This process's worker wakes the waiter as soon as the run ends; the row is read
    again every RECHECK_SECONDS for runs finished elsewhere.
    """
    deadline = time.monotonic() + timeout
    fresh = True  # the run was queued a moment ago: wait before the first read
    while True:
        woken = services.runs.waiters.register(run_id)  # before reading: a finish in between still wakes us
        try:
            remaining = deadline - time.monotonic()
            if not fresh:
                run: RunPublic = await asyncio.to_thread(services.runs.get, run_id)
                if run.status in ("succeeded", "failed", "cancelled") or remaining <= 0:
                    return run
            fresh = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(woken), timeout=min(remaining, RECHECK_SECONDS))
        finally:
            services.runs.waiters.discard(run_id, woken)


@router.get("/workflows", tags=["workflows"])
def list_workflows(services: ServicesDep) -> list[WorkflowPublic]:
    return services.workflows.list_all()


@router.post("/workflows", status_code=201, tags=["workflows"])
def create_workflow(body: WorkflowIn, services: ServicesDep) -> WorkflowPublic:
    return services.workflows.create(_text(body.document), replace=body.replace)


@router.post("/workflows/validate", tags=["workflows"])
def validate_workflow(body: WorkflowIn, services: ServicesDep) -> dict[str, Any]:
    document = services.workflows.validate(_text(body.document))
    return {"valid": True, "name": document.name, "steps": [s.id for s in document.steps]}


@router.get("/workflows/{ref}", tags=["workflows"])
def get_workflow(ref: str, services: ServicesDep) -> WorkflowPublic:
    return services.workflows.get(ref)


@router.get("/workflows/{ref}/export", tags=["workflows"])
def export_workflow(ref: str, services: ServicesDep, format: str = "yaml") -> ExportedWorkflow:
    return services.workflows.export(ref, "json" if format == "json" else "yaml")


@router.delete("/workflows/{ref}", status_code=204, tags=["workflows"])
def delete_workflow(ref: str, services: ServicesDep) -> Response:
    services.workflows.delete(ref)
    return Response(status_code=204)


@router.post("/workflows/{ref}/start", tags=["workflows"], status_code=202)
async def start_workflow(
    ref: str, services: ServicesDep, response: Response, body: Annotated[StartIn | None, Body()] = None
) -> RunPublic:
    """The run is stored before this answers: 202 with the run id, or 200 with the finished run if `wait`."""
    body = body or StartIn()
    run = await asyncio.to_thread(
        services.runs.start_workflow,
        ref,
        inputs=body.inputs,
        target=body.target,
        account_key=body.account_key,
    )
    if not body.wait:
        return run
    finished = await wait_for_run(services, run.id, body.timeout)
    # Still running when the wait ran out: 202, as without `wait`, with the run as it stands.
    response.status_code = 200 if finished.status in ("succeeded", "failed", "cancelled") else 202
    return finished


@router.get("/workflows/{ref}/schedules", tags=["workflows"])
def list_schedules(ref: str, services: ServicesDep) -> list[SchedulePublic]:
    return services.schedules.list_for(ref)


@router.post("/workflows/{ref}/schedules/{index}/enable", tags=["workflows"])
def enable_schedule(ref: str, index: int, services: ServicesDep) -> SchedulePublic:
    return services.schedules.set_enabled(ref, index, True)


@router.post("/workflows/{ref}/schedules/{index}/disable", tags=["workflows"])
def disable_schedule(ref: str, index: int, services: ServicesDep) -> SchedulePublic:
    return services.schedules.set_enabled(ref, index, False)


@router.get("/triggers", tags=["triggers"])
def list_triggers(services: ServicesDep, workflow: str | None = None) -> list[TriggerPublic]:
    """Every email trigger with its state: polling, idle, errored (with the reason), disabled."""
    return services.triggers.list_all(workflow)


@router.get("/workflows/{ref}/triggers", tags=["triggers"])
def workflow_triggers(ref: str, services: ServicesDep) -> list[TriggerPublic]:
    return services.triggers.list_all(ref)


@router.post("/workflows/{ref}/triggers/{index}/enable", tags=["triggers"])
def enable_trigger(ref: str, index: int, services: ServicesDep) -> TriggerPublic:
    return services.triggers.set_enabled(ref, index, True)


@router.post("/workflows/{ref}/triggers/{index}/disable", tags=["triggers"])
def disable_trigger(ref: str, index: int, services: ServicesDep) -> TriggerPublic:
    return services.triggers.set_enabled(ref, index, False)


@router.get("/workflows/{ref}/triggers/messages", tags=["triggers"])
def trigger_messages(
    ref: str, services: ServicesDep, index: int | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """The mail the workflow's triggers took, newest first, with each one's run and status."""
    return services.triggers.messages(ref, index, limit=max(1, min(limit, 1000)))


@router.get("/runs", tags=["runs"])
def list_runs(
    services: ServicesDep, status: str | None = None, workflow: str | None = None, limit: int = 50
) -> list[RunPublic]:
    return services.runs.list_runs(limit=limit, status=status, workflow=workflow)


@router.get("/runs/{run_id}", tags=["runs"])
def get_run(run_id: str, services: ServicesDep) -> RunPublic:
    return services.runs.get(run_id)


@router.post("/runs/{run_id}/cancel", tags=["runs"])
def cancel_run(run_id: str, services: ServicesDep) -> RunPublic:
    return services.runs.cancel(run_id)


@router.post("/runs/{run_id}/retry", tags=["runs"])
def retry_run(run_id: str, services: ServicesDep, request: Request) -> RunPublic:
    return services.runs.retry(run_id)
