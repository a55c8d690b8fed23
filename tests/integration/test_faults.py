"""Faults that must neither double nor stall a send: drops, refusals, slow replies, lost leases.

Each test counts what reached the server by Message-ID and checks the promise:
nothing lost (every message arrived, or its step says its outcome is unknown),
and nothing sent twice unless its step is recorded as unknown.
"""

from __future__ import annotations

import asyncio
import email
import json
import logging
import time
from collections import Counter
from datetime import timedelta
from email import policy

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from mailwright.engine import retry as retry_module
from mailwright.engine.executor import Executor
from mailwright.ledger import lease as lease_module
from mailwright.services.app import Services
from mailwright.services.sending import SendEmailRequest
from mailwright.services.targets import TargetUpdate
from mailwright.storage.tables import RunRow, RunStepRow, utcnow
from tests.integration.conftest import Targets
from tests.support.smtpserver import Faults, Received, SMTPServerFactory, SMTPTestServer


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retry_module, "BACKOFF_BASE", 0.05)


def executor(mw: Services, name: str = "worker", *, lease: float = 5.0) -> Executor:
    return mw.executor(worker_id=name, lease=timedelta(seconds=lease), with_files=False)


def batch(mw: Services, target: str, count: int, *, concurrency: int = 4) -> str:
    lines = (
        (
            f"line {i + 1}",
            json.dumps(
                {"from": "b@example.org", "to": [f"r{i}@example.net"], "subject": f"#{i}", "body": "hi"}
            ),
        )
        for i in range(count)
    )
    return mw.batches.create(lines, target=target, concurrency=concurrency).run_id


def message_ids(received: list[Received]) -> Counter[str]:
    return Counter(
        str(email.message_from_bytes(m.content, policy=policy.default)["Message-ID"]) for m in received
    )


def steps(mw: Services, run_id: str) -> list[RunStepRow]:
    with mw.db.session() as session:
        return list(session.query(RunStepRow).filter(RunStepRow.run_id == run_id).all())


def assert_promise(mw: Services, run_id: str, server: SMTPTestServer) -> dict[str, int]:
    """0 lost and doubles only where the step says unknown; returns the counts for the output."""
    rows = steps(mw, run_id)
    arrived = message_ids([*server.messages, *server.dropped])
    unknown = {r.message_id for r in rows if r.status == "unknown"}
    for row in rows:
        assert row.status in ("succeeded", "failed", "unknown"), (row.status, row.notes)
        if row.status == "succeeded":
            assert row.message_id in arrived and row.send_state == "sent"
        if row.status == "unknown":
            assert row.send_state == "unknown"
            assert any("may or may not have been delivered" in n for n in row.notes)
        if row.status == "failed":
            assert row.send_state is None  # certainly not delivered: not left "sending"
    doubled = {mid for mid, n in arrived.items() if n > 1}
    assert doubled <= unknown, f"sent twice without being recorded unknown: {doubled - unknown}"
    counts = {
        "messages": len(rows),
        "arrived": len(arrived),
        "doubled": len(doubled),
        "unknown": len(unknown),
        "failed": sum(r.status == "failed" for r in rows),
    }
    print(f"\nfault counts: {counts}")
    return counts


# --- one message's fault stays that message's -----------------------------------------------


