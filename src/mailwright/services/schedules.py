"""Cron schedules of workflows: fire on time, once; report what was missed while down.

A schedule fires when its time comes and a worker is running. If no worker ran
at that time (the service was down), the fire is *missed*: it is counted and
shown, and not run late, so a service that was down for a day does not send a
day of alerts at once. Several workers may tick at the same moment; a
conditional update lets exactly one of them fire.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from croniter import croniter
from pydantic import BaseModel
from sqlalchemy import select, update

from mailwright.domain.workflows import WorkflowDocument
from mailwright.errors import NotFoundError
from mailwright.services.common import find, workflow_states
from mailwright.services.runs import RunService
from mailwright.storage.db import Database
from mailwright.storage.tables import ScheduleStateRow, WorkflowRow, utcnow

log = logging.getLogger(__name__)

# A fire this late still runs (a worker restarting, a slow tick); later ones are missed.
GRACE = timedelta(seconds=60)


class SchedulePublic(BaseModel):
    index: int
    cron: str
    enabled: bool
    inputs: dict[str, Any]
    next_fire_at: datetime | None
    last_fired_at: datetime | None
    last_run_id: str | None
    missed_count: int
    last_missed_at: datetime | None


def next_after(cron: str, moment: datetime) -> datetime:
    result: datetime = croniter(cron, moment).get_next(datetime)
    return result


def count_between(cron: str, start: datetime, end: datetime, *, limit: int = 100_000) -> int:
    """How many fire times fall in [start, end] (bounded)."""
    count, moment = 0, start - timedelta(microseconds=1)
    iterator = croniter(cron, moment)
    while count < limit:
        fire: datetime = iterator.get_next(datetime)
        if fire > end:
            break
        count += 1
    return count


class ScheduleService:
    def __init__(self, db: Database, runs: RunService) -> None:
        self._db = db
        self._runs = runs

    def sync(self, workflow_id: str) -> None:
        """Align the stored states with the workflow document (after create or replace)."""
        with self._db.session() as session:
            loaded = workflow_states(session, ScheduleStateRow, workflow_id)
            if loaded is None:
                return
            document, states = loaded
            for position, schedule in enumerate(document.schedules):
                state = states.pop(position, None)
                if state is None:
                    state = ScheduleStateRow(workflow_id=workflow_id, position=position, missed_count=0)
                    session.add(state)
                if state.cron != schedule.cron or state.next_fire_at is None:
                    state.next_fire_at = next_after(schedule.cron, utcnow())
                state.cron = schedule.cron
                state.enabled = schedule.enabled
                state.updated_at = utcnow()
            for stale in states.values():
                session.delete(stale)

    def list_for(self, ref: str) -> list[SchedulePublic]:
        with self._db.session() as session:
            workflow = find(session, WorkflowRow, ref, what="workflow")
            document = WorkflowDocument.model_validate(workflow.document)
            states = session.scalars(
                select(ScheduleStateRow)
                .where(ScheduleStateRow.workflow_id == workflow.id)
                .order_by(ScheduleStateRow.position)
            ).all()
            return [
                SchedulePublic(
                    index=s.position,
                    cron=s.cron,
                    enabled=s.enabled,
                    inputs=document.schedules[s.position].inputs
                    if s.position < len(document.schedules)
                    else {},
                    next_fire_at=s.next_fire_at if s.enabled else None,
                    last_fired_at=s.last_fired_at,
                    last_run_id=s.last_run_id,
                    missed_count=s.missed_count,
                    last_missed_at=s.last_missed_at,
                )
                for s in states
            ]

    def set_enabled(self, ref: str, index: int, enabled: bool) -> SchedulePublic:
        with self._db.session() as session:
            workflow = find(session, WorkflowRow, ref, what="workflow")
            state = session.scalars(
                select(ScheduleStateRow).where(
                    ScheduleStateRow.workflow_id == workflow.id, ScheduleStateRow.position == index
                )
            ).first()
            if state is None:
                raise NotFoundError(
                    f"workflow {workflow.name!r} has no schedule number {index}",
                    hint=f"see `mailwright workflows schedules {workflow.name}`",
                )
            state.enabled = enabled
            # Re-enabling starts from now: the time it was off is not "missed".
            state.next_fire_at = next_after(state.cron, utcnow()) if enabled else state.next_fire_at
            state.updated_at = utcnow()
        return next(s for s in self.list_for(ref) if s.index == index)

    def tick(self, now: datetime | None = None) -> list[str]:
        """Fire what is due; returns the ids of the runs started."""
        now = now or utcnow()
        started: list[str] = []
        with self._db.session() as session:
            due = session.scalars(
                select(ScheduleStateRow).where(
                    ScheduleStateRow.enabled.is_(True), ScheduleStateRow.next_fire_at <= now
                )
            ).all()
            plans = [(s.id, s.workflow_id, s.position, s.cron, s.next_fire_at) for s in due]
        for state_id, workflow_id, position, cron, fire_at in plans:
            assert fire_at is not None
            run_id = self._fire(state_id, workflow_id, position, cron, fire_at, now)
            if run_id:
                started.append(run_id)
        return started

    def _fire(
        self, state_id: str, workflow_id: str, position: int, cron: str, fire_at: datetime, now: datetime
    ) -> str | None:
        following = next_after(cron, now)
        late = now - fire_at > GRACE
        missed = count_between(cron, fire_at, now) if late else 0
        with self._db.session() as session:
            # Exactly one worker moves next_fire_at on; the others see no row to update.
            taken = session.execute(
                update(ScheduleStateRow)
                .where(ScheduleStateRow.id == state_id, ScheduleStateRow.next_fire_at == fire_at)
                .values(next_fire_at=following, updated_at=now)
            ).rowcount  # type: ignore[attr-defined]
            if not taken:
                return None
            state = session.get(ScheduleStateRow, state_id)
            assert state is not None
            if late:
                state.missed_count += missed
                state.last_missed_at = fire_at
        if late:
            log.warning(
                "schedule %d of workflow %s: %d fire(s) since %s missed while no worker ran; not run late",
                position,
                workflow_id,
                missed,
                fire_at.isoformat(),
            )
            return None
        with self._db.session() as session:
            workflow = session.get(WorkflowRow, workflow_id)
            if workflow is None:
                return None
            document = WorkflowDocument.model_validate(workflow.document)
            inputs = document.schedules[position].inputs if position < len(document.schedules) else {}
        run = self._runs.start_workflow(workflow_id, inputs=inputs)
        with self._db.session() as session:
            state = session.get(ScheduleStateRow, state_id)
            if state is not None:
                state.last_fired_at, state.last_run_id = fire_at, run.id
        return run.id
