"""The dashboard's figures: messages sent, failed and deferred over time, per target.

A send step is counted in the hour (or day) of its last change (`updated_at`):

- sent: the step succeeded;
- failed: it failed, or its outcome is unknown (it may or may not have arrived);
- deferred: it waits for a retry or a rate-limit slot, or it needed more than one attempt
  before it ended (so a message can be both deferred and sent);
- rate-limited: held back by its target's rate limit at least once (its notes say so).

Each hour is counted once, a few minutes after it ends, into `delivery_hours` and
`delivery_failures` (one aggregated query over that hour's range of an index); a chart
reads those rows and counts only the steps changed since from `run_steps`. So a
database of a million steps answers in milliseconds (bench/dashboard.py); the first look
after an upgrade counts the last 30 days once. A step changed again after its hour was
counted (deferred, then sent) counts in both hours, as what happened in each.

A step's target is its run's target (a batch, a single Send Email, or a workflow run given
one) as the run names it (a name in any case, or the target's id), shown as the target's
display name; other workflow runs are shown as "(workflow)".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from pydantic import BaseModel
from sqlalchemy import (
    ColumnElement,
    Integer,
    String,
    Text,
    and_,
    case,
    cast,
    delete,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.sql.functions import coalesce

from mailwright.domain.runs import FINISHED_RUN_STATUSES, StepStatus
from mailwright.errors import NotFoundError
from mailwright.ledger.outcomes import RATE_LIMIT_NOTE
from mailwright.storage.db import Database
from mailwright.storage.tables import (
    AppSettingRow,
    DeliveryFailureRow,
    DeliveryHourRow,
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
SETTLE: Final = timedelta(minutes=5)  # an hour is counted this long after it ended
KEEP: Final = timedelta(days=31)  # counted hours are kept this long
COUNTED_THROUGH: Final = "stats.counted_through"  # app_settings: the end of the last counted hour
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
    status: str = ""
    seconds: int
    starts: list[datetime]
    counts: Counts

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_RUN_STATUSES


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


@dataclass(frozen=True)
class _Hour:
    """One hour's counts for one target, as its runs name it ("" for none)."""

    target: str
    hour: datetime
    sent: int
    failed: int
    deferred: int
    rate_limited: int = 0


@dataclass(frozen=True)
class _Failures:
    target: str
    hour: datetime
    code: str
    smtp_code: int  # 0: no SMTP reply
    count: int
    example: str


@dataclass(frozen=True)
class _Figures:
    hours: list[_Hour]
    failures: list[_Failures]
    names: dict[str, str]  # a target's id and name key → its display name

    def shown(self, raw: str) -> str:
        if not raw:
            return NO_TARGET
        return self.names.get(raw, self.names.get(name_key(raw), raw))

    def wanted(self, target: str | None) -> Callable[[str], bool]:
        """Whether a name as runs write it is `target` (any name when None)."""
        if target is None:
            return lambda _raw: True
        display = self.shown(target).casefold()
        return lambda raw: self.shown(raw).casefold() == display


class _Taken(Exception):
    """Another process counts these hours now."""


