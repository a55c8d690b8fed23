"""The audit log under /api/v1 (admins only): who changed what, when, from which face."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from mailwright.api.deps import ServicesDep, admin, require_token
from mailwright.api.openapi import errors
from mailwright.api.params import Limit, refuse_nul
from mailwright.services.audit import AuditEntry

router = APIRouter(
    prefix="/api/v1", dependencies=[Depends(require_token), Depends(refuse_nul)], responses=errors(401)
)


@router.get(
    "/audit",
    dependencies=[admin("reading the audit log")],
    tags=["audit"],
    responses=errors(403, 422),
)
def list_audit(services: ServicesDep, limit: Limit = 100) -> list[AuditEntry]:
    """Who created, changed or deleted which target, account key, workflow, trigger or token,
    newest first. `fields` names what an update changed, never the values (nor any secret)."""
    return services.audit.list_recent(limit)