async def test_a_drop_after_the_message_was_written_is_unknown_and_the_batch_goes_on(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory(faults=Faults(disconnect_at="after_data", fail_times=2))
    target = targets.target(server, security="none")
    run_id = batch(mw, target.display_name, 30)
    assert await executor(mw).execute(run_id) == "failed"
    counts = assert_promise(mw, run_id, server)
    assert counts["unknown"] == 2 and counts["failed"] == 0 and counts["doubled"] == 0
    assert len(server.messages) == 28  # every other message was sent: the batch did not stop
    run = mw.runs.get(run_id)
    assert run.error is not None and run.error["code"] == "outcome_unknown"
    assert "2 of 30 may or may not have been delivered" in run.error["message"]
    assert run.step_counts == {"succeeded": 28, "unknown": 2}
    assert len(mw.batches.results(run_id, send_state="unknown")) == 2


async def test_a_drop_at_the_data_command_is_sent_again_and_never_unknown(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory(faults=Faults(disconnect_at="data", fail_times=3))
    target = targets.target(server, security="none")
    run_id = batch(mw, target.display_name, 20)
    assert await executor(mw).execute(run_id) == "succeeded"
    counts = assert_promise(mw, run_id, server)
    assert counts == {"messages": 20, "arrived": 20, "doubled": 0, "unknown": 0, "failed": 0}


async def test_a_4xx_at_rcpt_is_retried_and_a_persistent_one_fails_that_message_alone(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    refused = {"r3@example.net": (451, "4.3.0 try again later")}
    server = smtp_server_factory(faults=Faults(refuse_recipients=refused))
    target = targets.target(server, security="none")
    run_id = batch(mw, target.display_name, 12)
    assert await executor(mw).execute(run_id) == "failed"
    counts = assert_promise(mw, run_id, server)
    assert counts["failed"] == 1 and counts["unknown"] == 0 and len(server.messages) == 11
    (failed,) = mw.batches.results(run_id, status="failed")
    assert failed["error"]["stage"] == "rcpt" and "outcome" not in failed["error"]
    assert failed["attempts"] == 4 and failed["send_state"] is None
    assert "1 of 12 messages failed" in (mw.runs.get(run_id).error or {})["message"]


async def test_a_reply_after_the_data_timeout_is_unknown_and_never_resent(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    """RFC 5321 gives the end of data 10 minutes; a target may shorten it, and then must not resend."""
    server = smtp_server_factory(faults=Faults(delay={"data": 3.0}, fail_times=1))
    target = targets.target(server, security="none")
    assert target.data_timeout == 600  # the default, per RFC 5321 4.5.3.2.6
    target = mw.targets.update(target.display_name, TargetUpdate(data_timeout=1))
    run = mw.runs.start_send_email(
        SendEmailRequest.model_validate(
            {"target": target.display_name, "from": "a@example.org", "to": ["b@example.net"], "subject": "s"}
        )
    )
    assert await executor(mw).execute(run.id) == "failed"
    (step,) = mw.runs.get(run.id).steps
    assert (step.status, step.send_state, step.attempts) == ("unknown", "unknown", 1)
    assert step.error is not None and "did not answer within 1 s" in step.error["message"]
    deadline = time.monotonic() + 30
    while not server.dropped and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert len(server.dropped) == 1 and server.messages == []  # accepted late, sent once


# --- the lease ------------------------------------------------------------------------------


@pytest.fixture
def slow_server(smtp_server_factory: SMTPServerFactory) -> SMTPTestServer:
    return smtp_server_factory(faults=Faults(delay={"data": 0.15}))


async def test_a_renewal_that_fails_once_is_retried_and_the_run_goes_on(
    mw: Services,
    targets: Targets,
    slow_server: SMTPTestServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    real = lease_module.Lease.renew
    failures = [OperationalError("UPDATE runs", {}, Exception("server closed the connection"))]

    def flaky(self: lease_module.Lease) -> bool:
        if failures:
            raise failures.pop()
        return real(self)

    monkeypatch.setattr(lease_module.Lease, "renew", flaky)
    target = targets.target(slow_server, security="none")
    run_id = batch(mw, target.display_name, 60, concurrency=2)  # about 4.5 s: several renewals
    with caplog.at_level(logging.WARNING, logger="mailwright.ledger.lease"):
        assert await executor(mw, lease=3.0).execute(run_id) == "succeeded"
    assert failures == []  # the failure happened ...
    assert "renewing the lease failed" in caplog.text and "lease lost" not in caplog.text  # ... and passed
    assert assert_promise(mw, run_id, slow_server)["arrived"] == 60


async def test_a_worker_that_cannot_renew_stops_before_its_lease_expires(
    mw: Services, targets: Targets, slow_server: SMTPTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: lease_module.Lease) -> bool:
        raise OperationalError("UPDATE runs", {}, Exception("database is locked"))

    monkeypatch.setattr(lease_module.Lease, "renew", broken)
    target = targets.target(slow_server, security="none")
    run_id = batch(mw, target.display_name, 60, concurrency=2)
    marks: list[float] = []
    real_check = lease_module.Lease.check

    def noting(self: lease_module.Lease) -> None:
        real_check(self)
        marks.append(time.monotonic())  # the lease was checked and held: a message may go

    monkeypatch.setattr(lease_module.Lease, "check", noting)
    started = time.monotonic()
    assert await executor(mw, "stuck", lease=2.0).execute(run_id) == "running"
    assert marks and max(marks) < started + 2.0  # it stopped before the lease could expire
    assert len(slow_server.messages) < 60
    monkeypatch.undo()
    with mw.db.session() as session:  # the lease expires (the test does not wait the 2 s)
        session.execute(update(RunRow).where(RunRow.id == run_id).values(lease_expires_at=utcnow()))
    assert await executor(mw, "successor").execute(run_id) in ("succeeded", "failed")
    counts = assert_promise(mw, run_id, slow_server)
    assert counts["doubled"] == 0 and counts["arrived"] + counts["unknown"] >= 60


async def test_a_worker_that_lost_its_lease_writes_and_sends_nothing_more(
    mw: Services, targets: Targets, slow_server: SMTPTestServer
) -> None:
    """A paused worker wakes after another claimed its run: its writes are fenced out."""
    target = targets.target(slow_server, security="none")
    run_id = batch(mw, target.display_name, 60, concurrency=2)
    paused = executor(mw, "paused", lease=30.0)
    first = asyncio.create_task(paused.execute(run_id))
    deadline = time.monotonic() + 30
    while len(slow_server.messages) < 5 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    # Its lease runs out in the database while it believes it still holds it (as after SIGSTOP).
    with mw.db.session() as session:
        session.execute(update(RunRow).where(RunRow.id == run_id).values(lease_expires_at=utcnow()))
    successor = asyncio.create_task(executor(mw, "successor").execute(run_id))
    assert await first == "running"  # fenced out at its next write
    assert await successor in ("succeeded", "failed")
    counts = assert_promise(mw, run_id, slow_server)
    assert counts["doubled"] == 0 and counts["arrived"] + counts["unknown"] >= 60
    assert counts["unknown"] <= 2  # at most what the paused worker's senders held


async def test_a_step_found_sending_is_unknown_and_not_resent(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory()
    target = targets.target(server, security="none")
    run = mw.runs.start_send_email(
        SendEmailRequest.model_validate(
            {"target": target.display_name, "from": "a@example.org", "to": ["b@example.net"], "subject": "s"}
        )
    )
    with mw.db.session() as session:  # a worker died after its mark, before the reply was recorded
        session.execute(
            update(RunStepRow)
            .where(RunStepRow.run_id == run.id)
            .values(status="running", send_state="sending", attempts=1, message_id="<x@example.org>")
        )
    assert await executor(mw).execute(run.id) == "failed"
    (step,) = mw.runs.get(run.id, state="unknown").steps
    assert step.status == "unknown" and step.attempts == 1 and server.messages == []
    assert mw.runs.get(run.id).error == step.error


def test_the_api_counts_filters_and_resends_the_unknown_on_request(
    api: httpx.Client, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory(faults=Faults(disconnect_at="after_data", fail_times=1))
    target = targets.target(server, security="none")
    messages = [{"from": "b@example.org", "to": [f"r{i}@example.net"], "subject": f"#{i}"} for i in range(5)]
    body = {"target": target.display_name, "messages": messages, "wait": True}
    answer = api.post("/api/v1/send-email/batch", json=body)
    assert answer.status_code == 200, answer.text
    run_id = answer.json()["run_id"]
    run = api.get(f"/api/v1/runs/{run_id}").json()
    assert run["status"] == "failed" and run["error"]["code"] == "outcome_unknown"
    assert run["step_counts"] == {"succeeded": 4, "unknown": 1}
    assert {s["send_state"] for s in run["steps"]} == {"sent", "unknown"}
    (unknown,) = api.get(f"/api/v1/runs/{run_id}/steps", params={"send_state": "unknown"}).json()
    assert unknown["status"] == "unknown" and unknown["send_state"] == "unknown"
    assert api.get(f"/api/v1/runs/{run_id}/steps", params={"send_state": "bogus"}).status_code == 422
    assert api.post(f"/api/v1/runs/{run_id}/retry").json()["step_counts"]["unknown"] == 1  # left as is
    deadline = time.monotonic() + 60
    while api.get(f"/api/v1/runs/{run_id}").json()["status"] != "failed" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(server.messages) == 4 and len(server.dropped) == 1  # nothing resent
    api.post(f"/api/v1/runs/{run_id}/retry", params={"include_unknown": "true"})
    while api.get(f"/api/v1/runs/{run_id}").json()["status"] != "succeeded" and time.monotonic() < deadline:
        time.sleep(0.1)
    received = message_ids(server.wait_for(5))
    assert received[unknown["message_id"]] == 1  # sent again with its Message-ID ...
    assert message_ids(server.dropped)[unknown["message_id"]] == 1  # ... which the server had had
