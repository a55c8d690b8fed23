"""The one place where the error tree becomes HTTP status codes and bodies."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pydantic
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from mailwright import errors
from mailwright.api.openapi import ErrorBody
from mailwright.domain.validation import describe
from mailwright.http_status import (
    RECORDED_DEFAULT_STATUS,
    STATUS,
    recorded_retry_after,
    retry_after,
    retry_header,
    retry_headers,
    status_for,
    status_for_code,
)

__all__ = [
    "RECORDED_DEFAULT_STATUS",
    "STATUS",
    "headers_for",
    "install",
    "mailwright_error",
    "recorded_retry_after",
    "retry_after",
    "retry_headers",
    "run_failure",
    "status_for",
    "status_for_code",
]

log = logging.getLogger(__name__)


def headers_for(error: errors.MailwrightError) -> dict[str, str] | None:
    """The headers an API answer with this error carries (WWW-Authenticate, Retry-After)."""
    headers = retry_headers(error)
    if status_for(error) == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return headers or None


def _body(details: dict[str, object]) -> dict[str, object]:
    return {"error": details}


async def mailwright_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.MailwrightError)
    return JSONResponse(_body(exc.details()), status_code=status_for(exc), headers=headers_for(exc))


def run_failure(
    error: Mapping[str, Any], *, run_id: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The answer for a run that failed with the recorded `error`: its status, body and Retry-After."""
    status = status_for_code(str(error.get("code")))
    body = ErrorBody.model_validate({"error": dict(error), "run_id": run_id})
    return JSONResponse(
        body.model_dump(mode="json", exclude_none=True),
        status_code=status,
        headers={**(headers or {}), **retry_header(status, recorded_retry_after(error))} or None,
    )


async def _request_invalid(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Never echo the input back: it may hold a password.
    problems = []
    for item in exc.errors():
        if item.get("type") == "json_invalid":  # located at a character position: name the body
            field = "body"
        else:
            field = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
        problems.append({"field": field, "message": str(item.get("msg", "invalid"))})
    first = problems[0] if problems else {"field": "", "message": "invalid request"}
    message = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
    details: dict[str, object] = {
        "code": "validation_error",
        "message": message,
        "field": first["field"],
        "problems": problems,
    }
    return JSONResponse(_body(details), status_code=422)


async def _model_invalid(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, pydantic.ValidationError)
    return JSONResponse(_body(describe(exc).details()), status_code=422)


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    # The traceback goes to the log (redacted there); the client gets the error body, no details.
    log.error("unexpected error answering a request", exc_info=exc)
    details: dict[str, object] = {
        "code": "internal_error",
        "message": "an unexpected error occurred; it was logged",
        "hint": "if it persists, report it with the time of the request",
    }
    return JSONResponse(_body(details), status_code=500)


def install(app: FastAPI) -> None:
    app.add_exception_handler(Exception, _unexpected)
    app.add_exception_handler(pydantic.ValidationError, _model_invalid)
    app.add_exception_handler(errors.MailwrightError, mailwright_error)
    app.add_exception_handler(RequestValidationError, _request_invalid)