class StatsService:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._postgres = db.engine.dialect.name == "postgresql"

    def dashboard(self, *, target: str | None = None) -> Dashboard:
        now = utcnow()
        figures = self._figures(since=now - timedelta(days=30), now=now)  # before the days' first
        return Dashboard(
            hourly=_series(_Window.ending(Span.HOURS, now), figures, target),
            daily=_series(_Window.ending(Span.DAYS, now), figures, target),
            reasons=_reasons(figures, now - timedelta(days=30), target),
            rate_limited=self._limits(figures, since=now - timedelta(hours=24), target=target),
            triggers=[] if target else self.trigger_health(now=now),
        )

    # --- delivery over time ------------------------------------------------------------------

    def delivery(
        self, span: Span, *, target: str | None = None, now: datetime | None = None
    ) -> DeliverySeries:
        now = now or utcnow()
        window = _Window.ending(span, now)
        return _series(window, self._figures(since=window.first, now=now), target)

    def failure_reasons(
        self, *, since: datetime, target: str | None = None, now: datetime | None = None
    ) -> list[FailureReason]:
        now = now or utcnow()
        return _reasons(self._figures(since=since, now=now), since, target)

    def _figures(self, *, since: datetime, now: datetime) -> _Figures:
        """Counted hours from `since` (floored to the hour), and the steps changed after them."""
        through = self.count_closed_hours(now)
        first = _floor_hour(since)
        with self._db.session() as session:
            hours = _stored_hours(session, first, through)
            failures = _stored_failures(session, first, through)
            live = max(first, through)
            hours += self._count_hours(session, live, None)
            failures += self._count_failures(session, live, None)
            names = self._target_names(session)
        return _Figures(hours=hours, failures=failures, names=names)

    def count_closed_hours(self, now: datetime | None = None) -> datetime:
        """Count the hours that ended (SETTLE ago) and were not counted yet; the end of the last."""
        end = _floor_hour((now or utcnow()) - SETTLE)
        through = self._counted_through()
        if through is not None and through >= end:
            return through
        begin = end - KEEP if through is None else max(through, end - KEEP)
        with self._db.session() as session:  # reads only: no write lock while a month is counted
            hours = self._count_hours(session, begin, end)
            failures = self._count_failures(session, begin, end)
        try:
            with self._db.session() as session:
                self._claim(session, through, end)
                session.add_all(_hour_row(h) for h in hours)
                session.add_all(_failure_row(f) for f in failures)
                session.execute(delete(DeliveryHourRow).where(DeliveryHourRow.hour < end - KEEP))
                session.execute(delete(DeliveryFailureRow).where(DeliveryFailureRow.hour < end - KEEP))
        except (_Taken, IntegrityError):
            return self._counted_through() or end
        return end

    def _counted_through(self) -> datetime | None:
        with self._db.session() as session:
            value = session.get(AppSettingRow, COUNTED_THROUGH)
            return None if value is None else datetime.fromisoformat(value.value)

    def _claim(self, session: Session, through: datetime | None, end: datetime) -> None:
        """Move the mark from `through` to `end`, or raise _Taken if another process moved it."""
        if through is None:
            session.add(AppSettingRow(key=COUNTED_THROUGH, value=end.isoformat()))
            session.flush()  # a second process's row conflicts: IntegrityError
            return
        moved = session.execute(
            update(AppSettingRow)
            .where(AppSettingRow.key == COUNTED_THROUGH, AppSettingRow.value == through.isoformat())
            .values(value=end.isoformat(), updated_at=utcnow())
        )
        if getattr(moved, "rowcount", 0) != 1:
            raise _Taken

    def _count_hours(self, session: Session, begin: datetime, end: datetime | None) -> list[_Hour]:
        step = RunStepRow
        bucket = self._bucket_key(step.updated_at, Span.HOURS)
        query = (
            select(
                RunRow.target,
                bucket,
                _count_when(step.status == StepStatus.SUCCEEDED),
                _count_when(step.status.in_(FAILED_STATUSES)),
                _count_when(_was_deferred()),
                _count_when(_noted()),
            )
            .select_from(step)
            .join(RunRow, RunRow.id == step.run_id)
            .where(*_sends_between(begin, end))
            .group_by(RunRow.target, bucket)
        )
        return [
            _Hour(target or "", _parse_hour(key), int(s), int(f), int(d), int(r))
            for target, key, s, f, d, r in session.execute(query)
        ]

    def _count_failures(self, session: Session, begin: datetime, end: datetime | None) -> list[_Failures]:
        step = RunStepRow
        bucket = self._bucket_key(step.updated_at, Span.HOURS)
        code = coalesce(step.error["code"].as_string(), literal("unknown"))
        smtp = coalesce(step.error["smtp_code"].as_integer(), literal(0))
        query = (
            select(
                RunRow.target, bucket, code, smtp, func.count(), func.max(step.error["message"].as_string())
            )
            .select_from(step)
            .join(RunRow, RunRow.id == step.run_id)
            .where(*_sends_between(begin, end), step.status.in_(FAILED_STATUSES))
            .group_by(RunRow.target, bucket, code, smtp)
        )
        return [
            _Failures(target or "", _parse_hour(key), str(c), int(sc), int(n), m or "")
            for target, key, c, sc, n, m in session.execute(query)
        ]

    def _target_names(self, session: Session) -> dict[str, str]:
        known = session.execute(select(TargetRow.id, TargetRow.name_key, TargetRow.display_name)).all()
        return {ref: display for id_, key, display in known for ref in (id_, key)}

    def _bucket_key(self, column: Any, span: Span) -> ColumnElement[str]:
        """ "YYYY-MM-DD HH" (hours) or "YYYY-MM-DD" (days) of a UTC timestamp, on either database."""
        if self._postgres:
            pattern = "YYYY-MM-DD HH24" if span is Span.HOURS else "YYYY-MM-DD"
            return func.to_char(func.timezone("UTC", column), pattern)
        # SQLite keeps timestamps as "YYYY-MM-DD HH:MM:SS.ffffff" text in UTC.
        return func.substr(cast(column, String), 1, span.key_length)

    # --- rate limits ------------------------------------------------------------------------------

    def rate_limited(
        self, *, since: datetime, target: str | None = None, now: datetime | None = None
    ) -> list[RateLimited]:
        return self._limits(self._figures(since=since, now=now or utcnow()), since=since, target=target)

    def _limits(self, figures: _Figures, *, since: datetime, target: str | None) -> list[RateLimited]:
        """Rate-limit deferrals per target from the hours' counts; the waiting ones read live."""
        first = _floor_hour(since)
        wanted = figures.wanted(target)
        merged: dict[str, RateLimited] = {}

        def entry(raw: str) -> RateLimited:
            name = figures.shown(raw)
            return merged.setdefault(name, RateLimited(target=name, held=0, waiting=0))

        for hour in figures.hours:
            if hour.rate_limited and hour.hour >= first and wanted(hour.target):
                entry(hour.target).held += hour.rate_limited
        for raw, waiting in self._waiting_for_slots(since):
            if wanted(raw):
                entry(raw).waiting += waiting
        return [merged[name] for name in sorted(merged)]

    def _waiting_for_slots(self, since: datetime) -> list[tuple[str, int]]:
        """Steps deferred by a rate limit and waiting now (read through the index: few rows)."""
        step = RunStepRow
        query = (
            select(RunRow.target, func.count())
            .select_from(step)
            .join(RunRow, RunRow.id == step.run_id)
            .where(*_sends_between(since, None), step.status == StepStatus.DEFERRED, _noted())
            .group_by(RunRow.target)
        )
        with self._db.session() as session:
            return [(raw or "", int(n)) for raw, n in session.execute(query)]

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
            status = session.scalar(select(RunRow.status).where(RunRow.id == run_id))
            if status is None:
                raise NotFoundError(f"no run with id {run_id!r}", hint="find it on the Runs page")
            first, last = session.execute(
                select(func.min(step.updated_at), func.max(step.updated_at)).where(mine)
            ).one()
            if first is None:
                return RunTimeline(run_id=run_id, status=status, seconds=1, starts=[], counts=_zeros(0))
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
        timeline = _timeline(run_id, seconds, datetime.fromtimestamp(origin, first.tzinfo), rows)
        return timeline.model_copy(update={"status": status})

    def _slot(self, column: Any, origin: int, seconds: int) -> ColumnElement[int]:
        """Which bucket of `seconds` from `origin` (a Unix time) a timestamp falls in."""
        if self._postgres:
            return cast(func.floor((func.extract("epoch", column) - origin) / seconds), Integer)
        return (cast(func.strftime("%s", column), Integer) - origin) // seconds


