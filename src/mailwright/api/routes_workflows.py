"""Routes for workflows and runs under /api/v1."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from mailwright.api.deps import ServicesDep, admin, operator, require_token, viewer
from mailwright.api.openapi import REPLAYED, errors
from mailwright.api.params import (
    MAX_INDEX,
    MAX_REF_LENGTH,
    WAIT_LIMIT,
    IdempotencyKey,
    Index,
    Limit,
    NameFilter,
    Offset,
    Ref,
    RunId,
    refuse_nul,
)
from mailwright.services.runs import FINISHED, RUN_STATUSES, RunPublic
from mailwright.services.schedules import SchedulePublic
from mailwright.services.triggers import TriggerPublic
from mailwright.services.workflows import ExportedWorkflow, WorkflowPublic

router = APIRouter(
    prefix="/api/v1", dependencies=[Depends(require_token), Depends(refuse_nul)], responses=errors(401)
)

__all__ = ["WAIT_LIMIT", "router"]


class WorkflowIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Empty text or an empty object is no document: refused here, as the parser would.
    document: Annotated[str, Field(min_length=1)] | Annotated[dict[str, Any], Field(min_length=1)] = Field(
        description="the workflow document: YAML/JSON text or a JSON object"
    )
    replace: bool = False


class StartIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_REF_LENGTH,
        description="the workflow's target for this run",
    )
    account_key: str | None = Field(default=None, min_length=1, max_length=MAX_REF_LENGTH)
    inputs: dict[str, Any] = Field(default_factory=dict)
    wait: bool = Field(default=False, description="answer with the finished run")
    timeout: float = Field(
        default=180.0, gt=0, le=WAIT_LIMIT, allow_inf_nan=False, description="seconds to wait at most"
    )


def _text(document: str | dict[str, Any]) -> str:
    """The document's text: as sent, or a JSON object written out readably (its keys in order)."""
    import json

    if isinstance(document, str):
        return document
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


@router.get("/workflows", dependencies=[viewer("listing workflows")], tags=["workflows"])
def list_workflows(services: ServicesDep) -> list[WorkflowPublic]:
    return services.workflows.list_all()


@router.post(
    "/workflows",
    dependencies=[admin("creating or replacing workflows")],
    status_code=201,
    tags=["workflows"],
    responses=errors(403, 409, 422),
)
def create_workflow(body: WorkflowIn, services: ServicesDep) -> WorkflowPublic:
    return services.workflows.create(_text(body.document), replace=body.replace)


@router.post(
    "/workflows/validate",
    dependencies=[viewer("validating workflows")],
    tags=["workflows"],
    responses=errors(422),
)
def validate_workflow(body: WorkflowIn, services: ServicesDep) -> dict[str, Any]:
    document = services.workflows.validate(_text(body.document))
    return {"valid": True, "name": document.name, "steps": [s.id for s in document.steps]}


@router.get(
    "/workflows/{ref}",
    dependencies=[viewer("reading workflows")],
    tags=["workflows"],
    responses=errors(404, 422),
)
def get_workflow(ref: Ref, services: ServicesDep) -> WorkflowPublic:
    return services.workflows.get(ref)


@router.get(
    "/workflows/{ref}/export",
    dependencies=[viewer("exporting workflows")],
    tags=["workflows"],
    responses=errors(404, 422),
)
def export_workflow(
    ref: Ref,
    services: ServicesDep,
    format: Annotated[
        Literal["yaml", "json"] | None,
        Query(description="rewrite in this format; left out, the document comes as it was written"),
    ] = None,
) -> ExportedWorkflow:
    """The document as its author wrote it: comments, key order and layout kept."""
    return services.workflows.export(ref, format)


@router.delete(
    "/workflows/{ref}",
    dependencies=[admin("deleting workflows")],
    status_code=204,
    tags=["workflows"],
    responses=errors(403, 404, 409, 422),
)
def delete_workflow(ref: Ref, services: ServicesDep) -> Response:
    services.workflows.delete(ref)
    return Response(status_code=204)


@router.post(
    "/workflows/{ref}/start",
    dependencies=[operator("starting workflows")],
    tags=["workflows"],
    status_code=202,
    responses={
        200: {"model": RunPublic, "description": "finished (with `wait`)", "headers": REPLAYED},
        202: {"description": "accepted: the run as stored", "headers": REPLAYED},
        **errors(403, 404, 422),
    },
)
async def start_workflow(
    ref: Ref,
    services: ServicesDep,
    response: Response,
    body: Annotated[StartIn | None, Body()] = None,
    idempotency_key: IdempotencyKey = None,
) -> RunPublic:
    """The run is stored before this answers: 202 with the run id, or 200 with the finished run if `wait`.

    With an `Idempotency-Key` (kept per workflow), a retry answers with the first
    request's run and starts no other; `wait` and `timeout` need not match.
    """
    body = body or StartIn()
    started = await asyncio.to_thread(
        services.idempotency.start_workflow,
        ref,
        key=idempotency_key,
        inputs=body.inputs,
        target=body.target,
        account_key=body.account_key,
    )
    if started.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    if not body.wait:
        return await asyncio.to_thread(services.runs.get, started.run_id)
    finished = await services.waiting.wait(
        started.run_id, timeout=body.timeout, read=services.runs.get, fresh=not started.replayed
    )
    # Still running when the wait ran out: 202, as without `wait`, with the run as it stands.
    response.status_code = 200 if finished.status in FINISHED else 202
    return finished


