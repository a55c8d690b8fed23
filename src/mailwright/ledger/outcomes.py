"""How the ledger words what it records: a step's error, and the notes of an unknown outcome.

Shared by the executor and the batch runner (both record through the ledger), so that a
single send and a batch message that end the same way read the same.
"""

from __future__ import annotations

from typing import Any

from mailwright.domain.runs import StepStatus
from mailwright.errors import LeaseLostError, MailwrightError, TargetError

RATE_LIMIT_NOTE = "rate limit: "
CRASH_WHY = "the worker stopped after DATA began, before the server's reply was recorded"


def error_record(exc: BaseException) -> dict[str, Any]:
    """What a step records of the exception that failed it."""
    if isinstance(exc, MailwrightError):
        return exc.details()
    if isinstance(exc, TimeoutError):
        return {"code": "timeout", "message": "the step did not finish within its timeout"}
    return {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}


def may_have_arrived(exc: BaseException) -> bool:
    """Whether a send that failed with `exc` after its "sending" mark may still have been delivered.

    The transport answers for itself: a TargetError says whether the message's body
    was written without a reply (`outcome_unknown`); anything else (a step timeout
    cancelling the wait, a bug) cannot tell, so it may have.
    """
    if isinstance(exc, LeaseLostError):
        return False  # raised before DATA: the message was not handed over
    if isinstance(exc, TargetError):
        return exc.outcome_unknown
    return True


def unknown_note(run_id: str, attempt: int, message_id: str | None, why: str) -> str:
    return (
        f"attempt {attempt}: {why}; the message (Message-ID {message_id}) may or may not have been "
        "delivered, so it is not sent again on its own: check with a recipient, then send it again, "
        f"if needed, with `mailwright runs retry {run_id} --include-unknown` (same Message-ID)"
    )


def unknown_error(run_id: str, why: str) -> dict[str, Any]:
    return {
        "code": "outcome_unknown",
        "outcome": StepStatus.UNKNOWN.value,
        "message": f"the outcome is unknown: {why}; the message may or may not have been delivered",
        "hint": f"check with a recipient; `mailwright runs retry {run_id} --include-unknown` sends it again",
    }


def rate_limit_notes(notes: list[str], message: str) -> list[str]:
    """The step's notes with one rate-limit note, the latest: a long queue would pile them up."""
    return [*(n for n in notes if not n.startswith(RATE_LIMIT_NOTE)), f"{RATE_LIMIT_NOTE}{message}"]