def _message() -> ColumnElement[str]:
    message: ColumnElement[str] = RunStepRow.error["message"].as_string()
    return message


def _floor_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _parse_hour(key: str) -> datetime:
    return datetime.strptime(key, "%Y-%m-%d %H").replace(tzinfo=UTC)


def _sends_between(begin: datetime, end: datetime | None) -> list[ColumnElement[bool]]:
    step = RunStepRow
    bounds = [step.updated_at >= begin, step.activity == SEND_ACTIVITY]
    return bounds if end is None else [*bounds, step.updated_at < end]


def _stored_hours(session: Session, first: datetime, through: datetime) -> list[_Hour]:
    t = DeliveryHourRow
    columns = (t.target, t.hour, t.sent, t.failed, t.deferred, t.rate_limited)
    query = select(*columns).where(t.hour >= first, t.hour < through)
    return [_Hour(*row) for row in session.execute(query)]


def _stored_failures(session: Session, first: datetime, through: datetime) -> list[_Failures]:
    """The counted hours' failures, summed over the hours (dated `first`: reasons need no hour)."""
    t = DeliveryFailureRow
    query = (
        select(t.target, t.code, t.smtp_code, func.sum(t.count), func.max(t.example))
        .where(t.hour >= first, t.hour < through)
        .group_by(t.target, t.code, t.smtp_code)
    )
    return [
        _Failures(target, first, code, smtp, int(n), m or "")
        for target, code, smtp, n, m in session.execute(query)
    ]


