"""The dashboard's aggregates (services/stats.py): real sends, and known rows on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, insert, select

from mailwright.config import Settings
from mailwright.engine import retry as retry_module
from mailwright.engine.executor import Executor
from mailwright.services.app import Services
from mailwright.services.stats import NO_TARGET, Span, StatsService
from mailwright.storage.tables import (
    DeliveryHourRow,
    RunRow,
    RunStepRow,
    TriggerMessageRow,
    TriggerStateRow,
    WorkflowRow,
    utcnow,
)
from tests.integration.conftest import Targets
from tests.support.smtpserver import Faults, SMTPServerFactory

RATE_NOTE = "rate limit: 2 per minute; the next slot is at 12:00:31"


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retry_module, "BACKOFF_BASE", 0.05)


def executor(mw: Services) -> Executor:
    return mw.executor(worker_id="stats-test", lease=timedelta(seconds=5), with_files=False)


def lines(count: int) -> Iterator[tuple[str, str]]:
    for i in range(count):
        message = {"from": "batch@example.org", "to": [f"r{i}@example.net"], "subject": f"#{i}", "body": "hi"}
        yield f"line {i + 1}", json.dumps(message)


# --- real sends ------------------------------------------------------------------------------------


async def test_a_batch_with_a_refused_recipient_is_counted_sent_and_failed_with_its_reason(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory(faults=Faults(refuse_recipients={"r2@example.net": (550, "no such user")}))
    target = targets.target(server, security="none", display_name="Relay One")
    created = mw.batches.create(lines(5), target=target.display_name)
    assert await executor(mw).execute(created.run_id) == "failed"

    hourly = mw.stats.delivery(Span.HOURS)
    assert list(hourly.targets) == ["Relay One"]
    counts = hourly.targets["Relay One"]
    assert counts.totals == (4, 1, 0)
    assert counts.sent[-1] == 4 and counts.failed[-1] == 1  # this hour: the last bucket
    assert len(hourly.starts) == 24 and len(counts.sent) == 24
    daily = mw.stats.delivery(Span.DAYS, target="relay one")  # any case, as the CLI accepts
    assert len(daily.starts) == 30 and daily.targets["Relay One"].totals == (4, 1, 0)
    assert mw.stats.delivery(Span.DAYS, target=target.id).total().totals == (4, 1, 0)

    [reason] = mw.stats.failure_reasons(since=utcnow() - timedelta(days=1))
    assert reason.count == 1 and reason.smtp_code == 550 and "no such user" in reason.example
    timeline = mw.stats.run_timeline(created.run_id)
    assert timeline.counts.totals == (4, 1, 0) and len(timeline.starts) == len(timeline.counts.sent)
    assert mw.stats.delivery(Span.HOURS, target="Nobody").targets == {}


# --- known rows, on both databases -------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def stats_services(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Services]:
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    settings = Settings(home=tmp_path / "home", database_url=url) if url else Settings(home=tmp_path / "home")
    services = Services(settings)
    yield services
    services.close()


def add_run(mw: Services, target: str | None, steps: list[dict[str, Any]]) -> str:
    run_id = str(uuid.uuid4())
    run: dict[str, Any] = {
        "id": run_id,
        "workflow_name": "w",
        "document": {},
        "status": "succeeded",
        "target": target,
    }
    rows = [
        {
            "id": str(uuid.uuid4()),
            "run_id": run_id,
            "position": 0,
            "step_id": "send",
            "item_index": index,
            "activity": step.get("activity", "send_email"),
            "status": step["status"],
            "attempts": step.get("attempts", 1),
            "error": step.get("error"),
            "notes": step.get("notes", []),
            "updated_at": step["at"],
        }
        for index, step in enumerate(steps)
    ]
    with mw.db.session() as session:
        session.execute(insert(RunRow), [run])
        session.execute(insert(RunStepRow), rows)
    return run_id


def hour(now: datetime, back: int) -> datetime:
    return now.replace(minute=30, second=0, microsecond=0) - timedelta(hours=back)


def test_counts_per_hour_and_day_per_target_and_reasons(stats_services: Services) -> None:
    mw = stats_services
    now = utcnow()
    rejected = {"code": "rejected", "smtp_code": 550, "message": "550 no such user"}
    add_run(
        mw,
        "Relay A",
        [
            {"status": "succeeded", "at": hour(now, 0)},
            {"status": "succeeded", "at": hour(now, 0), "attempts": 2},  # retried, then sent
            {"status": "failed", "at": hour(now, 2), "error": rejected},
            {"status": "unknown", "at": hour(now, 2), "error": {"code": "outcome_unknown", "message": "?"}},
            {"status": "deferred", "at": hour(now, 5), "notes": [RATE_NOTE]},
            {"status": "succeeded", "at": hour(now, 30)},  # yesterday: in the days, not the hours
            {"status": "succeeded", "at": now - timedelta(days=40)},  # too old for both
            {"status": "succeeded", "at": hour(now, 0), "activity": "read_email"},  # not a send
        ],
    )
    add_run(mw, "relay a", [{"status": "failed", "at": hour(now, 1), "error": rejected}])  # same target
    add_run(mw, None, [{"status": "succeeded", "at": hour(now, 3), "notes": [RATE_NOTE]}])

    hourly = mw.stats.delivery(Span.HOURS, now=now)
    assert set(hourly.targets) == {"Relay A", "relay a", NO_TARGET}  # no such target: names as written
    relay = hourly.targets["Relay A"]
    assert (relay.sent[-1], relay.deferred[-1]) == (2, 1)
    assert relay.failed[-3] == 2 and relay.deferred[-6] == 1
    assert relay.totals == (2, 2, 2)
    assert hourly.targets[NO_TARGET].totals == (1, 0, 0)
    assert hourly.total().totals == (3, 3, 2)

    daily = mw.stats.delivery(Span.DAYS, now=now)
    assert daily.total().totals == (4, 3, 2)
    assert daily.starts[-1].hour == 0 and daily.starts[-1] <= now

    reasons = mw.stats.failure_reasons(since=now - timedelta(days=30))
    assert [(r.error_code, r.smtp_code, r.count) for r in reasons] == [
        ("rejected", 550, 2),
        ("outcome_unknown", None, 1),
    ]
    limited = mw.stats.rate_limited(since=now - timedelta(hours=24))
    assert [(r.target, r.held, r.waiting) for r in limited] == [(NO_TARGET, 1, 0), ("Relay A", 1, 1)]


def test_closed_hours_are_counted_once_and_kept(stats_services: Services) -> None:
    mw = stats_services
    now = utcnow()
    run_id = add_run(mw, "Relay B", [{"status": "succeeded", "at": hour(now, 3)}] * 3)
    assert mw.stats.delivery(Span.HOURS, now=now).total().totals == (3, 0, 0)
    with mw.db.session() as session:
        stored = session.scalars(select(DeliveryHourRow)).all()
        assert [(r.target, r.sent) for r in stored] == [("Relay B", 3)]
        session.execute(delete(RunRow).where(RunRow.id == run_id))  # the run is gone; its hour stays
    add_run(mw, "Relay B", [{"status": "failed", "at": hour(now, 0), "error": {"code": "timeout"}}])
    again = mw.stats.delivery(Span.HOURS, now=now)
    assert again.targets["Relay B"].totals == (3, 1, 0) and again.targets["Relay B"].failed[-1] == 1
    assert mw.stats.count_closed_hours(now) == mw.stats.count_closed_hours(now)  # nothing left to count
    [reason] = mw.stats.failure_reasons(since=now - timedelta(hours=2), now=now)
    assert (reason.error_code, reason.smtp_code, reason.count) == ("timeout", None, 1)


def test_processes_counting_at_once_count_each_hour_once(stats_services: Services) -> None:
    mw = stats_services
    now = utcnow()
    add_run(mw, "Relay C", [{"status": "succeeded", "at": hour(now, back)} for back in range(2, 40)])
    services = [StatsService(mw.db) for _ in range(4)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        ends = list(pool.map(lambda stats: stats.count_closed_hours(now), services))
    assert len(set(ends)) == 1
    with mw.db.session() as session:
        assert session.scalar(select(func.sum(DeliveryHourRow.sent))) == 38
    assert mw.stats.delivery(Span.DAYS, now=now).total().totals == (38, 0, 0)


def test_trigger_health_names_the_workflow_its_state_and_failed_mails(stats_services: Services) -> None:
    mw = stats_services
    workflow_id = bare_workflow(mw)  # the trigger's rows are what the figures read
    now = utcnow()
    with mw.db.session() as session:
        session.execute(
            insert(TriggerStateRow),
            [
                {
                    "id": str(uuid.uuid4()),
                    "workflow_id": workflow_id,
                    "position": 0,
                    "folder": "INBOX",
                    "status": "error",
                    "error": "cannot log in: wrong password",
                    "last_checked_at": now,
                }
            ],
        )
        failed = {"workflow_id": workflow_id, "position": 0, "target_id": "t", "folder": "INBOX"}
        session.execute(
            insert(TriggerMessageRow),
            [
                {**failed, "id": str(uuid.uuid4()), "uidvalidity": 1, "message_key": str(n), "status": status}
                for n, status in enumerate(["failed", "failed", "succeeded"])
            ],
        )
    [health] = [t for t in mw.stats.trigger_health() if t.error]
    assert health.folder == "INBOX" and health.failed_24h == 2 and "wrong password" in (health.error or "")
    assert health.last_checked_at is not None


def bare_workflow(mw: Services) -> str:
    workflow_id = str(uuid.uuid4())
    row = {"id": workflow_id, "name": "Inbox watcher", "name_key": "inbox watcher", "document": {}}
    with mw.db.session() as session:
        session.execute(insert(WorkflowRow), [row])
    return workflow_id
