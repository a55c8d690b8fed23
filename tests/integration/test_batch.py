"""Batch sending (service, CLI, API) and per-target rate limits against in-process SMTP servers."""

from __future__ import annotations

import asyncio
import email
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import policy
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, func, select

from mailwright.engine import batch as batch_module
from mailwright.engine import retry as retry_module
from mailwright.engine.executor import Executor
from mailwright.errors import RateLimitedError
from mailwright.services.app import Services
from mailwright.services.ratelimit import DatabaseDayCounter, RateLimiter
from mailwright.services.sending import SendEmailRequest, SendResult
from mailwright.services.targets import TargetUpdate
from mailwright.storage.tables import RunRow, RunStepRow, StepInputRow, utcnow
from tests.integration.conftest import Targets
from tests.support.cli import CLI, MAILWRIGHT, assert_ok
from tests.support.clock import FakeClock
from tests.support.smtpserver import Faults, Received, SMTPServerFactory


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retry_module, "BACKOFF_BASE", 0.05)


def message(i: int, **fields: Any) -> dict[str, Any]:
    return {
        "from": "batch@example.org",
        "to": [f"r{i}@example.net"],
        "subject": f"#{i}",
        "body": "hi",
        **fields,
    }


def jsonl(path: Path, messages: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(m) + "\n" for m in messages), encoding="utf-8")
    return path


def message_ids(received: list[Received]) -> Counter[str]:
    return Counter(
        str(email.message_from_bytes(m.content, policy=policy.default)["Message-ID"]) for m in received
    )


def executor(mw: Services, name: str = "test-worker") -> Executor:
    return mw.executor(worker_id=name, lease=timedelta(seconds=5), with_files=False)


