"""The one place where the error tree becomes HTTP status codes and bodies."""

from __future__ import annotations

import logging

import pydantic
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from mailwright import errors
from mailwright.domain.validation import describe

log = logging.getLogger(__name__)

# Most specific class first.
_STATUS: list[tuple[type[errors.MailwrightError], int]] = [
    (errors.ValidationError, 422),
    (errors.NotFoundError, 404),
    (errors.ConflictError, 409),
    (errors.AuthorizationError, 401),
    (errors.PermissionDeniedError, 403),
    (errors.TargetTimeoutError, 504),
    (errors.TargetError, 502),
    (errors.ConfigError, 500),
    (errors.SecretError, 500),
]


# For errors recorded in runs (as their `code`), where only the code is left.
_CODE_STATUS = {
    "validation_error": 422,
    "step_error": 422,
    "not_found": 404,
    "conflict": 409,
    "unauthorized": 401,
    "forbidden": 403,
    "timeout": 504,
    "internal_error": 500,
    "secret_error": 500,
    "config_error": 500,
}


def status_for_code(code: str) -> int:
    return _CODE_STATUS.get(code, 502)


def status_for(error: errors.MailwrightError) -> int:
    for cls, status in _STATUS:
        if isinstance(error, cls):
            return status
    return 500


def _body(details: dict[str, object]) -> dict[str, object]:
    return {"error": details}


async def mailwright_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.MailwrightError)
    status = status_for(exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(_body(exc.details()), status_code=status, headers=headers)


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
