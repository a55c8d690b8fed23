"""How a Send Email run's outcome becomes the answer the faces present (services/waiting.py)."""

from __future__ import annotations

from typing import Any

import pytest

from mailwright.services.runs import SendOutcome
from mailwright.services.waiting import SendAnswer, answer_for

SENT: dict[str, Any] = {
    "status": "sent",
    "message_id": "<m1@example.org>",
    "target": "Relay",
    "account_key": None,
    "sender": "robot@example.org",
    "recipients": [{"address": "bob@example.org", "status": "accepted", "code": 250, "reply": "OK"}],
    "server_reply": {"code": 250, "text": "queued"},
    "size": 321,
    "smtputf8": False,
    "timings": {"total": 12.0},
}


def outcome(status: str, **fields: Any) -> SendOutcome:
    values: dict[str, Any] = {"error": None, "output": None, "step_error": None, **fields}
    return SendOutcome(id="run-1", status=status, **values)


def test_a_succeeded_run_answers_with_its_result_and_run_id() -> None:
    answer = answer_for(outcome("succeeded", output=SENT), replayed=True)
    assert answer.result is not None and answer.error is None
    assert answer.result.run_id == "run-1"
    assert answer.result.message_id == "<m1@example.org>"
    assert answer.replayed is True


def test_the_steps_error_comes_before_the_runs() -> None:
    step_error = {"code": "target_rejected", "message": "550 no such user"}
    answer = answer_for(
        outcome("failed", step_error=step_error, error={"code": "failed", "message": "x"}), replayed=False
    )
    assert answer == SendAnswer("run-1", "failed", False, error=step_error)


@pytest.mark.parametrize("status", ["failed", "cancelled"])
def test_a_finished_run_without_any_error_still_says_how_it_ended(status: str) -> None:
    answer = answer_for(outcome(status), replayed=False)
    assert answer.error == {"code": "failed", "message": f"the run {status}"}
    assert answer.result is None


@pytest.mark.parametrize("status", ["queued", "running"])
def test_a_run_not_finished_answers_with_its_status_alone(status: str) -> None:
    answer = answer_for(outcome(status), replayed=False)
    assert (answer.status, answer.result, answer.error) == (status, None, None)
