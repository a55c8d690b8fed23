"""Workflows and durable runs against in-process SMTP servers: order, threading, retries, resumption."""

from __future__ import annotations

import asyncio
import email
from datetime import timedelta
from email import policy
from typing import Any

import pytest
import yaml

from mailwright.engine import retry as retry_module
from mailwright.engine.executor import Executor
from mailwright.errors import ConflictError
from mailwright.services.app import Services
from mailwright.storage.tables import RunRow, utcnow
from tests.integration.conftest import Targets
from tests.support.smtpserver import Faults, SMTPServerFactory

ALERT = {
    "name": "Alert and follow-up",
    "description": "an alert, then a follow-up threaded on it",
    "inputs": {
        "recipient": {"type": "string", "default": "ops@example.net"},
        "level": {"type": "integer", "default": 2},
    },
    "steps": [
        {
            "id": "alert",
            "activity": "send_email",
            "with": {
                "from": "robot@example.org",
                "to": ["{{ inputs.recipient }}"],
                "subject": "Alert level {{ inputs.level }}",
                "body": "disk full",
            },
        },
        {
            "id": "followup",
            "activity": "send_email",
            "with": {
                "from": "robot@example.org",
                "to": ["second@example.net"],
                "subject": "Re: Alert",
                "body": "escalated",
                "in_reply_to": "{{ steps.alert.output.message_id }}",
            },
        },
    ],
}


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retry_module, "BACKOFF_BASE", 0.05)


def executor(mw: Services, name: str = "test-worker") -> Executor:
    return mw.executor(worker_id=name, lease=timedelta(seconds=5), with_files=False)


def create(mw: Services, document: dict[str, Any]) -> str:
    return mw.workflows.create(yaml.safe_dump(document, sort_keys=False)).id


