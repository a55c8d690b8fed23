"""Runs: created (with their steps) before anyone is told "accepted", listed, cancelled, retried."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import and_, bindparam, case, func, or_, select
from sqlalchemy.orm import Session

from mailwright.domain.runs import FINISHED_RUN_STATUS_LIST, RunStatus, SendState, StepStatus
from mailwright.domain.workflows import WorkflowDocument, coerce_inputs
from mailwright.errors import NotFoundError, ValidationError
from mailwright.ledger import RunLedger
from mailwright.metrics import RunGauges
from mailwright.services.common import find
from mailwright.services.run_pages import (
    Page,
    RunFilter,
    RunProgress,
    StepFilter,
    bounded,
    page_of,
    runs_query,
    step_counts,
    steps_query,
)
from mailwright.services.sending import SendEmailRequest
from mailwright.services.workers import LIVE_SECONDS
from mailwright.storage.db import Database
from mailwright.storage.tables import (
    RunRow,
    RunStepRow,
    StepInputRow,
    TargetRow,
    WorkerRow,
    WorkflowRow,
    name_key,
    utcnow,
)

ACTIVE = (RunStatus.QUEUED, RunStatus.RUNNING)
FINISHED = FINISHED_RUN_STATUS_LIST
BATCH_STEPS_SHOWN = 100
RUN_STATUSES = tuple(RunStatus)
# A step's status; "unknown": its message may or may not have been delivered (never resent on its own).
STEP_STATUSES = tuple(StepStatus)
SEND_STATES = (
    SendState.SENDING,
    SendState.SENT,
)  # filterable besides the statuses: a message being sent, or sent
_NOW = bindparam("now", type_=RunRow.not_before.type)
# The unfinished runs by status, and how many of them are due and not claimed (as the ledger's
# `due` finds them). The index ix_runs_status (status, not_before) confines it to the unfinished
# runs: it costs what the queue holds, not the history.
_GAUGES = (
    select(
        RunRow.status,
        RunRow.pool,
        func.count(),
        func.sum(
            case(
                (
                    and_(
                        or_(RunRow.not_before.is_(None), RunRow.not_before <= _NOW),
                        or_(RunRow.lease_expires_at.is_(None), RunRow.lease_expires_at < _NOW),
                    ),
                    1,
                ),
                else_=0,
            )
        ),
    )
    .where(RunRow.status.in_(ACTIVE))
    .group_by(RunRow.status, RunRow.pool)
)


class StepPublic(BaseModel):
    step: str  # "alert", or "each[2]" for a for_each item
    activity: str
    status: StepStatus
    attempts: int
    max_attempts: int
    started_at: datetime | None
    finished_at: datetime | None
    inputs: dict[str, Any] | None
    output: dict[str, Any] | None
    error: dict[str, Any] | None
    message_id: str | None
    send_state: SendState | None
    notes: list[str]


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """What the answer to a one-step send needs: the run's status and error, its step's output and error."""

    id: str
    status: str
    error: dict[str, Any] | None
    output: dict[str, Any] | None
    step_error: dict[str, Any] | None


class RunPublic(BaseModel):
    id: str
    workflow: str
    workflow_id: str | None
    status: str  # a RunStatus, or "preparing": a batch still being stored
    inputs: dict[str, Any]
    target: str | None
    account_key: str | None
    error: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    not_before: datetime | None
    trigger: dict[str, Any] | None = None  # the mail that started it: where from, uid, subject, sender
    pool: str | None = None  # the worker pool that executes it (its target's --worker-pool)
    # Why a queued run is not moving, e.g. "waiting for a worker in pool 'dmz'" (no live worker there).
    waiting: str | None = None
    # Batches only: `steps` is the first page; GET /api/v1/runs/{id}/steps pages through the rest.
    steps_total: int | None = None
    step_counts: dict[str, int] | None = None
    steps: list[StepPublic]


def trigger_summary(trigger: dict[str, Any] | None) -> dict[str, Any] | None:
    """Where the triggering mail came from and what it was, without its bodies and attachments."""
    if not trigger:
        return None
    message = trigger.get("message") or {}
    return {
        "target": trigger.get("target"),
        "folder": trigger.get("folder"),
        "uid": message.get("uid"),
        "uidl": message.get("uidl"),
        "message_id": message.get("message_id"),
        "from": message.get("from"),
        "subject": message.get("subject"),
        "attempt": trigger.get("attempt", 1),
    }


def _step_label(row: RunStepRow) -> str:
    return row.step_id if row.item_index is None else f"{row.step_id}[{row.item_index}]"


def _batch_inputs(session: Session, steps: list[RunStepRow]) -> dict[str, dict[str, Any]]:
    """The fields of batch messages, which live in `step_inputs` (not in their step rows)."""
    ids = [s.id for s in steps if s.inputs is None]
    if not ids:
        return {}
    query = select(StepInputRow.step_id, StepInputRow.inputs).where(StepInputRow.step_id.in_(ids))
    return {row.step_id: row.inputs for row in session.execute(query)}


def _waiting(session: Session, run: RunRow) -> str | None:
    """What a queued run of a worker pool waits for when no worker of that pool is alive."""
    if run.pool is None or run.status != RunStatus.QUEUED:
        return None
    alive = utcnow() - timedelta(seconds=LIVE_SECONDS)
    someone = session.execute(
        select(WorkerRow.id).where(WorkerRow.pool == run.pool, WorkerRow.heartbeat_at >= alive).limit(1)
    ).first()
    if someone is not None:
        return None
    return (
        f"waiting for a worker in pool {run.pool!r}: start one with `mailwright worker --pool {run.pool}` "
        "where the target's server can be reached"
    )


def _public(
    run: RunRow, steps: list[RunStepRow], *, inputs: dict[str, dict[str, Any]] | None = None
) -> RunPublic:
    inputs = inputs or {}
    return RunPublic(
        id=run.id,
        workflow=run.workflow_name,
        workflow_id=run.workflow_id,
        status=run.status,
        inputs=run.inputs,
        target=run.target,
        account_key=run.account_key,
        error=run.error,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        not_before=run.not_before,
        trigger=trigger_summary(run.trigger),
        pool=run.pool,
        steps=[
            StepPublic(
                step=_step_label(s),
                activity=s.activity,
                status=s.status,
                attempts=s.attempts,
                max_attempts=s.max_attempts,
                started_at=s.started_at,
                finished_at=s.finished_at,
                inputs=s.inputs if s.inputs is not None else inputs.get(s.id),
                output=s.output,
                error=s.error,
                message_id=s.message_id,
                send_state=s.send_state,
                notes=s.notes,
            )
            for s in steps
        ],
    )


def step_state_filter(state: str) -> Any:
    """The condition on steps for `--state` / `?state=`: a status, or a send state."""
    value = state.strip().lower()
    if value in STEP_STATUSES:
        return RunStepRow.status == value
    if value in SEND_STATES:
        return RunStepRow.send_state == value
    raise ValidationError(
        f"unknown step state {state!r}",
        field="state",
        hint=f"use one of: {', '.join((*STEP_STATUSES, *SEND_STATES))}",
    )


class RunWaiters:
    """Callers waiting for runs to finish, woken by the worker of this process (thread-safe).

    A run finished by a worker in another process is not signalled here; waiters
    therefore also look at the row now and then.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]] = {}
        # Called at each registration: starts (once) listening for runs finished in other processes.
        self.on_register: Callable[[], None] | None = None

    def register(self, run_id: str) -> asyncio.Future[None]:
        if self.on_register is not None:
            self.on_register()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._waiting.setdefault(run_id, []).append((loop, future))
        return future

    def discard(self, run_id: str, future: asyncio.Future[None]) -> None:
        with self._lock:
            left = [(loop, f) for loop, f in self._waiting.get(run_id, []) if f is not future]
            if left:
                self._waiting[run_id] = left
            else:
                self._waiting.pop(run_id, None)

    def finished(self, run_id: str) -> None:
        with self._lock:
            waiting = self._waiting.pop(run_id, [])
        for loop, future in waiting:
            loop.call_soon_threadsafe(_wake, future)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