def lines(messages: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    return ((f"line {n}", json.dumps(m)) for n, m in enumerate(messages, start=1))


def make_due(mw: Services, run_id: str) -> None:
    with mw.db.session() as session:
        run = session.get(RunRow, run_id)
        assert run is not None
        run.not_before = utcnow() - timedelta(seconds=1)


# --- the service and the batch engine ----------------------------------------------------------


async def test_every_message_arrives_once_with_its_own_result(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory()
    target = targets.target(server, security="none")
    count = 120
    created = mw.batches.create(lines([message(i) for i in range(count)]), target=target.display_name)
    assert created.total == count and mw.batches.run_status(created.run_id) == "queued"
    assert await executor(mw).execute(created.run_id) == "succeeded"
    received = server.wait_for(count)
    assert sorted(m.rcpt_tos[0] for m in received) == sorted(f"r{i}@example.net" for i in range(count))
    ids = message_ids(received)
    assert len(ids) == count and max(ids.values()) == 1
    results = mw.batches.results(created.run_id, limit=1000)
    assert [r["index"] for r in results] == list(range(count))
    assert all(r["status"] == "sent" and r["recipients"][0]["status"] == "accepted" for r in results)
    assert {r["message_id"] for r in results} == set(ids)
    run = mw.runs.get(created.run_id)
    assert run.status == "succeeded" and run.steps_total == count and run.step_counts == {"succeeded": count}
    assert len(run.steps) == 100  # a batch shows its first page; the rest are paged


async def test_rows_written_in_bulk_read_back_like_the_orms_own(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    """Steps are written on the raw cursor: types, JSON and times must be what the ORM would write."""
    server = smtp_server_factory()
    target = targets.target(server, security="none")
    sent = [message(i, subject=f"Grüße #{i}", cc=["copy@example.net"]) for i in range(30)]
    created = mw.batches.create(lines(sent), target=target.display_name)
    with mw.db.session() as session:
        stored = session.scalars(select(RunStepRow).order_by(RunStepRow.item_index)).all()
        # The message's fields are kept apart from the step row that is updated as it is sent:
        # the JSONL line itself, stored as its JSON.
        assert all(s.inputs is None for s in stored)
        fields = {row.step_id: row.inputs for row in session.scalars(select(StepInputRow))}
        assert [fields[s.id] for s in stored] == sent
        assert all(s.message_id and s.message_id.endswith("@example.org>") for s in stored)
        assert all(s.status == "pending" and s.attempts == 0 and s.notes == [] for s in stored)
        fixed_ids = {s.item_index: s.message_id for s in stored}
    before = utcnow()
    assert await executor(mw).execute(created.run_id) == "succeeded"
    received = server.wait_for(30)
    # The Message-ID is fixed when the batch is stored: every attempt would send the same one.
    assert set(message_ids(received)) == set(fixed_ids.values())
    with mw.db.session() as session:
        rows = session.scalars(select(RunStepRow).order_by(RunStepRow.item_index)).all()
    for row in rows:
        assert (row.status, row.send_state, row.attempts, row.error) == ("succeeded", "sent", 1, None)
        assert row.message_id == fixed_ids[row.item_index]
        assert row.started_at is not None and row.finished_at is not None
        assert before <= row.started_at <= row.finished_at <= utcnow()
        assert row.output is not None
        # What a batch records is exactly a SendResult's JSON.
        assert SendResult.model_validate(row.output).model_dump(mode="json") == row.output
        assert row.output["message_id"] == row.message_id
        assert [r["status"] for r in row.output["recipients"]] == ["accepted", "accepted"]


async def test_steps_stored_without_a_message_id_by_an_older_version_are_marked_one_by_one(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory()
    target = targets.target(server, security="none")
    sent = [message(i) for i in range(12)]
    created = mw.batches.create(lines(sent), target=target.display_name)
    legacy = [0, 5, 6, 11]
    with mw.db.session() as session:  # as an older version stored them: no Message-ID yet...
        for index in legacy:
            step = session.scalars(select(RunStepRow).where(RunStepRow.item_index == index)).one()
            step.message_id = None
            step.inputs = sent[index]  # ... and the fields in the step row itself
            session.execute(delete(StepInputRow).where(StepInputRow.step_id == step.id))
    assert mw.runs.get(created.run_id).steps[5].inputs == sent[5]
    assert await executor(mw).execute(created.run_id) == "succeeded"
    received = server.wait_for(12)
    ids = message_ids(received)
    assert len(ids) == 12 and max(ids.values()) == 1
    assert sorted(m.rcpt_tos[0] for m in received) == sorted(f"r{i}@example.net" for i in range(12))
    results = mw.batches.results(created.run_id)
    assert all(r["attempts"] == 1 and r["notes"] == [] and r["message_id"] in ids for r in results)
    shown = mw.runs.get(created.run_id).steps
    assert [s.inputs for s in shown] == sent  # wherever the fields are kept


async def test_a_stopped_batch_leaves_the_messages_no_sender_took_as_they_were(
    mw: Services,
    targets: Targets,
    smtp_server_factory: SMTPServerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A message is marked `sending` only just before its DATA: those never sent stay untouched."""
    monkeypatch.setattr(batch_module, "PAGE", 5)  # the stop is seen between pages
    server = smtp_server_factory(faults=Faults(delay={"data": 0.05}))
    target = targets.target(server, security="none")
    count = 40
    created = mw.batches.create(
        lines([message(i) for i in range(count)]), target=target.display_name, concurrency=4
    )
    worker = executor(mw)
    running = asyncio.create_task(worker.execute(created.run_id))
    deadline = time.monotonic() + 20
    while len(server.messages) < 6 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    worker.stopping.set()  # the worker shuts down: the batch stops taking messages
    assert await running == "queued"
    results = mw.batches.results(created.run_id, limit=100)
    done = [r for r in results if r["status"] == "sent"]
    left = [r for r in results if r["status"] != "sent"]
    assert len(done) == len(server.messages) and 6 <= len(done) < count
    assert {r["status"] for r in left} == {"pending"}
    assert all(r["attempts"] == 0 and r["notes"] == [] for r in left)
    with mw.db.session() as session:
        states = session.scalars(select(RunStepRow.send_state).where(RunStepRow.status == "pending")).all()
    assert set(states) == {None}  # certainly not sent: no "outcome unknown" when it resumes
    assert await executor(mw, "next").execute(created.run_id) == "succeeded"
    ids = message_ids(server.wait_for(count))
    assert len(ids) == count and max(ids.values()) == 1
    results = mw.batches.results(created.run_id, limit=100)
    assert all(r["attempts"] == 1 and r["notes"] == [] for r in results)


async def test_a_refused_message_fails_alone(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory(faults=Faults(refuse_recipients={"r3@example.net": (550, "no such user")}))
    target = targets.target(server, security="none")
    created = mw.batches.create(lines([message(i) for i in range(6)]), target=target.display_name)
    assert await executor(mw).execute(created.run_id) == "failed"
    results = mw.batches.results(created.run_id)
    assert [r["status"] for r in results] == ["sent", "sent", "sent", "failed", "sent", "sent"]
    assert "550" in json.dumps(results[3]["error"])
    run = mw.runs.get(created.run_id)
    assert run.error is not None and "1 of 6 messages failed" in run.error["message"]
    assert len(server.wait_for(5)) == 5


def test_bad_messages_refuse_the_whole_batch_with_where_and_why(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    from mailwright.errors import BatchRefusedError

    server = smtp_server_factory()
    target = targets.target(server, security="none")
    raw = [json.dumps(message(0)), "{not json", json.dumps(message(2, to=["not an address"])), ""]
    raw += [json.dumps(message(4, colour="blue")), "[1, 2]"]
    with pytest.raises(BatchRefusedError) as refused:
        mw.batches.create(((f"line {n}", r) for n, r in enumerate(raw, 1)), target=target.display_name)
    problems = {p.where: p.message for p in refused.value.problems}
    assert set(problems) == {"line 2", "line 3", "line 5", "line 6"}
    assert "not valid JSON" in problems["line 2"] and "to" in problems["line 3"]
    assert "colour" in problems["line 5"] and "JSON object" in problems["line 6"]
    assert refused.value.bad == 4 and refused.value.total == 5
    assert mw.runs.list_runs() == []  # nothing stored, nothing queued


@pytest.fixture
def written(mw: Services, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of each chunk a batch wrote, in order."""
    sizes: list[int] = []
    insert = mw.batches._insert

    def spy(chunk: list[Any], inputs: list[Any]) -> None:
        insert(chunk, inputs)
        sizes.append(len(chunk))

    monkeypatch.setattr(mw.batches, "_insert", spy)
    return sizes


def test_a_bad_line_after_chunks_were_written_leaves_nothing_behind(
    mw: Services,
    targets: Targets,
    smtp_server_factory: SMTPServerFactory,
    monkeypatch: pytest.MonkeyPatch,
    written: list[int],
) -> None:
    """Chunks are written by a thread behind the check; a late bad line still refuses all."""
    from mailwright.errors import BatchRefusedError
    from mailwright.services import batches

    monkeypatch.setattr(batches, "CHUNK", 3)
    target = targets.target(smtp_server_factory(), security="none")
    raw = [json.dumps(message(i)) for i in range(10)] + ["{not json"]
    with pytest.raises(BatchRefusedError) as refused:
        mw.batches.create(((f"line {n}", r) for n, r in enumerate(raw, 1)), target=target.display_name)
    assert refused.value.bad == 1 and refused.value.total == 11
    assert written == [3, 3, 3]  # three chunks reached the database before the bad line
    with mw.db.session() as session:
        for table in (RunRow, RunStepRow, StepInputRow):
            assert session.scalar(select(func.count()).select_from(table)) == 0


def test_long_lines_make_smaller_chunks(
    mw: Services,
    targets: Targets,
    smtp_server_factory: SMTPServerFactory,
    monkeypatch: pytest.MonkeyPatch,
    written: list[int],
) -> None:
    """Lines that carry attachments must not pile up 4,000 to a chunk in memory."""
    from mailwright.services import batches

    monkeypatch.setattr(batches, "CHUNK_BYTES", 5_000)
    target = targets.target(smtp_server_factory(), security="none")
    raw = [json.dumps(message(i, body="x" * 2_000)) for i in range(7)]
    created = mw.batches.create(((f"line {n}", r) for n, r in enumerate(raw, 1)), target=target.display_name)
    assert created.total == 7 and written == [3, 3, 1]
    assert len(mw.runs.get(created.run_id).steps) == 7


# --- rate limits ----------------------------------------------------------------------------


async def test_throttled_single_send_is_deferred_then_delivered(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory()
    target = targets.target(server, security="none", rate_per_minute=1)
    clock = FakeClock(datetime.now(UTC))
    mw.targets.rate_limits = RateLimiter(DatabaseDayCounter(mw.db), clock=clock)
    request = SendEmailRequest.model_validate({**message(0), "target": target.display_name})
    first = mw.runs.start_send_email(request)
    second = mw.runs.start_send_email(request)
    assert await executor(mw).execute(first.id) == "succeeded"
    assert await executor(mw).execute(second.id) == "queued"  # throttled: deferred, not failed
    held = mw.runs.get(second.id)
    assert held.status == "queued" and held.not_before is not None
    assert held.not_before > utcnow() + timedelta(seconds=50)
    (step,) = held.steps
    assert step.status == "deferred" and step.attempts == 0
    assert any(
        "rate limit" in n and "1 message per minute" in n and "deferred until" in n for n in step.notes
    )
    clock.advance(60)
    make_due(mw, second.id)
    assert await executor(mw).execute(second.id) == "succeeded"
    assert len(server.wait_for(2)) == 2


async def test_a_direct_send_waits_for_a_near_slot_and_refuses_a_far_one(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory, cli: CLI
) -> None:
    """`mailwright send` has no run to defer: it obeys the limits by waiting, or sends nothing."""
    server = smtp_server_factory()
    target = targets.target(server, security="none", rate_per_second=2, rate_per_day=3)
    request = SendEmailRequest.model_validate({**message(0), "target": target.display_name})
    started = time.monotonic()
    for _ in range(3):
        assert (await mw.sending.send(request)).status == "sent"
    assert time.monotonic() - started >= 0.4  # the third waited for the per-second window
    with pytest.raises(RateLimitedError) as refused:
        await mw.sending.send(request)
    assert "3 messages per day" in refused.value.message and "nothing was sent" in refused.value.message
    assert "deferred" not in refused.value.message
    assert len(server.wait_for(3)) == 3
    # The count is the database's: another process (the CLI) is refused too, with the reason.
    result = cli(
        "send",
        "--target",
        target.display_name,
        "--from",
        "batch@example.org",
        "--to",
        "x@example.net",
        "--subject",
        "one more",
    )
    # `mailwright send` stores a run like every send: deferred to tomorrow, and it says so (exit 75).
    assert result.returncode == 75 and "3 messages per day" in result.stderr
    assert "not sent yet" in result.stderr and "tried again at" in result.stderr
    assert len(server.messages) == 3


async def test_batch_waits_for_a_per_second_limit(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory()
    target = targets.target(server, security="none", rate_per_second=4)
    created = mw.batches.create(lines([message(i) for i in range(10)]), target=target.display_name)
    started = time.monotonic()
    assert await executor(mw).execute(created.run_id) == "succeeded"
    assert time.monotonic() - started >= 1.9  # 4 now, 4 a second later, 2 a second after that
    assert len(server.wait_for(10)) == 10


async def test_per_day_limit_defers_the_rest_until_tomorrow_then_sends_it(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory()
    target = targets.target(server, security="none", rate_per_day=3)
    clock = FakeClock(datetime(2026, 11, 24, 22, 0, tzinfo=UTC))
    mw.targets.rate_limits = RateLimiter(DatabaseDayCounter(mw.db), clock=clock)
    created = mw.batches.create(
        lines([message(i) for i in range(7)]), target=target.display_name, concurrency=1
    )
    assert await executor(mw).execute(created.run_id) == "queued"
    assert len(server.wait_for(3)) == 3
    run = mw.runs.get(created.run_id)
    assert run.status == "queued" and run.not_before is not None
    assert run.not_before.date() == datetime.now(UTC).date() or run.not_before > utcnow()
    assert run.step_counts == {"succeeded": 3, "deferred": 1, "pending": 3}  # none failed
    held = mw.batches.results(created.run_id, status="deferred")[0]
    assert any("3 messages per day" in n and "2026-11-25 00:00" in n for n in held["notes"])
    # A restart keeps today's count: a new limiter (a new process) reads it from the database.
    mw.targets.rate_limits = RateLimiter(DatabaseDayCounter(mw.db), clock=clock)
    make_due(mw, created.run_id)
    assert await executor(mw).execute(created.run_id) == "queued"
    assert len(server.messages) == 3
    clock.advance(2 * 3600)  # the next UTC day
    make_due(mw, created.run_id)
    assert await executor(mw).execute(created.run_id) == "queued"
    make_due(mw, created.run_id)
    clock.advance(24 * 3600)
    assert await executor(mw).execute(created.run_id) == "succeeded"
    received = server.wait_for(7)
    assert len(message_ids(received)) == 7 and len(received) == 7


def test_gmail_preset_carries_googles_daily_limit(mw: Services, targets: Targets) -> None:
    key = targets.key()
    from mailwright.services.targets import TargetCreate

    gmail = mw.targets.create(TargetCreate(display_name="Gmail", preset="gmail", account_key=key))
    assert gmail.rate_per_day == 500 and gmail.server == "smtp.gmail.com"

    assert mw.targets.update("Gmail", TargetUpdate(rate_per_day=2000)).rate_per_day == 2000
    assert mw.targets.update("Gmail", TargetUpdate(rate_per_day=0)).rate_per_day is None


# --- the CLI ----------------------------------------------------------------------------------


def test_cli_send_batch_progress_summary_and_json_from_stdin(
    cli: CLI, targets: Targets, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    server = smtp_server_factory()
    target = targets.target(server, security="none", display_name="Relay")
    file = jsonl(tmp_path / "messages.jsonl", [message(i) for i in range(40)])
    result = assert_ok(cli("send-batch", "--target", target.display_name, "--file", file))
    assert "queued 40 messages as run" in result.stderr
    assert "progress: 40/40" in result.stderr and "msg/s" in result.stderr
    for word in ("sent", "failed", "duration", "msg/s", "40"):
        assert word in result.stdout
    piped = "\n".join(json.dumps(message(i)) for i in range(40, 50))
    as_json = assert_ok(cli("send-batch", "--target", "relay", "--file", "-", "--json", input=piped)).json()
    assert as_json["sent"] == 10 and as_json["failed"] == 0 and as_json["status"] == "succeeded"
    assert as_json["messages_per_second"] > 0
    assert len(message_ids(server.wait_for(50))) == 50
    shown = assert_ok(cli("runs", "show", as_json["run_id"], "--json")).json()
    assert shown["steps_total"] == 10 and shown["step_counts"] == {"succeeded": 10}


def test_cli_takes_a_windows_file_with_a_byte_order_mark_and_crlf(
    cli: CLI, targets: Targets, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    server = smtp_server_factory()
    targets.target(server, security="none", display_name="Relay")
    file = tmp_path / "notepad.jsonl"
    file.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(message(i)) + "\r\n" for i in range(3)).encode())
    summary = assert_ok(cli("send-batch", "--target", "Relay", "--file", file, "--json")).json()
    assert summary["sent"] == 3
    received = server.wait_for(3)
    assert sorted(str(email.message_from_bytes(m.content)["Subject"]) for m in received) == ["#0", "#1", "#2"]


def test_cli_refuses_bad_lines_with_numbers_and_sends_nothing(
    cli: CLI, targets: Targets, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    server = smtp_server_factory()
    targets.target(server, security="none", display_name="Relay")
    file = tmp_path / "bad.jsonl"
    file.write_text(
        json.dumps(message(0))
        + "\n"
        + '{"to": ["x@example.net"], "subject": "oops"'
        + "\n"
        + json.dumps(message(2, to="nobody"))
        + "\n",
        encoding="utf-8",
    )
    result = cli("send-batch", "--target", "Relay", "--file", file)
    assert result.returncode == 2, str(result)
    assert "2 of 3 messages are not valid" in result.stderr and "nothing was queued" in result.stderr
    assert "line 2:" in result.stderr and "line 3:" in result.stderr and "line 1:" not in result.stderr
    assert server.messages == []
    assert assert_ok(cli("runs", "list", "--json")).json() == []
    missing = cli("send-batch", "--target", "Relay", "--file", tmp_path / "nope.jsonl")
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_cli_some_failed_exits_1(
    cli: CLI, targets: Targets, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    server = smtp_server_factory(faults=Faults(refuse_recipients={"r1@example.net": (550, "no such user")}))
    targets.target(server, security="none", display_name="Relay")
    file = jsonl(tmp_path / "m.jsonl", [message(i) for i in range(3)])
    result = cli("send-batch", "--target", "Relay", "--file", file)
    assert result.returncode == 1, str(result)
    assert "runs show" in result.stderr


def test_crash_mid_batch_loses_nothing_and_doubles_only_the_unknown(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    count = 60
    server = smtp_server_factory(faults=Faults(delay={"data": 0.3}))
    targets.target(server, security="none", display_name="Slow")
    file = jsonl(tmp_path / "m.jsonl", [message(i) for i in range(count)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILWRIGHT_")}
    env.update(MAILWRIGHT_HOME=str(tmp_path / "home"), MAILWRIGHT_LEASE_SECONDS="1")
    proc = subprocess.Popen(
        [str(MAILWRIGHT), "send-batch", "--target", "Slow", "--file", str(file), "--concurrency", "4"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while len(server.messages) < 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    killed_at = len(server.messages)
    assert 0 < killed_at < count
    time.sleep(1.2)  # the dead process's lease expires
    (run,) = mw.runs.list_runs()
    assert run.id in mw.runs.due()
    status = asyncio.run(executor(mw, "successor").execute(run.id))
    results = mw.batches.results(run.id, limit=1000)
    unknown = [r for r in results if r["status"] == "unknown"]
    assert status == ("failed" if unknown else "succeeded")
    assert all(r["send_state"] == "unknown" for r in unknown)
    received = [*server.messages, *server.dropped]
    ids = message_ids(received)
    assert max(ids.values()) == 1  # nothing was sent twice: the unknown are not resent on their own
    delivered = {r["message_id"] for r in results if r["status"] == "sent"}
    assert delivered <= set(ids) and len(delivered) + len(unknown) == count  # nothing lost
    assert len(unknown) <= 4  # at most the messages in flight (concurrency) at the kill
    # Resent only on request; then every message arrived, and only an unknown one may be twice.
    mw.runs.retry(run.id, include_unknown=True)
    assert asyncio.run(executor(mw, "third").execute(run.id)) == "succeeded"
    ids = message_ids([*server.wait_for(count), *server.dropped])
    assert len(ids) == count
    doubled = {mid for mid, n in ids.items() if n > 1}
    assert doubled <= {r["message_id"] for r in unknown}


# --- the API ---------------------------------------------------------------------------------


def test_api_batch_wait_results_and_paging(
    api: httpx.Client,
    targets: Targets,
    smtp_server_factory: SMTPServerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mailwright.services import batches

    monkeypatch.setattr(batches, "RESULTS_PAGE", 2)  # the answer holds every result, read page by page
    server = smtp_server_factory(faults=Faults(refuse_recipients={"r2@example.net": (550, "no such user")}))
    target = targets.target(server, security="none", display_name="Relay")
    body = {"target": target.display_name, "messages": [message(i) for i in range(5)], "wait": True}
    answer = api.post("/api/v1/send-email/batch", json=body)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert data["status"] == "failed" and data["counts"] == {"succeeded": 4, "failed": 1}
    assert [r["status"] for r in data["results"]] == ["sent", "sent", "failed", "sent", "sent"]
    assert data["results"][0]["recipients"][0]["address"] == "r0@example.net"
    page = api.get(f"/api/v1/runs/{data['run_id']}/steps", params={"offset": 3, "limit": 2}).json()
    assert [r["index"] for r in page] == [3, 4]
    run = api.get(f"/api/v1/runs/{data['run_id']}").json()
    assert run["steps_total"] == 5 and run["step_counts"]["failed"] == 1
    queued = api.post(
        "/api/v1/send-email/batch", json={"target": "Relay", "messages": [message(i) for i in range(5, 8)]}
    )
    assert queued.status_code == 202 and queued.json()["messages"] == 3
    deadline = time.monotonic() + 20
    while api.get(f"/api/v1/runs/{queued.json()['run_id']}").json()["status"] != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert len(server.wait_for(7)) == 7


def test_api_batch_refuses_bad_messages_by_index(
    api: httpx.Client, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory()
    targets.target(server, security="none", display_name="Relay")
    body = {"target": "Relay", "messages": [message(0), message(1, to=["bad address"]), message(2, cc=5)]}
    answer = api.post("/api/v1/send-email/batch", json=body)
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["bad"] == 2 and [p["where"] for p in error["problems"]] == ["message 1", "message 2"]
    assert api.get("/api/v1/runs").json() == []
    unknown = api.post("/api/v1/send-email/batch", json={"target": "Nope", "messages": [message(0)]})
    assert unknown.status_code == 404
    assert server.messages == []


def test_a_batch_whose_storing_process_died_is_discarded_not_left_preparing(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    """Killed while storing: nothing was accepted, so the half-stored batch is removed, with a log line."""
    server = smtp_server_factory()
    targets.target(server, security="none", display_name="Relay")
    big = jsonl(tmp_path / "big.jsonl", [message(i, body="x" * 500) for i in range(50_000)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILWRIGHT_")}
    env.update(MAILWRIGHT_HOME=str(tmp_path / "home"))
    proc = subprocess.Popen(
        [str(MAILWRIGHT), "send-batch", "--target", "Relay", "--file", str(big)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with mw.db.session() as session:
            stored = session.scalar(select(func.count()).select_from(RunStepRow))
        if stored:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    (run,) = mw.runs.list_runs()
    assert run.status == "preparing"
    assert mw.batches.discard_abandoned() == 0  # its storing lease still runs
    with mw.db.session() as session:
        row = session.get(RunRow, run.id)
        assert row is not None and row.lease_owner == "storing"
        row.lease_expires_at = utcnow() - timedelta(seconds=1)  # as if two minutes had passed
    assert mw.batches.discard_abandoned() == 1
    assert mw.runs.list_runs() == []
    with mw.db.session() as session:
        assert session.scalar(select(func.count()).select_from(RunStepRow)) == 0
        assert session.scalar(select(func.count()).select_from(StepInputRow)) == 0
    assert server.messages == []


def test_ctrl_c_stops_the_batch_cleanly_and_leaves_the_rest_queued(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    """The first Ctrl-C: what is in flight finishes, the rest goes back to queued, untouched.

    The target allows 3 messages a minute, so the 4th waits for its slot: the stop must not
    wait that minute out.
    """
    server = smtp_server_factory()
    target = targets.target(server, security="none", display_name="Slow", rate_per_minute=3)
    file = jsonl(tmp_path / "m.jsonl", [message(i) for i in range(10)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILWRIGHT_")}
    env.update(MAILWRIGHT_HOME=str(tmp_path / "home"))
    proc = subprocess.Popen(
        [str(MAILWRIGHT), "send-batch", "--target", "Slow", "--file", str(file), "--concurrency", "4"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    server.wait_for(3)
    time.sleep(0.3)  # the 4th is waiting for its slot now
    interrupted = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert time.monotonic() - interrupted < 30  # not the minute the 4th waits for its slot
    assert proc.returncode == 130, stderr
    assert "stopped by Ctrl-C" in stderr and "7 messages stay queued" in stderr
    assert "Traceback" not in stderr
    (run,) = mw.runs.list_runs()
    assert run.status == "queued"
    results = mw.batches.results(run.id)
    assert [r["status"] for r in results] == ["sent"] * 3 + ["pending"] * 7
    assert all(r["attempts"] == 0 and r["notes"] == [] for r in results[3:])
    with mw.db.session() as session:
        row = session.get(RunRow, run.id)
        assert row is not None and row.lease_owner is None
        states = session.scalars(select(RunStepRow.send_state).where(RunStepRow.status == "pending")).all()
    assert set(states) == {None}
    # Whoever takes the run up sends the rest, once each.
    mw.targets.update(target.id, TargetUpdate(rate_per_minute=0))
    assert asyncio.run(executor(mw, "serve").execute(run.id)) == "succeeded"
    ids = message_ids(server.wait_for(10))
    assert len(ids) == 10 and max(ids.values()) == 1