@router.get(
    "/workflows/{ref}/schedules",
    dependencies=[viewer("reading schedules")],
    tags=["workflows"],
    responses=errors(404, 422),
)
def list_schedules(ref: Ref, services: ServicesDep) -> list[SchedulePublic]:
    return services.schedules.list_for(ref)


@router.post(
    "/workflows/{ref}/schedules/{index}/enable",
    dependencies=[admin("enabling schedules")],
    tags=["workflows"],
    responses=errors(403, 404, 422),
)
def enable_schedule(ref: Ref, index: Index, services: ServicesDep) -> SchedulePublic:
    return services.schedules.set_enabled(ref, index, True)


@router.post(
    "/workflows/{ref}/schedules/{index}/disable",
    dependencies=[admin("disabling schedules")],
    tags=["workflows"],
    responses=errors(403, 404, 422),
)
def disable_schedule(ref: Ref, index: Index, services: ServicesDep) -> SchedulePublic:
    return services.schedules.set_enabled(ref, index, False)


@router.get(
    "/triggers", dependencies=[viewer("listing triggers")], tags=["triggers"], responses=errors(404, 422)
)
def list_triggers(services: ServicesDep, workflow: NameFilter = None) -> list[TriggerPublic]:
    """Every email trigger with its state: polling, idle, errored (with the reason), disabled."""
    return services.triggers.list_all(workflow)


@router.get(
    "/workflows/{ref}/triggers",
    dependencies=[viewer("listing triggers")],
    tags=["triggers"],
    responses=errors(404, 422),
)
def workflow_triggers(ref: Ref, services: ServicesDep) -> list[TriggerPublic]:
    return services.triggers.list_all(ref)


@router.post(
    "/workflows/{ref}/triggers/{index}/enable",
    dependencies=[admin("enabling triggers")],
    tags=["triggers"],
    responses=errors(403, 404, 422),
)
def enable_trigger(ref: Ref, index: Index, services: ServicesDep) -> TriggerPublic:
    return services.triggers.set_enabled(ref, index, True)


@router.post(
    "/workflows/{ref}/triggers/{index}/disable",
    dependencies=[admin("disabling triggers")],
    tags=["triggers"],
    responses=errors(403, 404, 422),
)
def disable_trigger(ref: Ref, index: Index, services: ServicesDep) -> TriggerPublic:
    return services.triggers.set_enabled(ref, index, False)


@router.get(
    "/workflows/{ref}/triggers/messages",
    dependencies=[viewer("reading trigger mail")],
    tags=["triggers"],
    responses=errors(404, 422),
)
def trigger_messages(
    ref: Ref,
    services: ServicesDep,
    index: Annotated[int | None, Query(ge=0, le=MAX_INDEX, description="one trigger's mail only")] = None,
    limit: Limit = 100,
) -> list[dict[str, Any]]:
    """The mail the workflow's triggers took, newest first, with each one's run and status."""
    return services.triggers.messages(ref, index, limit=limit)


RunStatus = Annotated[
    str | None,
    Query(
        description="only the runs in this status",
        pattern=f"^({'|'.join((*RUN_STATUSES, 'preparing'))})$",
    ),
]


TargetFilter = Annotated[
    str | None,
    Query(description="only the runs of this target (its name)", min_length=1, max_length=200),
]


@router.get("/runs", dependencies=[viewer("listing runs")], tags=["runs"], responses=errors(422))
def list_runs(
    services: ServicesDep,
    status: RunStatus = None,
    workflow: NameFilter = None,
    target: TargetFilter = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> list[RunPublic]:
    """Runs newest first, optionally of one status, workflow and target; `offset` pages on."""
    return services.runs.list_runs(
        limit=limit, status=status, workflow=workflow, target=target, offset=offset
    )


@router.get(
    "/runs/{run_id}", dependencies=[viewer("reading runs")], tags=["runs"], responses=errors(404, 422)
)
def get_run(run_id: RunId, services: ServicesDep) -> RunPublic:
    return services.runs.get(run_id)


@router.post(
    "/runs/{run_id}/cancel",
    dependencies=[operator("cancelling runs")],
    tags=["runs"],
    responses=errors(403, 404, 409, 422),
)
def cancel_run(run_id: RunId, services: ServicesDep) -> RunPublic:
    return services.runs.cancel(run_id)


@router.post(
    "/runs/{run_id}/retry",
    dependencies=[operator("retrying runs")],
    tags=["runs"],
    responses=errors(403, 404, 409, 422),
)
def retry_run(
    run_id: RunId,
    services: ServicesDep,
    request: Request,
    include_unknown: Annotated[
        bool,
        Query(
            description="also send again the messages whose outcome is unknown (they may have been "
            "delivered already; they keep their Message-ID)"
        ),
    ] = False,
) -> RunPublic:
    """Queue a failed or cancelled run again; succeeded steps are not repeated."""
    return services.runs.retry(run_id, include_unknown=include_unknown)
