"""The dashboard's figures: messages sent, failed and deferred over time, per target.

Every figure is one aggregated query (`GROUP BY`), never a walk over the steps in Python,
so a database of a million steps answers in a fraction of a second (bench/dashboard.py).
A send step is counted in the hour (or day) of its last change (`updated_at`):

- sent: the step succeeded;
- failed: it failed, or its outcome is unknown (it may or may not have arrived);
- deferred: it waits now for a retry or a rate-limit slot, or it needed more than one
  attempt before it ended (so a message can be both deferred and sent);
- rate-limited: held back by its target's rate limit at least once (its notes say so).

A step's target is its run's target (a batch, a single Send Email, or a workflow run given
one); other workflow runs are shown as "(workflow)".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from pydantic import BaseModel
from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    String,
    Text,
    and_,
    case,
    cast,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.functions import coalesce

from mailwright.domain.runs import StepStatus
from mailwright.ledger.outcomes import RATE_LIMIT_NOTE
from mailwright.storage.db import Database
from mailwright.storage.tables import (
    RunRow,
    RunStepRow,
    TargetRow,
    TriggerMessageRow,
    TriggerStateRow,
    WorkflowRow,
    name_key,
    utcnow,
)

SEND_ACTIVITY: Final = "send_email"
NO_TARGET: Final = "(workflow)"
FAILED_STATUSES: Final = (StepStatus.FAILED, StepStatus.UNKNOWN)
TOP_REASONS: Final = 10
TIMELINE_BUCKETS: Final = 60  # at most this many bars in a run's timeline
TIMELINE_STEPS: Final = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)


class Span(StrEnum):
    """A chart's period: 24 hours by the hour, or 30 days by the day."""

    HOURS = "24h"
    DAYS = "30d"

    @property
    def step(self) -> timedelta:
        return timedelta(hours=1) if self is Span.HOURS else timedelta(days=1)

    @property
    def buckets(self) -> int:
        return 24 if self is Span.HOURS else 30

    @property
    def key_length(self) -> int:
        """Characters of "YYYY-MM-DD HH" that name a bucket."""
        return 13 if self is Span.HOURS else 10


class Counts(BaseModel):
    sent: list[int]
    failed: list[int]
    deferred: list[int]

    @property
    def totals(self) -> tuple[int, int, int]:
        return sum(self.sent), sum(self.failed), sum(self.deferred)


class DeliverySeries(BaseModel):
    """One chart's data: the buckets' start times (UTC) and, per target, a count per bucket."""

    span: Span
    starts: list[datetime]
    targets: dict[str, Counts]

    def total(self) -> Counts:
        def column(pick: str) -> list[int]:
            return [sum(col) for col in zip(*(getattr(c, pick) for c in self.targets.values()), strict=True)]

        if not self.targets:
            zeros = [0] * len(self.starts)
            return Counts(sent=zeros, failed=zeros, deferred=zeros)
        return Counts(sent=column("sent"), failed=column("failed"), deferred=column("deferred"))


class FailureReason(BaseModel):
    """Failed sends of the period with one error class (its code) and SMTP reply code."""

    error_code: str
    smtp_code: int | None
    count: int
    example: str


class RateLimited(BaseModel):
    target: str
    held: int  # steps held back at least once, changed in the period
    waiting: int  # of them, waiting for their slot now


class TriggerHealth(BaseModel):
    workflow: str
    position: int
    folder: str
    enabled: bool
    status: str
    error: str | None
    last_checked_at: datetime | None
    last_message_at: datetime | None
    failed_24h: int


class Dashboard(BaseModel):
    hourly: DeliverySeries
    daily: DeliverySeries
    reasons: list[FailureReason]
    rate_limited: list[RateLimited]
    triggers: list[TriggerHealth]


class RunTimeline(BaseModel):
    """A run's send steps by when they last changed, in buckets of `seconds`."""

    run_id: str
    seconds: int
    starts: list[datetime]
    counts: Counts


@dataclass(frozen=True)
class _Window:
    span: Span
    first: datetime  # the first bucket's start

    @classmethod
    def ending(cls, span: Span, now: datetime) -> _Window:
        top = now.replace(minute=0, second=0, microsecond=0)
        if span is Span.DAYS:
            top = top.replace(hour=0)
        return cls(span, top - span.step * (span.buckets - 1))

    @property
    def starts(self) -> list[datetime]:
        return [self.first + self.span.step * i for i in range(self.span.buckets)]

    def keys(self) -> list[str]:
        return [start.strftime("%Y-%m-%d %H")[: self.span.key_length] for start in self.starts]


