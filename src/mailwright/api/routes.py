"""Routes of /api/v1. They parse, call a service, and return its public model."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from mailwright.api.deps import ServicesDep, admin, operator, require_token, viewer
from mailwright.api.errors import run_failure
from mailwright.api.openapi import REPLAYED, errors
from mailwright.api.params import IdempotencyKey, Ref, Timeout, refuse_nul
from mailwright.domain.runs import RunStatus
from mailwright.plugins import account_key_types, target_types
from mailwright.services.account_keys import AccountKeyCreate, AccountKeyPublic, AccountKeyUpdate
from mailwright.services.idempotency import SEND_EMAIL_SCOPE
from mailwright.services.sending import SendEmailRequest, SendResult
from mailwright.services.target_public import TargetPublic
from mailwright.services.targets import TargetCreate, TargetUpdate

router = APIRouter(
    prefix="/api/v1", dependencies=[Depends(require_token), Depends(refuse_nul)], responses=errors(401)
)


@router.get("/account-keys", dependencies=[viewer("listing account keys")], tags=["account keys"])
def list_account_keys(services: ServicesDep) -> list[AccountKeyPublic]:
    return services.account_keys.list_all()


@router.post(
    "/account-keys",
    dependencies=[admin("creating account keys")],
    status_code=201,
    tags=["account keys"],
    responses=errors(403, 409, 422),
)
def create_account_key(body: AccountKeyCreate, services: ServicesDep) -> AccountKeyPublic:
    return services.account_keys.create(body)


@router.get(
    "/account-keys/{ref}",
    dependencies=[viewer("reading account keys")],
    tags=["account keys"],
    responses=errors(404, 422),
)
def get_account_key(ref: Ref, services: ServicesDep) -> AccountKeyPublic:
    return services.account_keys.get(ref)


@router.patch(
    "/account-keys/{ref}",
    dependencies=[admin("changing account keys")],
    tags=["account keys"],
    responses=errors(403, 404, 409, 422),
)
def update_account_key(ref: Ref, body: AccountKeyUpdate, services: ServicesDep) -> AccountKeyPublic:
    return services.account_keys.update(ref, body)


@router.delete(
    "/account-keys/{ref}",
    dependencies=[admin("deleting account keys")],
    status_code=204,
    tags=["account keys"],
    responses=errors(403, 404, 409, 422),
)
def delete_account_key(ref: Ref, services: ServicesDep) -> Response:
    services.account_keys.delete(ref)
    return Response(status_code=204)


@router.get("/account-key-types", dependencies=[viewer("listing account key types")], tags=["account keys"])
def list_account_key_types() -> list[dict[str, Any]]:
    """Each key type with its fields: their JSON schema; secret fields are marked `"secret": true`."""
    return [
        {
            "name": k.name,
            "label": k.label,
            "description": k.description,
            "secret_fields": k.secret_fields(),
            "needs_authorization": k.authorize is not None,
            "fields": k.fields_model.model_json_schema(),
        }
        for k in account_key_types()
    ]


@router.get("/target-types", dependencies=[viewer("listing target types")], tags=["targets"])
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


@router.get("/targets", dependencies=[viewer("listing targets")], tags=["targets"])
def list_targets(services: ServicesDep) -> list[TargetPublic]:
    return services.targets.list_all()


@router.post(
    "/targets",
    dependencies=[admin("creating targets")],
    status_code=201,
    tags=["targets"],
    responses=errors(403, 404, 409, 422),
)
def create_target(body: TargetCreate, services: ServicesDep) -> TargetPublic:
    return services.targets.create(body)


@router.get(
    "/targets/{ref}", dependencies=[viewer("reading targets")], tags=["targets"], responses=errors(404, 422)
)
def get_target(ref: Ref, services: ServicesDep) -> TargetPublic:
    return services.targets.get(ref)


@router.patch(
    "/targets/{ref}",
    dependencies=[admin("changing targets")],
    tags=["targets"],
    responses=errors(403, 404, 409, 422),
)
def update_target(ref: Ref, body: TargetUpdate, services: ServicesDep) -> TargetPublic:
    return services.targets.update(ref, body)


@router.delete(
    "/targets/{ref}",
    dependencies=[admin("deleting targets")],
    status_code=204,
    tags=["targets"],
    responses=errors(403, 404, 409, 422),
)
def delete_target(ref: Ref, services: ServicesDep) -> Response:
    services.targets.delete(ref)
    return Response(status_code=204)


@router.post(
    "/targets/{ref}/test",
    dependencies=[operator("testing targets")],
    tags=["targets"],
    responses=errors(403, 404, 422, "5XX"),
)
async def test_target(ref: Ref, services: ServicesDep) -> dict[str, Any]:
    """Connect, TLS, EHLO, AUTH, QUIT. 200 with `ok: false` and a diagnosis when it fails."""
    report = await services.targets.test(ref)
    return report.as_dict()


class Accepted(BaseModel):
    """The run is stored and queued (or still running when the wait ran out)."""

    run_id: str
    status: str


@router.post(
    "/send-email",
    dependencies=[operator("sending mail")],
    tags=["send"],
    responses={
        200: {"model": SendResult, "description": "sent (with `wait`, the default)", "headers": REPLAYED},
        202: {"model": Accepted, "description": "accepted, still running", "headers": REPLAYED},
        **errors(403, 404, 422, "5XX"),
    },
)
async def send_email(
    body: SendEmailRequest,
    services: ServicesDep,
    idempotency_key: IdempotencyKey = None,
    wait: bool = True,
    timeout: Timeout = 180.0,
) -> Response:
    """Send one message as a one-step run, stored before anything is answered.

    With `wait` (the default) the answer is the result, listing every recipient's
    outcome; without it, 202 with the run id. With an `Idempotency-Key`, a retry
    answers with the first request's run (and its result) and sends nothing again.
    """
    waiting = services.waiting
    started = await asyncio.to_thread(
        waiting.start_send_email, body, key=idempotency_key, scope=SEND_EMAIL_SCOPE
    )
    headers = {"Idempotent-Replayed": "true"} if started.replayed else None
    if not wait and not started.replayed:  # accepted: what a worker does with it is for later
        return JSONResponse(
            Accepted(run_id=started.run_id, status=RunStatus.QUEUED).model_dump(), status_code=202
        )
    # Without `wait`, a retry of a request that did not wait: the run as it is now (finished, maybe).
    answer = await waiting.send_outcome(started, timeout=timeout if wait else None)
    if answer.result is not None:
        return JSONResponse(answer.result.model_dump(mode="json"), headers=headers)
    if answer.error is not None:  # its status (and Retry-After) from the one table
        return run_failure(answer.error, run_id=answer.run_id, headers=headers)
    return JSONResponse(
        Accepted(run_id=answer.run_id, status=answer.status).model_dump(), status_code=202, headers=headers
    )