async def test_sample_workflow_threads_the_follow_up(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory()
    target = targets.target(server, security="none", display_name="Relay")
    workflow = create(mw, {**ALERT, "target": target.display_name})
    run = mw.runs.start_workflow(workflow, inputs={"recipient": "alice@example.net", "level": "5"})
    assert run.status == "queued" and [s.status for s in run.steps] == ["pending", "pending"]
    assert await executor(mw).execute(run.id) == "succeeded"
    alert, followup = server.wait_for(2)
    first = email.message_from_bytes(alert.content, policy=policy.default)
    second = email.message_from_bytes(followup.content, policy=policy.default)
    assert str(first["Subject"]) == "Alert level 5" and alert.rcpt_tos == ["alice@example.net"]
    assert second["In-Reply-To"] == first["Message-ID"]
    done = mw.runs.get(run.id)
    assert done.status == "succeeded" and done.inputs == {"recipient": "alice@example.net", "level": 5}
    assert [s.status for s in done.steps] == ["succeeded", "succeeded"]
    assert done.steps[0].message_id == first["Message-ID"] and done.steps[0].send_state == "sent"
    assert done.steps[0].output is not None and done.steps[0].output["recipients"][0]["status"] == "accepted"
    assert await executor(mw, "another").execute(run.id) is None  # finished runs are never taken again
    assert len(server.messages) == 2


async def test_transient_451_is_retried_and_sent_once(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory(faults=Faults(reply={"data": (451, "4.3.0 try again")}, fail_times=2))
    target = targets.target(server, security="none")
    run = mw.runs.start_send_email(mw_request(target.display_name, subject="retry me"))
    assert await executor(mw).execute(run.id) == "succeeded"
    (step,) = mw.runs.get(run.id).steps
    assert step.attempts == 3 and step.status == "succeeded"
    assert len(step.notes) == 2 and "451" in step.notes[0]
    (message,) = server.wait_for(1)
    assert email.message_from_bytes(message.content, policy=policy.default)["Message-ID"] == step.message_id


async def test_permanent_failure_fails_at_once(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory(faults=Faults(reply={"data": (554, "5.7.1 spam")}))
    target = targets.target(server, security="none")
    run = mw.runs.start_send_email(mw_request(target.display_name))
    assert await executor(mw).execute(run.id) == "failed"
    finished = mw.runs.get(run.id)
    assert finished.steps[0].attempts == 1
    assert finished.error is not None and "554 5.7.1 spam" in finished.error["message"]
    assert finished.steps[0].send_state is None  # refused: nothing was delivered


async def test_the_message_id_is_kept_from_a_failure_before_data_to_the_retry(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Message-ID is written with the "sending" mark before DATA or, when the attempt
    failed sooner (here MAIL FROM refused), with the failure: a retry sends the same one."""
    monkeypatch.setattr(retry_module, "INLINE_WAIT", 0.0)  # the retry releases the run
    server = smtp_server_factory(faults=Faults(reply={"mail": (451, "4.3.0 busy")}, fail_times=1))
    target = targets.target(server, security="none")
    run = mw.runs.start_send_email(mw_request(target.display_name))
    assert await executor(mw).execute(run.id) == "queued"
    (deferred,) = mw.runs.get(run.id).steps
    assert deferred.status == "deferred" and deferred.send_state is None and server.messages == []
    assert deferred.message_id is not None and deferred.message_id.endswith("@example.org>")
    await asyncio.sleep(0.3)  # the retry's backoff
    assert await executor(mw).execute(run.id) == "succeeded"
    (step,) = mw.runs.get(run.id).steps
    assert step.attempts == 2 and step.message_id == deferred.message_id
    (message,) = server.wait_for(1)
    assert email.message_from_bytes(message.content, policy=policy.default)["Message-ID"] == step.message_id


async def test_connection_dropped_after_the_message_was_written_is_unknown_and_not_resent(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    """The server had the whole message when the connection broke: it may have been accepted."""
    server = smtp_server_factory(faults=Faults(disconnect_at="after_data", fail_times=1))
    target = targets.target(server, security="none")
    run = mw.runs.start_send_email(mw_request(target.display_name))
    assert await executor(mw).execute(run.id) == "failed"
    finished = mw.runs.get(run.id)
    (step,) = finished.steps
    assert (step.status, step.send_state, step.attempts) == ("unknown", "unknown", 1)
    assert step.error is not None and step.error["outcome"] == "unknown"
    assert any("may or may not have been delivered" in note for note in step.notes)
    assert finished.error is not None and finished.error["outcome"] == "unknown"
    (lost,) = server.dropped
    assert server.messages == []  # not resent on its own
    # Only an explicit retry sends it again, with the same Message-ID.
    assert mw.runs.retry(run.id).steps[0].status == "unknown"  # a plain retry leaves it
    assert await executor(mw).execute(run.id) == "failed" and server.messages == []
    mw.runs.retry(run.id, include_unknown=True)
    assert await executor(mw).execute(run.id) == "succeeded"
    (step,) = mw.runs.get(run.id).steps
    assert (step.status, step.send_state) == ("succeeded", "sent")
    (delivered,) = server.wait_for(1)
    for raw in (delivered.content, lost.content):
        assert email.message_from_bytes(raw, policy=policy.default)["Message-ID"] == step.message_id
    assert mw.runs.get(run.id, state="unknown").steps == []


async def test_server_down_for_a_while_then_back(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = smtp_server_factory()
    target = targets.target(server, security="none")
    server.stop()
    monkeypatch.setattr(retry_module, "BACKOFF_BASE", 0.4)
    monkeypatch.setattr(retry_module, "INLINE_WAIT", 0.0)  # every retry releases the run
    run = mw.runs.start_send_email(mw_request(target.display_name))
    worker = executor(mw)
    status = await worker.execute(run.id)
    assert status == "queued"  # released until the retry is due: no worker sits on it
    queued = mw.runs.get(run.id)
    assert queued.not_before is not None and queued.steps[0].status == "deferred"
    server.start()
    for _ in range(100):
        if status == "succeeded":
            break
        await asyncio.sleep(0.2)
        status = await worker.execute(run.id) or status
    assert len(server.wait_for(1)) == 1


async def test_resume_after_a_dead_worker_skips_succeeded_steps(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory()
    target = targets.target(server, security="none")
    workflow = create(mw, {**ALERT, "target": target.display_name})
    run = mw.runs.start_workflow(workflow)
    first = executor(mw, "doomed")
    assert first.claim(run.id)
    # The worker dies holding the lease after the first step: simulate by running it, then faking the lease.
    assert await executor(mw, "helper").execute(run.id) is None  # the live lease keeps others out
    with mw.db.session() as session:
        row = session.get(RunRow, run.id)
        assert row is not None
        row.lease_expires_at = utcnow() - timedelta(seconds=1)
    assert run.id in mw.runs.due()
    assert await executor(mw, "successor").execute(run.id) == "succeeded"
    assert len(server.wait_for(2)) == 2


async def test_conditions_for_each_skip_and_continue_on_failure(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory(faults=Faults(refuse_recipients={"bad@example.net": (550, "no such user")}))
    target = targets.target(server, security="none")
    workflow = create(
        mw,
        {
            "name": "Fan out",
            "target": target.display_name,
            "inputs": {"people": {"type": "list", "default": ["a@example.net", "b@example.net"]}},
            "steps": [
                {"id": "vars", "activity": "set_variables", "with": {"greeting": "Hello"}},
                {
                    "id": "each",
                    "activity": "send_email",
                    "for_each": "{{ inputs.people }}",
                    "with": {
                        "from": "r@example.org",
                        "to": ["{{ item }}"],
                        "subject": "{{ steps.vars.output.greeting }}",
                    },
                },
                {
                    "id": "never",
                    "activity": "send_email",
                    "if": "{{ inputs.people | length > 5 }}",
                    "with": {"from": "r@example.org", "to": ["x@example.net"]},
                },
                {
                    "id": "skipped",
                    "activity": "send_email",
                    "skip_execution": True,
                    "with": {"from": "r@example.org", "to": ["x@example.net"]},
                },
                {
                    "id": "fails",
                    "activity": "send_email",
                    "continue_on_failure": True,
                    "with": {"from": "r@example.org", "to": ["bad@example.net"]},
                },
                {"id": "last", "activity": "set_variables", "with": {"done": "{{ steps.fails.status }}"}},
            ],
        },
    )
    run = mw.runs.start_workflow(workflow)
    assert await executor(mw).execute(run.id) == "succeeded"
    steps = {s.step: s for s in mw.runs.get(run.id).steps}
    assert steps["each"].status == "succeeded" and steps["each[0]"].status == "succeeded"
    assert steps["each[1]"].status == "succeeded"
    assert steps["never"].status == "skipped" and steps["skipped"].status == "skipped"
    assert steps["fails"].status == "failed" and steps["last"].output == {"done": "failed"}
    assert sorted(m.rcpt_tos[0] for m in server.wait_for(2)) == ["a@example.net", "b@example.net"]


async def test_cancel_and_retry(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory(faults=Faults(reply={"data": (554, "no")}, fail_times=1))
    target = targets.target(server, security="none")
    queued = mw.runs.start_send_email(mw_request(target.display_name))
    assert mw.runs.cancel(queued.id).status == "cancelled"
    assert await executor(mw).execute(queued.id) is None
    run = mw.runs.start_send_email(mw_request(target.display_name))
    assert await executor(mw).execute(run.id) == "failed"
    assert mw.runs.retry(run.id).status == "queued"
    assert await executor(mw).execute(run.id) == "succeeded"
    assert len(server.wait_for(1)) == 1
    with pytest.raises(ConflictError, match="only failed or cancelled"):
        mw.runs.retry(run.id)


def mw_request(target: str, **fields: Any) -> Any:
    from mailwright.services.sending import SendEmailRequest

    return SendEmailRequest.model_validate(
        {
            "target": target,
            "from": "robot@example.org",
            "to": ["bob@example.net"],
            "subject": "s",
            "body": "b",
            **fields,
        }
    )