_STATUS = select(RunRow.status).where(RunRow.id == bindparam("run_id"))
_SEND_OUTCOME = (
    select(RunRow.status, RunRow.error, RunStepRow.output, RunStepRow.error.label("step_error"))
    .outerjoin(RunStepRow, (RunStepRow.run_id == RunRow.id) & (RunStepRow.position == 0))
    .where(RunRow.id == bindparam("run_id"), RunStepRow.item_index.is_(None))
)


SEND_EMAIL_RUN = "Send Email"
_TARGET_EXISTS = select(TargetRow.id, TargetRow.settings).where(
    (TargetRow.name_key == bindparam("key")) | (TargetRow.id == bindparam("ref"))
)


def _check_target(session: Session, target: str | None) -> str | None:
    """404 unless `target` names (in any case) or is the id of a target; its worker pool."""
    if target is None:
        return None
    found = session.connection().execute(_TARGET_EXISTS, {"key": name_key(target), "ref": target}).first()
    if found is None:
        raise NotFoundError(f"no target named {target!r}", hint="list them with `mailwright targets list`")
    pool = (found.settings or {}).get("worker_pool")
    return pool if isinstance(pool, str) and pool else None


def _static_targets(document: WorkflowDocument) -> list[str]:
    """The targets the steps name as plain text (an expression is known only when the step runs)."""
    named = (step.with_.get("target") for step in document.steps)
    return [name for name in named if isinstance(name, str) and name.strip() and "{{" not in name]


