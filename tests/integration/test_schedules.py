"""Cron schedules: fire once on time, count what was missed while down, never run it late."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import yaml

from mailwright.services.app import Services
from mailwright.services.schedules import count_between
from mailwright.storage.tables import ScheduleStateRow

DOCUMENT = {
    "name": "Every five minutes",
    "inputs": {"who": {"type": "string", "default": "nobody"}},
    "schedules": [
        {"cron": "*/5 * * * *", "inputs": {"who": "cron"}},
        {"cron": "0 7 * * 1-5", "enabled": False},
    ],
    "steps": [{"id": "note", "activity": "set_variables", "with": {"who": "{{ inputs.who }}"}}],
}


def _move_next(mw: Services, when: datetime) -> None:
    with mw.db.session() as session:
        for state in session.query(ScheduleStateRow).all():
            state.next_fire_at = when


def test_count_between() -> None:
    start = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    assert count_between("*/5 * * * *", start, start + timedelta(minutes=59)) == 12
    assert count_between("0 7 * * *", start, start + timedelta(days=3)) == 3


def test_schedules_fire_once_and_report_missed(mw: Services) -> None:
    workflow = mw.workflows.create(yaml.safe_dump(DOCUMENT))
    listed = mw.schedules.list_for(workflow.id)
    assert [(s.cron, s.enabled) for s in listed] == [("*/5 * * * *", True), ("0 7 * * 1-5", False)]
    assert listed[0].next_fire_at is not None and listed[1].next_fire_at is None

    now = datetime.now(UTC)
    _move_next(mw, now - timedelta(seconds=5))
    (run_id,) = mw.schedules.tick(now)
    assert mw.runs.get(run_id).inputs == {"who": "cron"}
    assert mw.schedules.tick(now) == []  # fired once; the next fire is in the future
    first = mw.schedules.list_for(workflow.id)[0]
    assert first.last_run_id == run_id and first.next_fire_at is not None and first.next_fire_at > now

    # Down for three hours: 36 fires missed, reported, none run late.
    _move_next(mw, now - timedelta(hours=3))
    assert mw.schedules.tick(now) == []
    missed = mw.schedules.list_for(workflow.id)[0]
    assert missed.missed_count in (36, 37)
    assert len(mw.runs.list_runs()) == 1

    off = mw.schedules.set_enabled(workflow.id, 0, False)
    assert not off.enabled and off.next_fire_at is None
    _move_next(mw, now - timedelta(seconds=5))
    assert mw.schedules.tick(now) == []
    assert mw.schedules.set_enabled(workflow.id, 1, True).next_fire_at is not None
