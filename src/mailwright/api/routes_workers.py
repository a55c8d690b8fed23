"""The live workers under /api/v1: which processes execute runs, where, in which pool."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from mailwright.api.deps import ServicesDep, require_token, viewer
from mailwright.api.openapi import errors
from mailwright.api.params import refuse_nul
from mailwright.services.workers import WorkerPublic

router = APIRouter(
    prefix="/api/v1", dependencies=[Depends(require_token), Depends(refuse_nul)], responses=errors(401)
)


@router.get("/workers", dependencies=[viewer("listing workers")], tags=["workers"])
def list_workers(services: ServicesDep) -> list[WorkerPublic]:
    """The worker processes whose heartbeat is recent (the last 30 s): host, pid, pool, runs in hand
    out of their concurrency, broker, when they started and last reported."""
    return services.workers.live()
