"""The one place where the error tree becomes HTTP status codes and bodies."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pydantic
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from mailwright import errors
from mailwright.api.openapi import ErrorBody
from mailwright.domain.validation import describe

log = logging.getLogger(__name__)

# The one table from the error tree to HTTP status codes. Most specific class first: an error
# answers with the first class it is an instance of, anything else of ours with 500.
STATUS: tuple[tuple[type[errors.MailwrightError], int], ...] = (
    (errors.ValidationError, 422),
    (errors.StepValueError, 422),
    (errors.NotFoundError, 404),
    (errors.ConflictError, 409),
    (errors.LoginThrottledError, 429),
    (errors.AuthorizationError, 401),
    (errors.PermissionDeniedError, 403),
    (errors.RateLimitedError, 429),
    (errors.TargetDeferredError, 503),  # the server said "not now" (4xx): worth retrying later
    (errors.TargetTimeoutError, 504),
    (errors.TargetError, 502),
    (errors.ConfigError, 500),
    (errors.SecretError, 500),
)
# A run's recorded error keeps only its fields; one whose code is not of the tree answers 502
# (the send failed on the target's side), `internal_error` (a bug, logged) 500.
RECORDED_DEFAULT_STATUS = 502
_RECORDED_EXTRA = {"internal_error": 500}


def status_for(error: errors.MailwrightError) -> int:
    return _status_of_class(type(error))


def _status_of_class(cls: type[errors.MailwrightError]) -> int:
    for listed, status in STATUS:
        if issubclass(cls, listed):
            return status
    return 500


def _code_statuses() -> dict[str, int]:
    """Each code of the tree -> the status its class answers with (the root's generic code aside)."""
    out = dict(_RECORDED_EXTRA)
    for value in vars(errors).values():
        if (
            isinstance(value, type)
            and issubclass(value, errors.MailwrightError)
            and value is not errors.MailwrightError
            and value.__module__ == errors.__name__
        ):
            out.setdefault(value.code, _status_of_class(value))
    return out


_CODE_STATUS = _code_statuses()


def status_for_code(code: str) -> int:
    """The status for an error recorded in a run, where only its `code` is left."""
    return _CODE_STATUS.get(code, RECORDED_DEFAULT_STATUS)


def _seconds_until(moment: datetime) -> int:
    return max(1, math.ceil((moment - datetime.now(UTC)).total_seconds()))


def retry_after(error: errors.MailwrightError) -> int | None:
    """Seconds the client should wait before trying again, where the error knows it."""
    if isinstance(error, errors.RateLimitedError):
        return _seconds_until(error.until)
    if isinstance(error, errors.LoginThrottledError | errors.TargetDeferredError):
        return error.retry_after
    return None


def recorded_retry_after(error: Mapping[str, Any]) -> int | None:
    """`retry_after` for an error recorded in a run (its `details()`)."""
    until, seconds = error.get("until"), error.get("retry_after")
    if isinstance(seconds, int) and not isinstance(seconds, bool):
        return max(0, seconds)
    if isinstance(until, str):
        try:
            moment = datetime.fromisoformat(until)
        except ValueError:
            return None
        return _seconds_until(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    return None


def _retry_header(status: int, wait: int | None) -> dict[str, str]:
    # Retry-After means "try again then" only on a refusal for now (429) or a service unavailable (503).
    return {"Retry-After": str(wait)} if status in (429, 503) and wait is not None else {}


def retry_headers(error: errors.MailwrightError) -> dict[str, str]:
    """`Retry-After` (whole seconds) for an answer with this error, where the error knows the wait."""
    return _retry_header(status_for(error), retry_after(error))


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
        headers={**(headers or {}), **_retry_header(status, recorded_retry_after(error))} or None,
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