def _hour_row(hour: _Hour) -> DeliveryHourRow:
    return DeliveryHourRow(
        hour=hour.hour,
        target=hour.target,
        sent=hour.sent,
        failed=hour.failed,
        deferred=hour.deferred,
        rate_limited=hour.rate_limited,
    )


def _failure_row(f: _Failures) -> DeliveryFailureRow:
    return DeliveryFailureRow(
        hour=f.hour, target=f.target, code=f.code, smtp_code=f.smtp_code, count=f.count, example=f.example
    )


def _series(window: _Window, figures: _Figures, target: str | None) -> DeliverySeries:
    keys = window.keys()
    index = {key: i for i, key in enumerate(keys)}
    wanted = figures.wanted(target)
    targets: dict[str, Counts] = {}
    for hour in figures.hours:
        at = index.get(hour.hour.strftime("%Y-%m-%d %H")[: window.span.key_length])
        if at is not None and wanted(hour.target):
            counts = targets.setdefault(figures.shown(hour.target), _zeros(len(keys)))
            counts.sent[at] += hour.sent
            counts.failed[at] += hour.failed
            counts.deferred[at] += hour.deferred
    return DeliverySeries(span=window.span, starts=window.starts, targets=dict(sorted(targets.items())))


def _reasons(figures: _Figures, since: datetime, target: str | None) -> list[FailureReason]:
    first = _floor_hour(since)
    wanted = figures.wanted(target)
    merged: dict[tuple[str, int], FailureReason] = {}
    for f in figures.failures:
        if f.hour >= first and wanted(f.target):
            smtp = f.smtp_code or None
            reason = merged.setdefault(
                (f.code, f.smtp_code), FailureReason(error_code=f.code, smtp_code=smtp, count=0, example="")
            )
            reason.count += f.count
            reason.example = max(reason.example, f.example)
    ranked = sorted(merged.values(), key=lambda r: (-r.count, r.error_code, r.smtp_code or 0))
    return ranked[:TOP_REASONS]


def _count_when(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return func.sum(case((condition, 1), else_=0))


def _noted() -> ColumnElement[bool]:
    """A rate limit held the step back at least once (its notes keep the latest such note)."""
    return cast(RunStepRow.notes, Text).like(f"%{RATE_LIMIT_NOTE}%")


def _was_deferred() -> ColumnElement[bool]:
    return or_(RunStepRow.status == StepStatus.DEFERRED, RunStepRow.attempts > 1)


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