class StatsService:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._postgres = db.engine.dialect.name == "postgresql"

    def dashboard(self, *, target: str | None = None) -> Dashboard:
        now = utcnow()
        return Dashboard(
            hourly=self.delivery(Span.HOURS, target=target, now=now),
            daily=self.delivery(Span.DAYS, target=target, now=now),
            reasons=self.failure_reasons(since=now - timedelta(days=30), target=target),
            rate_limited=self.rate_limited(since=now - timedelta(hours=24), target=target),
            triggers=[] if target else self.trigger_health(now=now),
        )

    # --- delivery over time ------------------------------------------------------------------

    def delivery(
        self, span: Span, *, target: str | None = None, now: datetime | None = None
    ) -> DeliverySeries:
        window = _Window.ending(span, now or utcnow())
        with self._db.session() as session:
            names = self._target_names(session)
            rows = session.execute(self._delivery_query(window, _raw_names(names, target))).all()
        keys = window.keys()
        index = {key: i for i, key in enumerate(keys)}
        targets: dict[str, Counts] = {}
        for raw, key, sent, failed, deferred in rows:
            if key in index:
                counts = targets.setdefault(_shown(names, raw), _zeros(len(keys)))
                at = index[key]
                counts.sent[at] += int(sent)
                counts.failed[at] += int(failed)
                counts.deferred[at] += int(deferred)
        return DeliverySeries(span=span, starts=window.starts, targets=dict(sorted(targets.items())))

    def _target_names(self, session: Session) -> dict[str, str]:
        """Each name a run was given for its target (a name in any case, or the target's id) →
        the target's display name; names of deleted targets stay as they were written."""
        known = session.execute(select(TargetRow.id, TargetRow.name_key, TargetRow.display_name)).all()
        by_ref = {ref: display for id_, key, display in known for ref in (id_, key)}
        written = session.scalars(select(RunRow.target).distinct()).all()
        written_as = {raw: by_ref.get(name_key(raw), by_ref.get(raw, raw)) for raw in written if raw}
        return {**by_ref, **written_as}  # the targets' ids and names too, to be asked for by either

    def _delivery_query(self, window: _Window, targets: list[str] | None) -> Select[Any]:
        """Counted per run and bucket over the index alone, then summed per name of target."""
        step = RunStepRow
        bucket = self._bucket_key(step.updated_at, window.span).label("bucket")
        per_run = (
            select(
                step.run_id,
                bucket,
                _count_when(step.status == StepStatus.SUCCEEDED).label("sent"),
                _count_when(step.status.in_(FAILED_STATUSES)).label("failed"),
                _count_when(_was_deferred()).label("deferred"),
            )
            .where(step.activity == SEND_ACTIVITY, step.updated_at >= window.first)
            .group_by(step.run_id, bucket)
        )
        if targets is not None:
            per_run = per_run.where(step.run_id.in_(select(RunRow.id).where(RunRow.target.in_(targets))))
        runs = per_run.subquery()
        return (
            select(
                RunRow.target,
                runs.c.bucket,
                func.sum(runs.c.sent),
                func.sum(runs.c.failed),
                func.sum(runs.c.deferred),
            )
            .select_from(runs.join(RunRow, RunRow.id == runs.c.run_id))
            .group_by(RunRow.target, runs.c.bucket)
        )

    def _bucket_key(self, column: Any, span: Span) -> ColumnElement[str]:
        """ "YYYY-MM-DD HH" (hours) or "YYYY-MM-DD" (days) of a UTC timestamp, on either database."""
        if self._postgres:
            pattern = "YYYY-MM-DD HH24" if span is Span.HOURS else "YYYY-MM-DD"
            return func.to_char(func.timezone("UTC", column), pattern)
        # SQLite keeps timestamps as "YYYY-MM-DD HH:MM:SS.ffffff" text in UTC.
        return func.substr(cast(column, String), 1, span.key_length)

    # --- why sends failed, and rate limits -------------------------------------------------------

    def failure_reasons(self, *, since: datetime, target: str | None = None) -> list[FailureReason]:
        step = RunStepRow
        code = coalesce(step.error["code"].as_string(), literal("unknown")).label("code")
        smtp = step.error["smtp_code"].as_integer().label("smtp")
        query = (
            select(code, smtp, func.count().label("n"), func.max(step.error["message"].as_string()))
            .where(step.activity == SEND_ACTIVITY, step.updated_at >= since, step.status.in_(FAILED_STATUSES))
            .group_by(code, smtp)
            .order_by(func.count().desc(), code)
            .limit(TOP_REASONS)
        )
        with self._db.session() as session:
            raws = _raw_names(self._target_names(session), target)
            if raws is not None:
                query = query.where(step.run_id.in_(select(RunRow.id).where(RunRow.target.in_(raws))))
            rows = session.execute(query).all()
        return [
            FailureReason(
                error_code=str(c), smtp_code=None if s is None else int(s), count=int(n), example=m or ""
            )
            for c, s, n, m in rows
        ]

    def rate_limited(self, *, since: datetime, target: str | None = None) -> list[RateLimited]:
        step = RunStepRow
        noted = cast(step.notes, Text).like(f"%{RATE_LIMIT_NOTE}%")
        query = (
            select(RunRow.target, func.count(), _count_when(step.status == StepStatus.DEFERRED))
            .select_from(step)
            .join(RunRow, RunRow.id == step.run_id)
            .where(step.activity == SEND_ACTIVITY, step.updated_at >= since, noted)
            .group_by(RunRow.target)
        )
        with self._db.session() as session:
            names = self._target_names(session)
            raws = _raw_names(names, target)
            if raws is not None:
                query = query.where(RunRow.target.in_(raws))
            rows = session.execute(query).all()
        merged: dict[str, RateLimited] = {}
        for raw, held, waiting in rows:
            name = _shown(names, raw)
            entry = merged.setdefault(name, RateLimited(target=name, held=0, waiting=0))
            entry.held += int(held)
            entry.waiting += int(waiting)
        return [merged[name] for name in sorted(merged)]

    # --- email triggers -------------------------------------------------------------------------

    def trigger_health(self, *, now: datetime | None = None) -> list[TriggerHealth]:
        since = (now or utcnow()) - timedelta(hours=24)
        failures = (
            select(
                TriggerMessageRow.workflow_id,
                TriggerMessageRow.position,
                func.count().label("failed"),
            )
            .where(TriggerMessageRow.status == "failed", TriggerMessageRow.updated_at >= since)
            .group_by(TriggerMessageRow.workflow_id, TriggerMessageRow.position)
            .subquery()
        )
        state = TriggerStateRow
        query = (
            select(WorkflowRow.name, state, coalesce(failures.c.failed, 0))
            .join(WorkflowRow, WorkflowRow.id == state.workflow_id)
            .outerjoin(
                failures,
                and_(failures.c.workflow_id == state.workflow_id, failures.c.position == state.position),
            )
            .order_by(WorkflowRow.name, state.position)
        )
        with self._db.session() as session:
            return [_health(name, row, int(failed)) for name, row, failed in session.execute(query).all()]

    # --- one run ------------------------------------------------------------------------------------

    def run_timeline(self, run_id: str) -> RunTimeline:
        step = RunStepRow
        mine = and_(step.run_id == run_id, step.activity == SEND_ACTIVITY)
        with self._db.session() as session:
            first, last = session.execute(
                select(func.min(step.updated_at), func.max(step.updated_at)).where(mine)
            ).one()
            if first is None:
                return RunTimeline(run_id=run_id, seconds=1, starts=[], counts=_zeros(0))
            seconds = _timeline_step(last - first)
            origin = int(first.timestamp()) // seconds * seconds
            slot = self._slot(step.updated_at, origin, seconds)
            query = (
                select(
                    slot,
                    _count_when(step.status == StepStatus.SUCCEEDED),
                    _count_when(step.status.in_(FAILED_STATUSES)),
                    _count_when(_was_deferred()),
                )
                .where(mine)
                .group_by(slot)
            )
            rows = session.execute(query).all()
        return _timeline(run_id, seconds, datetime.fromtimestamp(origin, first.tzinfo), rows)

    def _slot(self, column: Any, origin: int, seconds: int) -> ColumnElement[int]:
        """Which bucket of `seconds` from `origin` (a Unix time) a timestamp falls in."""
        if self._postgres:
            return cast(func.floor((func.extract("epoch", column) - origin) / seconds), Integer)
        return (cast(func.strftime("%s", column), Integer) - origin) // seconds


