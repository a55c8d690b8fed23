"""The one error -> HTTP table: each class of the tree answers with its status, a wait as Retry-After."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi import FastAPI

from mailwright import errors
from mailwright.api import errors as api_errors


def _reply(cls: type[errors.TargetRejectedError | errors.TargetDeferredError]) -> errors.MailwrightError:
    return cls("refused", code=451 if cls is errors.TargetDeferredError else 550, reply="4.7.1 later")


# (error, status, Retry-After): one row per class of the tree.
CASES: list[tuple[errors.MailwrightError, int, str | None]] = [
    (errors.MailwrightError("odd"), 500, None),
    (errors.ConfigError("no home"), 500, None),
    (errors.ValidationError("bad", field="to"), 422, None),
    (errors.StepValueError("for_each must give a list"), 422, None),
    (errors.IdempotencyKeyReusedError("k1", header="Idempotency-Key", kept_hours=24), 422, None),
    (
        errors.BatchRefusedError(
            problems=[errors.BatchProblem(where="line 2", message="no recipient")], bad=1, total=3, source="x"
        ),
        422,
        None,
    ),
    (errors.SandboxMessageTooLargeError(size=10, limit=5), 422, None),
    (errors.NotFoundError("no such target"), 404, None),
    (errors.ConflictError("exists"), 409, None),
    (errors.AuthorizationError("no token"), 401, None),
    (errors.WrongLoginError("wrong", slow_down=0.0), 401, None),
    (errors.LoginThrottledError("too many", retry_after=16), 429, "16"),
    (errors.PermissionDeniedError("no", role="viewer", required_role="admin"), 403, None),
    (errors.SecretError("cannot decrypt"), 500, None),
    (errors.TargetError("failed", target="t"), 502, None),
    (errors.TargetConnectError("refused", target="t"), 502, None),
    (errors.TargetTimeoutError("slow", target="t"), 504, None),
    (errors.TargetTLSError("handshake", target="t"), 502, None),
    (errors.CertificateUntrustedError("untrusted", verify_message="self-signed"), 502, None),
    (errors.TargetAuthError("refused", target="t"), 502, None),
    (_reply(errors.TargetRejectedError), 502, None),
    (_reply(errors.TargetDeferredError), 503, None),
    (errors.TargetDeferredError("later", code=421, reply="4.3.2 busy", retry_after=30), 503, "30"),
    (errors.MessageTooLargeError("too big", size=10, limit=5), 502, None),
    (errors.RecipientsRefusedError("refused", recipients=[], transient=False), 502, None),
    (errors.RateLimitedError("at limit", until=datetime(2000, 1, 1, tzinfo=UTC)), 429, "1"),
    (errors.LeaseLostError("lost"), 500, None),
]


async def _answer(error: errors.MailwrightError) -> httpx.Response:
    app = FastAPI()
    api_errors.install(app)

    @app.get("/fail")
    async def fail() -> None:
        raise error

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.get("/fail")


@pytest.mark.parametrize(
    ("error", "status", "retry_after"), CASES, ids=[f"{type(e).__name__}-{s}" for e, s, _ in CASES]
)
async def test_each_error_answers_with_its_status_and_wait(
    error: errors.MailwrightError, status: int, retry_after: str | None
) -> None:
    answer = await _answer(error)
    assert answer.status_code == status, answer.text
    assert answer.headers.get("Retry-After") == retry_after
    assert answer.json() == {"error": error.details()}
    assert ("WWW-Authenticate" in answer.headers) == (status == 401)


def test_every_class_of_the_tree_has_a_row() -> None:
    """A new error class needs a decision about its status: add it to CASES."""
    tree = {
        value
        for value in vars(errors).values()
        if isinstance(value, type)
        and issubclass(value, errors.MailwrightError)
        and value.__module__ == errors.__name__
        and not value.__name__.startswith("_")
    }
    assert tree == {type(error) for error, _, _ in CASES}


async def test_a_rate_limit_answers_429_with_the_seconds_until_its_slot() -> None:
    until = datetime.now(UTC) + timedelta(seconds=90)
    answer = await _answer(errors.RateLimitedError("at its limit", until=until, target="t"))
    assert answer.status_code == 429
    assert answer.headers["Retry-After"] in {"89", "90"}  # whole seconds, rounded up
    assert answer.json()["error"]["until"] == until.isoformat()


def test_codes_of_the_tree_name_one_status_each() -> None:
    """Recorded errors keep only their code: two classes sharing one would need one status."""
    statuses: dict[str, set[int]] = {}
    for error, status, _ in CASES:
        statuses.setdefault(error.code, set()).add(status)
    assert {code: found for code, found in statuses.items() if len(found) > 1} == {}


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("deferred", 503),
        ("rate_limited", 429),
        ("recipients_refused", 502),
        ("rejected", 502),
        ("auth_error", 502),
        ("timeout", 504),
        ("step_error", 422),
        ("validation_error", 422),
        ("not_found", 404),
        ("internal_error", 500),
        ("outcome_unknown", 502),
        ("error", 502),
        ("failed", 502),
    ],
)
def test_a_recorded_error_answers_by_its_code(code: str, status: int) -> None:
    assert api_errors.status_for_code(code) == status


def test_a_run_that_failed_deferred_answers_503_with_the_known_wait() -> None:
    recorded = errors.TargetDeferredError("later", code=421, reply="busy", retry_after=30).details()
    answer = api_errors.run_failure(recorded, run_id="r1", headers={"Idempotent-Replayed": "true"})
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "30"
    assert answer.headers["Idempotent-Replayed"] == "true"
    assert b'"run_id":"r1"' in answer.body


def test_a_run_that_failed_deferred_without_a_known_wait_has_no_retry_after() -> None:
    recorded = errors.TargetDeferredError("later", code=450, reply="busy").details()
    answer = api_errors.run_failure(recorded, run_id="r1")
    assert answer.status_code == 503
    assert "Retry-After" not in answer.headers


def test_a_recorded_rate_limit_answers_429_with_seconds_until_its_slot() -> None:
    until = datetime.now(UTC) + timedelta(seconds=60)
    recorded = errors.RateLimitedError("at its limit", until=until).details()
    answer = api_errors.run_failure(recorded, run_id="r2")
    assert answer.status_code == 429
    assert answer.headers["Retry-After"] in {"59", "60"}


def test_a_refused_send_keeps_502_and_no_wait() -> None:
    recorded = errors.RecipientsRefusedError("refused", recipients=[], transient=True).details()
    answer = api_errors.run_failure(recorded, run_id="r3")
    assert answer.status_code == 502
    assert "Retry-After" not in answer.headers
