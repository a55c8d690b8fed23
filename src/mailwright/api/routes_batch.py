"""Batch sending under /api/v1: many messages as one run, and a run's steps page by page."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from mailwright.api.deps import ServicesDep, operator, require_token, viewer
from mailwright.api.openapi import REPLAYED, errors
from mailwright.api.params import MAX_REF_LENGTH, WAIT_LIMIT, IdempotencyKey, Limit, Offset, RunId, refuse_nul
from mailwright.domain.runs import FINISHED_RUN_STATUSES, RunStatus
from mailwright.services.batches import MAX_CONCURRENCY
from mailwright.services.idempotency import BATCH_SCOPE, IdempotencyClaim
from mailwright.services.runs import STEP_STATUSES

router = APIRouter(
    prefix="/api/v1", dependencies=[Depends(require_token), Depends(refuse_nul)], responses=errors(401)
)

# A request body is parsed whole; bigger batches go through `mailwright send-batch` or several requests.
MAX_MESSAGES = 10_000


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = Field(
        min_length=1,
        max_length=MAX_REF_LENGTH,
        description="target display name or id for every message without its own",
    )
    account_key: str | None = Field(
        default=None, min_length=1, max_length=MAX_REF_LENGTH, description="override the target's default key"
    )
    messages: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=MAX_MESSAGES,
        description="each with the fields of /api/v1/send-email; `target` optional",
    )
    concurrency: int | None = Field(default=None, ge=1, le=MAX_CONCURRENCY)
    wait: bool = Field(default=False, description="answer when every message has its result")
    timeout: float = Field(
        default=180.0, gt=0, le=WAIT_LIMIT, allow_inf_nan=False, description="seconds to wait at most"
    )


class BatchAccepted(BaseModel):
    run_id: str
    status: str
    messages: int


class BatchFinished(BatchAccepted):
    counts: dict[str, int] = Field(description="how many messages ended in each status")
    results: list[dict[str, Any]] = Field(description="each message's outcome, in order")


# What a retry must repeat: `wait` and `timeout` only shape the answer.
_ANSWER_FIELDS = {"wait", "timeout"}


@router.post(
    "/send-email/batch",
    dependencies=[operator("sending mail")],
    tags=["send"],
    status_code=202,
    responses={
        200: {"model": BatchFinished, "description": "finished (with `wait`)", "headers": REPLAYED},
        202: {"model": BatchAccepted, "description": "accepted", "headers": REPLAYED},
        **errors(403, 404, 422, "5XX"),
    },
)
async def send_batch(
    body: BatchIn, services: ServicesDep, idempotency_key: IdempotencyKey = None
) -> JSONResponse:
    """Store every message as a step of one run, then answer 202 with the run id.

    All messages are checked first: if any is bad, nothing is stored and the 422
    lists the bad ones by index. With `wait`, the answer is the finished batch
    with each message's result (recipients, server reply, or error). With an
    `Idempotency-Key`, a retry answers with the first request's batch.
    """
    claim = None
    if idempotency_key is not None:
        request = body.model_dump(mode="json", exclude=_ANSWER_FIELDS)
        claim = await asyncio.to_thread(IdempotencyClaim.of, BATCH_SCOPE, idempotency_key, request)
    messages = ((f"message {i}", m) for i, m in enumerate(body.messages))
    created = await asyncio.to_thread(
        services.batches.create,
        messages,
        target=body.target,
        account_key=body.account_key,
        concurrency=body.concurrency,
        source="messages",
        idempotency=claim,
    )
    headers = {"Idempotent-Replayed": "true"} if created.replayed else None
    status: str = RunStatus.QUEUED
    if created.replayed:
        status = await asyncio.to_thread(services.batches.run_status, created.run_id)
    # Every message of the body is one step (none is skipped), also while a replayed batch is stored.
    summary = BatchAccepted(run_id=created.run_id, status=status, messages=len(body.messages))
    if not body.wait:
        return JSONResponse(summary.model_dump(), status_code=202, headers=headers)
    summary.status = await _wait(services, created.run_id, body.timeout)
    if summary.status not in FINISHED_RUN_STATUSES:
        return JSONResponse(summary.model_dump(), status_code=202, headers=headers)
    results = await asyncio.to_thread(services.batches.all_results, created.run_id)
    counts = await asyncio.to_thread(services.batches.counts, created.run_id)
    finished = BatchFinished(**summary.model_dump(), counts=counts, results=results)
    return JSONResponse(finished.model_dump(mode="json"), headers=headers)


async def _wait(services: Any, run_id: str, timeout: float) -> str:
    """Poll the run's status (only the row: a batch's steps are many) until it ends or time is up."""
    deadline = time.monotonic() + timeout
    while True:
        status: str = await asyncio.to_thread(services.batches.run_status, run_id)
        if status in FINISHED_RUN_STATUSES or time.monotonic() >= deadline:
            return status
        await asyncio.sleep(0.1)


StepStatus = Annotated[
    str | None,
    Query(description="only the steps in this status", pattern=f"^({'|'.join(STEP_STATUSES)})$"),
]
SendState = Annotated[
    str | None,
    Query(
        description="only the messages in this send state: sending, sent, or unknown (may or may not "
        "have been delivered; not resent unless the run is retried with include_unknown)",
        pattern="^(sending|sent|unknown)$",
    ),
]


Search = Annotated[
    str | None,
    Query(
        description="a recipient or a Message-ID, or a part of one (any case)", min_length=1, max_length=200
    ),
]


@router.get(
    "/runs/{run_id}/steps", dependencies=[viewer("reading runs")], tags=["runs"], responses=errors(404, 422)
)
def list_steps(
    run_id: RunId,
    services: ServicesDep,
    offset: Offset = 0,
    limit: Limit = 100,
    status: StepStatus = None,
    send_state: SendState = None,
    q: Search = None,
) -> list[dict[str, Any]]:
    """A run's steps in order, a page at a time (`limit` at most 1000), optionally of one status
    or send state (`?send_state=unknown`: the messages that may or may not have been delivered),
    and whose recipient (To, Cc, Bcc) or Message-ID contains `q`."""
    return services.batches.results(
        run_id, offset=offset, limit=limit, status=status, send_state=send_state, search=q
    )


@router.get(
    "/runs/{run_id}/progress",
    dependencies=[viewer("reading runs")],
    tags=["runs"],
    responses=errors(404, 422),
)
def run_progress(run_id: RunId, services: ServicesDep) -> dict[str, Any]:
    """The run's status and how many of its steps are in each status (failed first): cheap to
    poll whatever the size of a batch. `done` counts the steps that ended."""
    return services.runs.progress(run_id).as_json()