def _count_when(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return func.sum(case((condition, 1), else_=0))


def _was_deferred() -> ColumnElement[bool]:
    return or_(RunStepRow.status == StepStatus.DEFERRED, RunStepRow.attempts > 1)


def _raw_names(names: dict[str, str], target: str | None) -> list[str] | None:
    """The names runs were given for `target` (None: every target; [] when it has no runs)."""
    if target is None:
        return None
    display = names.get(target, target)
    wanted = {display.casefold(), target.casefold()}
    return [raw for raw, shown in names.items() if shown.casefold() in wanted]


def _shown(names: dict[str, str], raw: str | None) -> str:
    return names.get(raw, raw) if raw else NO_TARGET


def _zeros(length: int) -> Counts:
    return Counts(sent=[0] * length, failed=[0] * length, deferred=[0] * length)


def _health(workflow: str, row: TriggerStateRow, failed: int) -> TriggerHealth:
    return TriggerHealth(
        workflow=workflow,
        position=row.position,
        folder=row.folder,
        enabled=row.enabled,
        status=row.status,
        error=row.error,
        last_checked_at=row.last_checked_at,
        last_message_at=row.last_message_at,
        failed_24h=failed,
    )


def _timeline_step(spread: timedelta) -> int:
    """The smallest bucket (seconds) that shows the run in at most TIMELINE_BUCKETS bars."""
    wanted = spread.total_seconds() / TIMELINE_BUCKETS
    return next((s for s in TIMELINE_STEPS if s >= wanted), TIMELINE_STEPS[-1])


def _timeline(run_id: str, seconds: int, origin: datetime, rows: Sequence[Any]) -> RunTimeline:
    slots = {int(slot): (int(s), int(f), int(d)) for slot, s, f, d in rows}
    length = max(slots, default=-1) + 1
    counts = _zeros(length)
    for slot, (sent, failed, deferred) in slots.items():
        counts.sent[slot], counts.failed[slot], counts.deferred[slot] = sent, failed, deferred
    starts = [origin + timedelta(seconds=seconds * i) for i in range(length)]
    return RunTimeline(run_id=run_id, seconds=seconds, starts=starts, counts=counts)
