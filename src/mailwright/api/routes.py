"""Routes of /api/v1. They parse, call a service, and return its public model."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse

from mailwright.api.deps import ServicesDep, require_token
from mailwright.api.errors import status_for_code
from mailwright.api.routes_workflows import WAIT_LIMIT, wait_for_run
from mailwright.plugins import target_types
from mailwright.services.account_keys import AccountKeyCreate, AccountKeyPublic, AccountKeyUpdate
from mailwright.services.app import Services
from mailwright.services.runs import RunPublic
from mailwright.services.sending import SendEmailRequest, SendResult
from mailwright.services.targets import TargetCreate, TargetPublic, TargetUpdate

router = APIRouter(prefix="/api/v1", dependencies=[Depends(require_token)])


@router.get("/account-keys", tags=["account keys"])
def list_account_keys(services: ServicesDep) -> list[AccountKeyPublic]:
    return services.account_keys.list_all()


@router.post("/account-keys", status_code=201, tags=["account keys"])
def create_account_key(body: AccountKeyCreate, services: ServicesDep) -> AccountKeyPublic:
    return services.account_keys.create(body)


@router.get("/account-keys/{ref}", tags=["account keys"])
def get_account_key(ref: str, services: ServicesDep) -> AccountKeyPublic:
    return services.account_keys.get(ref)


@router.patch("/account-keys/{ref}", tags=["account keys"])
def update_account_key(ref: str, body: AccountKeyUpdate, services: ServicesDep) -> AccountKeyPublic:
    return services.account_keys.update(ref, body)


@router.delete("/account-keys/{ref}", status_code=204, tags=["account keys"])
def delete_account_key(ref: str, services: ServicesDep) -> Response:
    services.account_keys.delete(ref)
    return Response(status_code=204)


@router.get("/target-types", tags=["targets"])
def list_target_types() -> list[dict[str, Any]]:
    return [
        {
            "name": t.name,
            "label": t.label,
            "protocol": t.protocol,
            "account_key_types": list(t.account_key_types),
            "presets": [p.as_dict() for p in t.presets.values()],
        }
        for t in target_types()
    ]


@router.get("/targets", tags=["targets"])
def list_targets(services: ServicesDep) -> list[TargetPublic]:
    return services.targets.list_all()


@router.post("/targets", status_code=201, tags=["targets"])
def create_target(body: TargetCreate, services: ServicesDep) -> TargetPublic:
    return services.targets.create(body)


@router.get("/targets/{ref}", tags=["targets"])
def get_target(ref: str, services: ServicesDep) -> TargetPublic:
    return services.targets.get(ref)


@router.patch("/targets/{ref}", tags=["targets"])
def update_target(ref: str, body: TargetUpdate, services: ServicesDep) -> TargetPublic:
    return services.targets.update(ref, body)


@router.delete("/targets/{ref}", status_code=204, tags=["targets"])
def delete_target(ref: str, services: ServicesDep) -> Response:
    services.targets.delete(ref)
    return Response(status_code=204)


@router.post("/targets/{ref}/test", tags=["targets"])
async def test_target(ref: str, services: ServicesDep) -> dict[str, Any]:
    """Connect, TLS, EHLO, AUTH, QUIT. 200 with `ok: false` and a diagnosis when it fails."""
    report = await services.targets.test(ref)
    return report.as_dict()


def _accept(services: Services, body: SendEmailRequest) -> RunPublic:
    services.sending.check(body)  # bad input: 422/404, nothing stored
    return services.runs.start_send_email(body)


@router.post("/send-email", tags=["send"], responses={202: {"description": "accepted, still running"}})
async def send_email(
    body: SendEmailRequest, services: ServicesDep, wait: bool = True, timeout: float = 180.0
) -> Response:
    """Send one message as a one-step run, stored before anything is answered.

    With `wait` (the default) the answer is the result, listing every recipient's
    outcome; without it, 202 with the run id.
    """
    run = await asyncio.to_thread(_accept, services, body)
    if wait:
        run = await wait_for_run(services, run.id, min(max(timeout, 1.0), WAIT_LIMIT))
    if run.status == "succeeded" and run.steps[0].output is not None:
        result = SendResult.model_validate({**run.steps[0].output, "run_id": run.id})
        return JSONResponse(result.model_dump(mode="json"))
    if run.status in ("failed", "cancelled"):
        error = run.steps[0].error or run.error or {"code": "failed", "message": f"the run {run.status}"}
        return JSONResponse(
            {"error": error, "run_id": run.id}, status_code=status_for_code(str(error.get("code")))
        )
    return JSONResponse({"run_id": run.id, "status": run.status}, status_code=202)
