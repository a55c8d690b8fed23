"""The one table from the error tree to HTTP status codes, and the Retry-After an error implies.

Pure (no web framework): the REST API answers with it (api/errors.py) and the web pages
show their errors with it (web/app.py), so a class means the same status in both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from mailwright import errors

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


def retry_header(status: int, wait: int | None) -> dict[str, str]:
    # Retry-After means "try again then" only on a refusal for now (429) or a service unavailable (503).
    return {"Retry-After": str(wait)} if status in (429, 503) and wait is not None else {}


def retry_headers(error: errors.MailwrightError) -> dict[str, str]:
    """`Retry-After` (whole seconds) for an answer with this error, where the error knows the wait."""
    return retry_header(status_for(error), retry_after(error))
