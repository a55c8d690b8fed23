"""Batch sending under /api/v1: many messages as one run, and a run's steps page by page."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from mailwright.api.deps import ServicesDep, require_token
from mailwright.api.routes_workflows import WAIT_LIMIT
from mailwright.services.batches import MAX_CONCURRENCY

router = APIRouter(prefix="/api/v1", dependencies=[Depends(require_token)])

# A request body is parsed whole; bigger batches go through `mailwright send-batch` or several requests.
MAX_MESSAGES = 10_000


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = Field(description="target display name or id for every message without its own")
    account_key: str | None = Field(default=None, description="override the target's default key")
    messages: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=MAX_MESSAGES,
        description="each with the fields of /api/v1/send-email; `target` optional",
    )
    concurrency: int | None = Field(default=None, ge=1, le=MAX_CONCURRENCY)
    wait: bool = Field(default=False, description="answer when every message has its result")
    timeout: float = Field(default=180.0, gt=0, le=WAIT_LIMIT, description="seconds to wait at most")


@router.post(
    "/send-email/batch",
    tags=["send"],
    status_code=202,
    responses={200: {"description": "finished (with `wait`)"}, 202: {"description": "accepted"}},
)
async def send_batch(body: BatchIn, services: ServicesDep) -> JSONResponse:
    """Store every message as a step of one run, then answer 202 with the run id.

    All messages are checked first: if any is bad, nothing is stored and the 422
    lists the bad ones by index. With `wait`, the answer is the finished batch
    with each message's result (recipients, server reply, or error).
    """
    messages = ((f"message {i}", m) for i, m in enumerate(body.messages))
    created = await asyncio.to_thread(
        services.batches.create,
        messages,
        target=body.target,
        account_key=body.account_key,
        concurrency=body.concurrency,
        source="messages",
    )
    summary = {"run_id": created.run_id, "status": "queued", "messages": created.total}
    if not body.wait:
        return JSONResponse(summary, status_code=202)
    status = await _wait(services, created.run_id, body.timeout)
    if status not in ("succeeded", "failed", "cancelled"):
        return JSONResponse({**summary, "status": status}, status_code=202)
    results = await asyncio.to_thread(services.batches.all_results, created.run_id)
    counts = await asyncio.to_thread(services.batches.counts, created.run_id)
    return JSONResponse({**summary, "status": status, "counts": counts, "results": results})


async def _wait(services: Any, run_id: str, timeout: float) -> str:
    """Poll the run's status (only the row: a batch's steps are many) until it ends or time is up."""
    deadline = time.monotonic() + timeout
    while True:
        status: str = await asyncio.to_thread(services.batches.run_status, run_id)
        if status in ("succeeded", "failed", "cancelled") or time.monotonic() >= deadline:
            return status
        await asyncio.sleep(0.1)


@router.get("/runs/{run_id}/steps", tags=["runs"])
def list_steps(
    run_id: str, services: ServicesDep, offset: int = 0, limit: int = 100, status: str | None = None
) -> list[dict[str, Any]]:
    """A run's steps in order, a page at a time (`limit` at most 1000), optionally of one status."""
    return services.batches.results(run_id, offset=offset, limit=limit, status=status)
