"""The OpenAPI document: the error body every 4xx/5xx answer has, and only the API's own routes.

Routes declare the error statuses they can answer with `errors(...)`; `document`
builds /api/openapi.json from the routes under /api/ (the web pages are not API)
and describes FastAPI's request-validation 422 with the body `api/errors.py`
really sends, not FastAPI's default `HTTPValidationError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field

API_PREFIX = "/api/"


class ErrorDetail(BaseModel):
    """What went wrong and how to fix it; some errors add fields (target, stage, recipients…)."""

    model_config = ConfigDict(extra="allow")

    code: str = Field(
        description="machine-readable: validation_error, not_found, conflict, unauthorized, forbidden…"
    )
    message: str = Field(description="what was wrong, in words")
    hint: str | None = Field(default=None, description="what to do about it")
    field: str | None = Field(default=None, description="the input at fault, where there is one")
    problems: list[dict[str, Any]] | None = Field(
        default=None, description="every problem found: {field, message} or, for batches, {where, message}"
    )
    role: str | None = Field(default=None, description="403: the token's role (admin, operator, viewer)")
    required_role: str | None = Field(default=None, description="403: the role the operation needs")


class ErrorBody(BaseModel):
    """Every error answer of the API."""

    model_config = ConfigDict(extra="allow")

    error: ErrorDetail
    run_id: str | None = Field(default=None, description="the run that recorded a failed send")


_DESCRIPTIONS: dict[int | str, str] = {
    401: "no valid API token (send 'Authorization: Bearer TOKEN')",
    403: "the token's role may not do this: `error.required_role` names the role it needs, "
    "`error.role` the token's (admin, operator or viewer)",
    404: "no such target, account key, workflow or run",
    409: "conflicts with what exists (a duplicate name, something still in use, a finished run)",
    422: "the request is not valid: `error.field` and `error.problems` say what to fix",
    "5XX": "the mail server refused or failed (502), timed out (504), or a stored secret "
    "could not be decrypted (500)",
}


# Set on an answer given for an earlier request with the same Idempotency-Key.
REPLAYED = {
    "Idempotent-Replayed": {
        "description": "`true` when this answers an earlier request with the same Idempotency-Key",
        "schema": {"type": "string", "enum": ["true"]},
    }
}


def errors(*statuses: int | str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the error statuses an operation can answer."""
    return {status: {"model": ErrorBody, "description": _DESCRIPTIONS[status]} for status in statuses}


_SCHEMAS = "#/components/schemas/"
_ERROR_REF = _SCHEMAS + "ErrorBody"


def document(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document of the routes under /api/ (built once, then cached on the app)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schema["paths"] = {
        path: ops for path, ops in schema.get("paths", {}).items() if path.startswith(API_PREFIX)
    }
    _describe_validation_errors(schema)
    _drop_unused_schemas(schema)
    app.openapi_schema = schema
    return schema


def _describe_validation_errors(schema: dict[str, Any]) -> None:
    """FastAPI adds a 422 with its own body to every operation with parameters: ours is ErrorBody."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            answer = operation.get("responses", {}).get("422")
            if answer is None:
                continue
            answer["description"] = _DESCRIPTIONS[422]
            answer["content"] = {"application/json": {"schema": {"$ref": _ERROR_REF}}}
    # ErrorBody is in the components: every API router declares its 401 with `errors(401)`.
    assert "ErrorBody" in schema.get("components", {}).get("schemas", {}), "an API router without errors(401)"


def _drop_unused_schemas(schema: dict[str, Any]) -> None:
    """Keep the component schemas the API's operations refer to (directly or through others)."""
    components = schema.get("components", {}).get("schemas", {})
    used: set[str] = set()
    pending = list(_refs(schema.get("paths", {})))
    while pending:
        name = pending.pop()
        if name not in used and name in components:
            used.add(name)
            pending.extend(_refs(components[name]))
    for name in set(components) - used:
        del components[name]


def _refs(node: Any) -> Iterator[str]:
    """The names of the component schemas `node` refers to."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(_SCHEMAS):
            yield ref[len(_SCHEMAS) :]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)