def _run_pool(session: Session, document: WorkflowDocument, target: str | None) -> str | None:
    """The one worker pool the run's targets need; a run executes on one worker, so not two."""
    pools: dict[str, str] = {}
    for name in [*([target] if target else []), *_static_targets(document)]:
        pool = _check_target(session, name) if name == target else _pool_if_known(session, name)
        if pool is not None:
            pools.setdefault(pool, name)
    if len(pools) > 1:
        listed = ", ".join(f"{name!r} in pool {pool!r}" for pool, name in pools.items())
        raise ValidationError(
            f"this workflow's targets are in different worker pools ({listed}); a run executes on one worker",
            hint="split the workflow so that each part uses the targets of one pool, or put the "
            "targets in one pool (--worker-pool)",
        )
    return next(iter(pools), None)


def _pool_if_known(session: Session, name: str) -> str | None:
    """A step's target's pool; a name that is no target fails later, when the step runs, as before."""
    try:
        return _check_target(session, name)
    except NotFoundError:
        return None


class RunService:
    def __init__(self, db: Database, ledger: RunLedger | None = None) -> None:
        self._db = db
        self._ledger = ledger or RunLedger(db)  # every change of a run's state goes through it
        # The worker in this process (if any) wants to hear of new runs at once.
        self.on_queued: Callable[[str], None] | None = None
        self.waiters = RunWaiters()
        # Tells other processes that a run ended (Redis, when configured): their waiters wake.
        self.announce: Callable[[str], None] | None = None

    def start_workflow(
        self,
        ref: str,
        *,
        inputs: dict[str, Any] | None = None,
        target: str | None = None,
        account_key: str | None = None,
    ) -> RunPublic:
        result = self._db.group.write_sync(
            lambda session: self.create_workflow_run(
                session, ref, inputs=inputs, target=target, account_key=account_key
            )
        )
        self._notify(result.id)
        return result

    def create_workflow_run(
        self,
        session: Session,
        ref: str,
        *,
        inputs: dict[str, Any] | None = None,
        target: str | None = None,
        account_key: str | None = None,
    ) -> RunPublic:
        """`start_workflow` in the caller's transaction; the caller calls `notify` once committed."""
        workflow = find(session, WorkflowRow, ref, what="workflow")
        document = WorkflowDocument.model_validate(workflow.document)
        run, steps = self._create(
            session,
            document,
            inputs=coerce_inputs(document, inputs or {}),
            target=target or document.target,
            account_key=account_key or document.account_key,
            workflow_id=workflow.id,
        )
        return _public(run, steps)

    def create_triggered(
        self,
        session: Any,
        *,
        workflow_id: str,
        document: WorkflowDocument,
        inputs: dict[str, Any],
        trigger: dict[str, Any],
    ) -> str:
        """A run started by an email trigger, in the caller's transaction (which also records the mail).

        The caller calls `notify(run_id)` once that transaction is committed.
        """
        run, _steps = self._create(
            session,
            document,
            inputs=coerce_inputs(document, inputs),
            target=document.target,
            account_key=document.account_key,
            workflow_id=workflow_id,
            trigger=trigger,
        )
        return run.id

    def notify(self, run_id: str) -> None:
        self._notify(run_id)

    def finished(self, run_id: str) -> None:
        """A worker of this process ended the run: wake its waiters here and, if told how, elsewhere."""
        self.waiters.finished(run_id)
        if self.announce is not None:
            self.announce(run_id)

    def start_send_email(self, request: SendEmailRequest) -> RunPublic:
        """A one-step run: the message is on disk before the caller hears "accepted".

        Written through the group commit: concurrent requests share a transaction (and its
        disk sync) with each other and with the workers' writes.
        """
        run_id = self._db.group.write_sync(lambda session: self.create_send_email(session, request))
        self._notify(run_id)
        return self.get(run_id)

    def create_send_email(self, session: Session, request: SendEmailRequest) -> str:
        """`start_send_email` in the caller's transaction (its run id); the caller calls `notify`.

        The target is read here even when the caller resolved it a moment ago: its worker pool
        is read in the transaction that stores the run, so the run goes to a worker that may use it.

        Two Core INSERTs of a document whose shape is fixed here: the ORM's unit of work and
        the document's validation cost a single send more than the rest of its storing.
        """
        fields = request.model_dump(
            mode="json", by_alias=True, exclude={"target", "account_key"}, exclude_none=True
        )
        # literal: the caller's text is sent as written, never read as a template. The executor
        # validates the document when it claims the run.
        step = {"id": "send", "activity": "send_email", "literal": True, "with": fields}
        pool = _check_target(session, request.target)
        return self._ledger.add_one_step_run(
            session,
            name=SEND_EMAIL_RUN,
            document={"name": SEND_EMAIL_RUN, "steps": [step]},
            step_id="send",
            activity="send_email",
            target=request.target,
            account_key=request.account_key,
            pool=pool,
        )

    def _create(
        self,
        session: Any,
        document: WorkflowDocument,
        *,
        inputs: dict[str, Any],
        target: str | None,
        account_key: str | None,
        workflow_id: str | None,
        trigger: dict[str, Any] | None = None,
    ) -> tuple[RunRow, list[RunStepRow]]:
        """The run and its step rows, flushed (the caller's transaction commits them)."""
        pool = _run_pool(session, document, target)
        return self._ledger.add_run(
            session,
            workflow_id=workflow_id,
            name=document.name,
            document=document.model_dump(mode="json", by_alias=True, exclude_unset=True),
            steps=[(step.id, step.activity, step.retries + 1) for step in document.steps],
            inputs=inputs,
            target=target,
            account_key=account_key,
            trigger=trigger,
            pool=pool,
        )

    def _notify(self, run_id: str) -> None:
        if self.on_queued is not None:
            self.on_queued(run_id)

    def status(self, run_id: str) -> str:
        """The run's status alone: what a waiter looks at while the run is not finished."""
        with self._db.engine.connect() as connection:
            status = connection.execute(_STATUS, {"run_id": run_id}).scalar()
        if status is None:
            raise NotFoundError(f"no run with id {run_id!r}", hint="list them with `mailwright runs list`")
        return str(status)

    def send_outcome(self, run_id: str) -> SendOutcome:
        """A one-step run's status with its step's output and error, in one statement.

        What `POST /send-email` answers with: building the whole `RunPublic` cost a
        third of the API's time per send under load.
        """
        with self._db.engine.connect() as connection:
            row = connection.execute(_SEND_OUTCOME, {"run_id": run_id}).first()
        if row is None:
            raise NotFoundError(f"no run with id {run_id!r}", hint="list them with `mailwright runs list`")
        return SendOutcome(
            id=run_id, status=row.status, error=row.error, output=row.output, step_error=row.step_error
        )

    def get(self, run_id: str, *, state: str | None = None) -> RunPublic:
        """A run with its steps; `state` keeps only the steps in that status or send state."""
        with self._db.session() as session:
            return self._get(session, run_id, state=state)

    def _row(self, session: Session, run_id: str) -> RunRow:
        run = session.get(RunRow, run_id.strip())
        if run is None:
            raise NotFoundError(f"no run with id {run_id!r}", hint="list the runs on the Runs page")
        return run

    def summary(self, run_id: str) -> RunPublic:
        """A run without its steps; a batch's with the counts of its steps by status."""
        with self._db.session() as session:
            run = self._row(session, run_id)
            public = _public(run, [])
            public.waiting = _waiting(session, run)
            if run.document.get("kind") == "batch":
                public.step_counts = step_counts(session, run.id)
                public.steps_total = sum(public.step_counts.values())
            return public

    def steps_page(
        self, run_id: str, where: StepFilter, *, offset: int = 0, limit: int = 50
    ) -> Page[StepPublic]:
        """One page of the run's steps in order, of one status (or send state) and matching a search."""
        offset, limit = bounded(offset, limit)
        state = step_state_filter(where.state) if where.state else None
        with self._db.session() as session:
            run = self._row(session, run_id)
            rows, total = page_of(session, steps_query(run.id, where, state), offset=offset, limit=limit)
            steps = _public(run, list(rows), inputs=_batch_inputs(session, list(rows))).steps
        return Page(items=steps, total=total, offset=offset, limit=limit)

    def progress(self, run_id: str) -> RunProgress:
        """The run's status and its steps by status: two small queries, whatever the batch's size."""
        with self._db.session() as session:
            run = self._row(session, run_id)
            return RunProgress(status=run.status, counts=step_counts(session, run.id))

    def page_runs(self, where: RunFilter, *, offset: int = 0, limit: int = 50) -> Page[RunPublic]:
        """A page of runs, newest first, with how many runs match in all."""
        offset, limit = bounded(offset, limit)
        query = runs_query(where).order_by(RunRow.created_at.desc(), RunRow.id)
        with self._db.session() as session:
            rows, total = page_of(session, query, offset=offset, limit=limit)
            return Page(items=[_public(r, []) for r in rows], total=total, offset=offset, limit=limit)

    def _runs(self, where: RunFilter, *, offset: int, limit: int) -> list[RunPublic]:
        offset, limit = bounded(offset, limit)
        query = runs_query(where).order_by(RunRow.created_at.desc(), RunRow.id)
        with self._db.session() as session:
            return [_public(r, []) for r in session.scalars(query.offset(offset).limit(limit))]

    def _get(self, session: Any, run_id: str, *, state: str | None = None) -> RunPublic:
        run = self._row(session, run_id)
        query = (
            select(RunStepRow)
            .where(RunStepRow.run_id == run.id)
            .order_by(RunStepRow.position, RunStepRow.item_index)
        )
        if state is not None:
            query = query.where(step_state_filter(state))
        if run.document.get("kind") != "batch":
            public = _public(run, list(session.scalars(query).all()))
            public.waiting = _waiting(session, run)
            return public
        # A batch may have 100,000 steps: the first page and the counts; the rest page by page.
        steps = list(session.scalars(query.limit(BATCH_STEPS_SHOWN)).all())
        public = _public(run, steps, inputs=_batch_inputs(session, steps))
        public.waiting = _waiting(session, run)
        by_status = select(RunStepRow.status, func.count()).where(RunStepRow.run_id == run.id)
        counts = session.execute(by_status.group_by(RunStepRow.status)).all()
        public.step_counts = {status: int(n) for status, n in counts}
        public.steps_total = sum(public.step_counts.values())
        return public

    def list_runs(
        self,
        *,
        limit: int = 50,
        status: str | None = None,
        workflow: str | None = None,
        target: str | None = None,
        offset: int = 0,
    ) -> list[RunPublic]:
        """Runs newest first (no count of all: the API's list; `page_runs` counts them)."""
        return self._runs(
            RunFilter(status=status, workflow=workflow, target=target), offset=offset, limit=limit
        )

    def due(self, *, limit: int = 100) -> list[str]:
        """Runs a worker should take now: queued and due, or running with an expired lease."""
        return self._ledger.due(limit=limit)

    def with_free_ranges(self, *, limit: int = 100) -> list[tuple[str, str | None]]:
        """Batch runs that other workers can help with now (ledger/ranges.py): a coordinator holds
        the run, and a range of its messages is free. Hint them, as `due` runs are, so that
        more workers send them; an executor handed such a run sends its free ranges. With each,
        its worker pool."""
        return self._ledger.batches.ranges.runs_with_free_ranges(limit=limit)

    def cancel(self, run_id: str) -> RunPublic:
        """Ask the run to stop; a run nobody executes is cancelled at once."""
        return self.get(self._ledger.cancel(run_id))

    def retry(self, run_id: str, *, include_unknown: bool = False) -> RunPublic:
        """Queue a failed or cancelled run again; steps that succeeded are not run twice.

        Steps whose outcome is unknown (their message may have been delivered) are
        left as they are unless `include_unknown`: then they are sent again, with
        the Message-ID they had, so that mail clients can fold a second copy.
        """
        result = self.get(self._ledger.retry(run_id, include_unknown=include_unknown))
        self._notify(result.id)
        return result

    def gauges(self) -> RunGauges:
        """The runs queued and running, and the queue depth: what `/metrics` reads at each scrape."""
        with self._db.session() as session:
            rows = session.execute(_GAUGES, {"now": utcnow()}).all()
        by_status: dict[tuple[str, str], int] = {(status.value, ""): 0 for status in ACTIVE}
        due: dict[str, int] = {"": 0}
        for status, pool, count, due_here in rows:
            by_status[(str(status), pool or "")] = int(count)
            due[pool or ""] = due.get(pool or "", 0) + int(due_here or 0)
        return RunGauges(by_status=by_status, due=due)
