"""The run ledger: the one owner of the state of runs and their steps.

Claim (which bumps the run's lease epoch, the fencing token), settle, defer,
release, cancel and retry all happen here; the executor, the batch runner
(through `ledger/batch.py`) and the services ask, and never write a run's or a
step's state themselves. Every write made for a claimed run is fenced by its
lease (ledger/lease.py) and goes through the group commit (storage/group.py):
a write that matches nothing means the lease is lost, `LeaseLostError` is
raised, and the worker stops sending.

The statements a single send runs are built once, here: composing one costs
SQLAlchemy 40 to 200 µs, more than SQLite takes to run it, and a single send runs
about ten. They are executed on the session's connection, as Core statements: the
ORM's bulk-update path costs more again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import and_, bindparam, case, func, insert, null, or_, select, update
from sqlalchemy.orm import Session

from mailwright import metrics
from mailwright.domain.runs import (
    OPEN_STEP_STATUSES,
    RunStatus,
    SendState,
    StepStatus,
)
from mailwright.domain.workflows import Step
from mailwright.errors import ConflictError, NotFoundError
from mailwright.ledger.batch import BatchLedger
from mailwright.ledger.lease import Lease
from mailwright.ledger.outcomes import CRASH_WHY, error_record, rate_limit_notes, unknown_error, unknown_note
from mailwright.storage.db import Database
from mailwright.storage.tables import RunRow, RunStepRow, new_id, utcnow

T = TypeVar("T")

ACTIVE_RUN_STATUSES = (RunStatus.QUEUED, RunStatus.RUNNING)
# Steps a retried run takes again (`unknown` ones only when asked).
_RETRIED_STEPS = (
    StepStatus.FAILED,
    StepStatus.CANCELLED,
    StepStatus.SKIPPED,
    StepStatus.RUNNING,
    StepStatus.DEFERRED,
)
# Given a failed attempt's exception, its attempt number and the most allowed: the seconds to
# wait before trying again, or None when the step fails for good (the engine's retry policy).
RetryWait = Callable[[BaseException, int, int], float | None]


def _closing(status: Any, error: Any, now: Any) -> dict[str, Any]:
    """A run's fields once it ends: its final status, and free (no lease, nothing to wait for)."""
    return {
        "status": status,
        "error": error,
        "finished_at": now,
        "lease_owner": None,
        "lease_expires_at": None,
        "not_before": None,
    }


_NOW = bindparam("now", type_=RunRow.started_at.type)
# On PostgreSQL the run's row is locked with SKIP LOCKED: a row locked by a worker frozen inside
# a transaction (SIGSTOP, a VM pause) is not waited for, which would hold every write queued
# behind this claim in the group commit. It is tried again at the next poll; the frozen
# worker's transaction is ended by idle_in_transaction_session_timeout (storage/db.py).
_UNLOCKED_RUN = (
    select(RunRow.id).where(RunRow.id == bindparam("run_id")).with_for_update(skip_locked=True)
).scalar_subquery()
_CLAIM = (
    update(RunRow)
    .where(
        RunRow.id == _UNLOCKED_RUN,
        RunRow.status.in_(ACTIVE_RUN_STATUSES),
        or_(RunRow.not_before.is_(None), RunRow.not_before <= _NOW),
        or_(RunRow.lease_expires_at.is_(None), RunRow.lease_expires_at < _NOW),
        # Only a worker of the run's pool may take it (its target is reachable from there alone).
        func.coalesce(RunRow.pool, "") == bindparam("pool_key"),
    )
    .values(
        lease_owner=bindparam("owner"),
        lease_expires_at=bindparam("expires", type_=RunRow.lease_expires_at.type),
        lease_epoch=RunRow.lease_epoch + 1,  # the fencing token of this claim
        status=RunStatus.RUNNING,
        started_at=func.coalesce(RunRow.started_at, _NOW),
    )
    .execution_options(synchronize_session=False)  # no row is loaded before it
)
# Who held the run before a claim: a claim of a running run with a holder takes over an expired lease.
_HELD_BY = select(RunRow.status, RunRow.lease_owner).where(RunRow.id == bindparam("run_id"))
_CLAIMED_RUN = select(
    RunRow.document,
    RunRow.inputs,
    RunRow.target,
    RunRow.account_key,
    RunRow.trigger,
    RunRow.cancel_requested,
    RunRow.lease_epoch,
).where(RunRow.id == bindparam("run_id"))
_CLAIMED_STEPS = select(RunStepRow.position, RunStepRow.status, RunStepRow.output, RunStepRow.error).where(
    RunStepRow.run_id == bindparam("run_id"), RunStepRow.item_index.is_(None)
)
_STEPS_AT = (
    select(RunStepRow)
    .where(RunStepRow.run_id == bindparam("run_id"), RunStepRow.position == bindparam("position"))
    .order_by(RunStepRow.item_index)
)
_TARGET_AND_KEY = select(RunRow.target, RunRow.account_key).where(RunRow.id == bindparam("run_id"))
_CANCEL_REQUESTED = select(RunRow.cancel_requested).where(RunRow.id == bindparam("run_id"))
# The end of a run that succeeded, without loading it.
_SUCCEED = (
    update(RunRow)
    .where(RunRow.id == bindparam("run_id"))
    .values(_closing(RunStatus.SUCCEEDED, null(), _NOW))
    .execution_options(synchronize_session=False)
)
# The end of a run that did not succeed (its error is a parameter).
_CLOSE = (
    update(RunRow)
    .where(RunRow.id == bindparam("run_id"))
    .values(_closing(bindparam("final"), bindparam("final_error", type_=RunRow.error.type), _NOW))
    .execution_options(synchronize_session=False)
)
_CLOSE_WITHOUT_ERROR = (
    update(RunRow)
    .where(RunRow.id == bindparam("run_id"))
    .values(_closing(bindparam("final"), null(), _NOW))
    .execution_options(synchronize_session=False)
)
# The steps a run that ends without succeeding leaves behind: cancelled or skipped with it.
_CLOSE_OPEN_STEPS = (
    update(RunStepRow)
    .where(RunStepRow.run_id == bindparam("at_run"), RunStepRow.status.in_(OPEN_STEP_STATUSES))
    .values(status=bindparam("left"), updated_at=_NOW)
    .execution_options(synchronize_session=False)
)
# Given back (a graceful stop), or until a retry is due (`not_before`): queued, free for any worker.
_GIVE_BACK = (
    update(RunRow)
    .where(RunRow.id == bindparam("run_id"))
    .values(status=RunStatus.QUEUED, lease_owner=None, lease_expires_at=None)
    .execution_options(synchronize_session=False)
)
_GIVE_BACK_UNTIL = _GIVE_BACK.values(
    not_before=bindparam("due", type_=RunRow.not_before.type), dispatched_at=None
)
# Before DATA: the state and the Message-ID a retry must send again, in one statement.
_MARK_SENDING = (
    update(RunStepRow)
    .where(RunStepRow.id == bindparam("row_id"))
    .values(
        send_state=SendState.SENDING,
        message_id=func.coalesce(RunStepRow.message_id, bindparam("chosen")),
    )
    .execution_options(synchronize_session=False)
)
_START_ATTEMPT = (
    update(RunStepRow)
    .where(RunStepRow.id == bindparam("row_id"))
    .values(
        attempts=bindparam("attempt"),
        max_attempts=bindparam("most"),
        status=StepStatus.RUNNING,
        started_at=func.coalesce(RunStepRow.started_at, _NOW),
        updated_at=_NOW,
    )
    .execution_options(synchronize_session=False)
)
_START_ATTEMPT_WITH_INPUTS = _START_ATTEMPT.values(inputs=bindparam("rendered", type_=RunStepRow.inputs.type))
_STEP_COLUMNS = (
    RunStepRow.id,
    RunStepRow.status,
    RunStepRow.send_state,
    RunStepRow.attempts,
    RunStepRow.message_id,
    RunStepRow.inputs,
)
_SENT_IF_SENDING = case(
    (RunStepRow.send_state == SendState.SENDING, SendState.SENT), else_=RunStepRow.send_state
)
_SETTLED = (RunStepRow.output, RunStepRow.error)
# A one-step run (a Send Email request): two Core INSERTs, built once.
_INSERT_RUN = insert(RunRow).values(
    status=RunStatus.QUEUED, cancel_requested=False, lease_epoch=0, workflow_id=None
)
_INSERT_STEP = insert(RunStepRow).values(
    position=0,
    item_index=None,
    status=StepStatus.PENDING,
    attempts=0,
    max_attempts=Step.model_fields["retries"].default + 1,
    notes=[],
    updated_at=bindparam("now"),
)


def _at_step(item: bool) -> tuple[Any, ...]:
    """The WHERE clause of a step's row: the parent's (or plain step's), or a for_each item's."""
    # Named apart from the columns: in an UPDATE, a parameter named as a column would set it.
    index = RunStepRow.item_index == bindparam("at_index") if item else RunStepRow.item_index.is_(None)
    return (RunStepRow.run_id == bindparam("at_run"), RunStepRow.position == bindparam("at_position"), index)


_READ_STEP = {item: select(*_STEP_COLUMNS).where(*_at_step(item)) for item in (False, True)}
# A step's result: one statement per set of columns written (and parent or item), built once.
_SETTLE: dict[tuple[frozenset[str], bool, bool], Any] = {}


def _settle_statement(columns: frozenset[str], item: bool, sent: bool) -> Any:
    key = (columns, item, sent)
    if key not in _SETTLE:
        values: dict[str, Any] = {
            c: bindparam(f"new_{c}", type_=RunStepRow.__table__.c[c].type) for c in columns
        }
        if sent:
            values["send_state"] = _SENT_IF_SENDING
        _SETTLE[key] = update(RunStepRow).where(*_at_step(item)).values(values).returning(*_SETTLED)
    return _SETTLE[key]


@dataclass(frozen=True, slots=True)
class Claim:
    """A run this worker now holds: its lease, and the fields of its row that executing it reads."""

    lease: Lease
    document: dict[str, Any]
    inputs: dict[str, Any]
    target: str | None
    account_key: str | None
    trigger: dict[str, Any] | None
    cancel_requested: bool
    steps: dict[int, dict[str, Any]]  # position -> the step's status, output and error


@dataclass(frozen=True, slots=True)
class Attempt:
    """An attempt of a step, counted: its row, and the Message-ID stored for it (if any)."""

    row_id: str
    message_id: str | None


@dataclass(frozen=True, slots=True)
class FailedAttempt:
    """A failed attempt as recorded: the step's status, its error, the wait before a retry (or None)."""

    status: StepStatus
    error: dict[str, Any]
    wait: float | None


@dataclass(frozen=True, slots=True)
class ItemResult:
    status: StepStatus
    output: dict[str, Any] | None
    error: dict[str, Any] | None


def _due(now: datetime) -> tuple[Any, ...]:
    """A run a worker should take at `now`: active, its wait over, and nobody's live lease on it."""
    return (
        RunRow.status.in_(ACTIVE_RUN_STATUSES),
        or_(RunRow.not_before.is_(None), RunRow.not_before <= now),
        or_(RunRow.lease_expires_at.is_(None), RunRow.lease_expires_at < now),
    )


class RunLedger:
    """Reads and writes the state of runs and steps; every write for a claimed run is fenced."""

    def __init__(self, db: Database, *, range_size: int | None = None) -> None:
        self._db = db
        self.batches = BatchLedger(db, range_size=range_size)

    # --- new runs (in the caller's transaction, which commits them) --------------------------

    @staticmethod
    def add_run(
        session: Session,
        *,
        workflow_id: str | None,
        name: str,
        document: dict[str, Any],
        steps: list[tuple[str, str, int]],
        inputs: dict[str, Any],
        target: str | None,
        account_key: str | None,
        trigger: dict[str, Any] | None = None,
        pool: str | None = None,
    ) -> tuple[RunRow, list[RunStepRow]]:
        """A queued run and its pending steps (id, activity, most attempts each), flushed.

        `trigger`: the mail that started it, for a run started by an email trigger."""
        run = RunRow(
            id=new_id(),  # known now, so that the run and its steps are one flush
            workflow_id=workflow_id,
            workflow_name=name,
            document=document,
            status=RunStatus.QUEUED,
            inputs=inputs,
            target=target,
            account_key=account_key,
            trigger=trigger,
            cancel_requested=False,
            pool=pool,
        )
        session.add(run)
        rows = [
            RunStepRow(
                run_id=run.id,
                position=position,
                step_id=step_id,
                item_index=None,
                activity=activity,
                status=StepStatus.PENDING,
                max_attempts=max_attempts,
                notes=[],
            )
            for position, (step_id, activity, max_attempts) in enumerate(steps)
        ]
        session.add_all(rows)
        session.flush()
        return run, rows

    @staticmethod
    def add_one_step_run(
        session: Session,
        *,
        name: str,
        document: dict[str, Any],
        step_id: str,
        activity: str,
        target: str | None,
        account_key: str | None,
        pool: str | None = None,
    ) -> str:
        """A queued run of one pending step (the step's default attempts); its id.

        Two Core INSERTs: the ORM's unit of work costs a single send more than the rest of
        its storing.
        """
        run_id, now = new_id(), utcnow()
        connection = session.connection()
        connection.execute(
            _INSERT_RUN,
            {
                "id": run_id,
                "workflow_name": name,
                "document": document,
                "inputs": {},
                "target": target,
                "account_key": account_key,
                "created_at": now,
                "pool": pool,
            },
        )
        connection.execute(
            _INSERT_STEP,
            {"id": new_id(), "run_id": run_id, "step_id": step_id, "activity": activity, "now": now},
        )
        return run_id

    # --- claiming ----------------------------------------------------------------------------

    def try_claim(self, run_id: str, *, owner: str, duration: timedelta, pool: str | None = None) -> bool:
        """Take the run if it is due and nobody holds a live lease on it (no lease is kept)."""
        with self._db.session() as session:
            row = self._claim_row(session, run_id, owner=owner, duration=duration, pool=pool)
        if row is not None and row[2]:
            metrics.lease_taken_over()  # counted once committed: a write may be applied twice
        return row is not None

    async def claim(
        self, run_id: str, *, owner: str, duration: timedelta, pool: str | None = None
    ) -> Claim | None:
        """Claim the run (a new lease epoch) and read what running it needs, in one transaction.

        None if it is not due, another worker holds a live lease on it, or it belongs to
        another worker pool than `pool`.
        """
        acquired_at = time.monotonic()  # before the lease's clock starts in the database
        row = await self._db.group.write(
            lambda session: self._claim_row(session, run_id, owner=owner, duration=duration, pool=pool)
        )
        if row is None:
            return None
        run, steps, took_over = row
        if took_over:
            metrics.lease_taken_over()
        lease = Lease(
            self._db,
            run_id=run_id,
            owner=owner,
            epoch=run.lease_epoch,
            duration=duration,
            acquired_at=acquired_at,
        )
        return Claim(
            lease=lease,
            document=run.document,
            inputs=dict(run.inputs),
            target=run.target,
            account_key=run.account_key,
            trigger=run.trigger,
            cancel_requested=run.cancel_requested,
            steps={s.position: {"status": s.status, "output": s.output, "error": s.error} for s in steps},
        )

    @staticmethod
    def _claim_row(
        session: Session, run_id: str, *, owner: str, duration: timedelta, pool: str | None
    ) -> Any:
        now = utcnow()
        params = {
            "run_id": run_id,
            "now": now,
            "owner": owner,
            "expires": now + duration,
            "pool_key": pool or "",
        }
        connection = session.connection()
        held = connection.execute(_HELD_BY, {"run_id": run_id}).first()
        if not connection.execute(_CLAIM, params).rowcount:
            return None
        run = connection.execute(_CLAIMED_RUN, {"run_id": run_id}).one()
        # Nobody else changes the steps while the lease is ours: read once, here.
        steps = connection.execute(_CLAIMED_STEPS, {"run_id": run_id}).all()
        took_over = held is not None and held.status == RunStatus.RUNNING and held.lease_owner is not None
        return run, steps, took_over

    async def _write(self, lease: Lease, apply: Callable[[Session], T]) -> T:
        """Apply a write of the run's state, fenced by its lease, in the next group commit."""
        return await self._db.group.write(apply, fence=lease.fence_in)

    # --- reading a claimed run ---------------------------------------------------------------

    def cancel_requested(self, run_id: str) -> bool:
        with self._db.engine.connect() as connection:
            return bool(connection.execute(_CANCEL_REQUESTED, {"run_id": run_id}).scalar())

    def target_and_key(self, run_id: str) -> tuple[str | None, str | None]:
        with self._db.engine.connect() as connection:
            row = connection.execute(_TARGET_AND_KEY, {"run_id": run_id}).one()
        return row.target, row.account_key

    def stored_items(self, run_id: str, position: int) -> list[Any] | None:
        """A for_each step's list as an earlier execution stored it, or None if it was not."""
        with self._db.session() as session:
            rows = list(session.scalars(_STEPS_AT, {"run_id": run_id, "position": position}).all())
            parent = next(r for r in rows if r.item_index is None)
            if any(r.item_index is not None for r in rows):
                return list((parent.inputs or {}).get("items", []))
            return None

    def item_result(self, run_id: str, position: int, index: int) -> ItemResult:
        with self._db.session() as session:
            rows = session.scalars(_STEPS_AT, {"run_id": run_id, "position": position}).all()
            row = next(r for r in rows if r.item_index == index)
            return ItemResult(status=StepStatus(row.status), output=row.output, error=row.error)

    # --- steps of a claimed run ---------------------------------------------------------------

    async def store_items(
        self,
        lease: Lease,
        *,
        position: int,
        step_id: str,
        activity: str,
        max_attempts: int,
        items: list[Any],
    ) -> None:
        """A for_each step's list, rendered once, and one pending row per item."""

        def apply(session: Session) -> None:
            rows = session.scalars(_STEPS_AT, {"run_id": lease.run_id, "position": position}).all()
            parent = next(r for r in rows if r.item_index is None)
            parent.inputs = {"items": items}
            parent.status = StepStatus.RUNNING
            parent.started_at = utcnow()
            for index in range(len(items)):
                session.add(
                    RunStepRow(
                        run_id=lease.run_id,
                        position=position,
                        step_id=step_id,
                        item_index=index,
                        activity=activity,
                        status=StepStatus.PENDING,
                        max_attempts=max_attempts,
                    )
                )

        await self._write(lease, apply)

    async def start_attempt(
        self,
        lease: Lease,
        *,
        position: int,
        index: int | None,
        max_attempts: int,
        inputs: dict[str, Any] | None,
    ) -> Attempt | StepStatus:
        """Count the attempt and record its inputs (as rendered; None keeps what is stored).

        Or the status of a step that an earlier execution finished: SUCCEEDED, or UNKNOWN
        when that execution stopped while the message was being sent (recorded so here).
        """
        run_id = lease.run_id

        def apply(session: Session) -> Attempt | StepStatus:
            connection = session.connection()
            where = {"at_run": run_id, "at_position": position, "at_index": index}
            row = connection.execute(_READ_STEP[index is not None], where).one()
            if row.status in (StepStatus.SUCCEEDED, StepStatus.UNKNOWN):
                return StepStatus(row.status)
            if row.send_state == SendState.SENDING:
                _crashed_while_sending(session, run_id, row.id)
                return StepStatus.UNKNOWN
            params: dict[str, Any] = {
                "row_id": row.id,
                "attempt": row.attempts + 1,
                "most": max_attempts,
                "now": utcnow(),
            }
            recorded = _recorded_inputs(row.inputs, index, inputs)
            if recorded is None:
                connection.execute(_START_ATTEMPT, params)
            else:
                connection.execute(_START_ATTEMPT_WITH_INPUTS, {**params, "rendered": recorded})
            return Attempt(row_id=row.id, message_id=row.message_id)

        return await self._write(lease, apply)

    async def mark_sending(self, lease: Lease, *, row_id: str, message_id: str | None) -> None:
        """Durably "sending", with the Message-ID a retry must send again: just before DATA."""
        params = {"row_id": row_id, "chosen": message_id}
        await self._write(lease, lambda session: session.connection().execute(_MARK_SENDING, params))

    async def complete_item(self, lease: Lease, *, row_id: str, output: dict[str, Any]) -> None:
        """A for_each item's attempt succeeded."""

        def apply(session: Session) -> None:
            row = session.get(RunStepRow, row_id)
            assert row is not None
            row.status = StepStatus.SUCCEEDED
            row.output = output
            row.error = None
            if row.send_state == SendState.SENDING:
                row.send_state = SendState.SENT
            row.finished_at = row.updated_at = utcnow()

        await self._write(lease, apply)

    async def record_failure(
        self,
        lease: Lease,
        *,
        row_id: str,
        exc: BaseException,
        message_id: str | None,
        may_have_arrived: bool,
        retry_wait: RetryWait,
    ) -> FailedAttempt:
        """A failed attempt on its step's row: unknown, to be retried (deferred), or failed.

        `may_have_arrived`: whether the message may have been delivered if the step was
        marked sending; `retry_wait` decides, for a failure known not to have arrived.
        """
        return await self._write(
            lease,
            lambda session: _record_failure(
                session,
                row_id,
                exc,
                message_id=message_id,
                may_have_arrived=may_have_arrived,
                retry_wait=retry_wait,
            ),
        )

    async def hold_for_rate_limit(self, lease: Lease, *, row_id: str, note: str) -> None:
        """Held back by the target's rate limit: not an attempt and not a failure; the step waits."""

        def apply(session: Session) -> None:
            row = session.get(RunStepRow, row_id)
            assert row is not None
            row.attempts = max(0, row.attempts - 1)
            row.status = StepStatus.DEFERRED
            row.notes = rate_limit_notes(row.notes, note)
            row.updated_at = utcnow()

        await self._write(lease, apply)

    async def settle_step(
        self,
        lease: Lease,
        *,
        position: int,
        status: StepStatus,
        output: Any,
        error: dict[str, Any] | None,
        sent: bool = False,
        closes: bool = False,
    ) -> dict[str, Any]:
        """Record a step's outcome (the parent row of a for_each); its record for later steps.

        `sent`: the attempt succeeded, so what it sent (if anything) is known to have arrived.
        `closes` (and it succeeded): the run succeeds in the same write.
        """
        now = utcnow()
        values: dict[str, Any] = {"status": status, "finished_at": now, "updated_at": now}
        if output is not None:
            values["output"] = output if isinstance(output, dict) else {"items": output}
        if error is not None:
            values["error"] = error
        if sent:
            values["error"] = None  # and its send state, from "sending" to "sent"
        statement = _settle_statement(frozenset(values), False, sent)
        params = {
            "at_run": lease.run_id,
            "at_position": position,
            "at_index": None,
            **{f"new_{column}": value for column, value in values.items()},
        }
        closing = closes and status == StepStatus.SUCCEEDED

        def apply(session: Session) -> dict[str, Any]:
            row = session.connection().execute(statement, params).one()
            if closing:
                session.connection().execute(_SUCCEED, {"run_id": lease.run_id, "now": utcnow()})
            return {"status": status, "output": row.output, "error": row.error}

        settled = await self._write(lease, apply)
        if closing:
            metrics.run_finished(RunStatus.SUCCEEDED)
        return settled

    # --- the run as a whole -------------------------------------------------------------------

    async def release(self, lease: Lease) -> None:
        """Give the run back at once (a graceful stop); the next worker resumes it."""
        params = {"run_id": lease.run_id}
        await self._write(lease, lambda session: session.connection().execute(_GIVE_BACK, params))

    async def defer(self, lease: Lease, *, wait: float) -> None:
        """Release the run until a retry is due in `wait` seconds; any worker may then take it."""
        params = {"run_id": lease.run_id, "due": utcnow() + timedelta(seconds=wait)}
        await self._write(lease, lambda session: session.connection().execute(_GIVE_BACK_UNTIL, params))

    async def finish(
        self, lease: Lease, status: RunStatus, error: dict[str, Any] | None, *, close_steps: bool = True
    ) -> None:
        """The run's end, and free. Unless it succeeded, its steps not run (when `close_steps`)
        are cancelled with it (or skipped, when it failed)."""
        run_id = lease.run_id

        def apply(session: Session) -> None:
            connection = session.connection()
            now = utcnow()
            if status == RunStatus.SUCCEEDED:  # every step is done: only the run's row changes
                connection.execute(_SUCCEED, {"run_id": run_id, "now": now})
                return
            if close_steps:
                left = StepStatus.CANCELLED if status == RunStatus.CANCELLED else StepStatus.SKIPPED
                connection.execute(_CLOSE_OPEN_STEPS, {"at_run": run_id, "left": left, "now": now})
            if error is None:  # SQL NULL, as a run that never failed has
                connection.execute(_CLOSE_WITHOUT_ERROR, {"run_id": run_id, "final": status, "now": now})
            else:
                connection.execute(
                    _CLOSE, {"run_id": run_id, "final": status, "final_error": error, "now": now}
                )

        await self._write(lease, apply)
        metrics.run_finished(status)

    # --- what the services ask -----------------------------------------------------------------

    def due(self, *, limit: int = 100, pool: str | None = None) -> list[str]:
        """Runs a worker of `pool` should take now: queued and due, or running with an expired lease."""
        now = utcnow()
        with self._db.session() as session:
            query = (
                select(RunRow.id)
                .where(*_due(now), func.coalesce(RunRow.pool, "") == (pool or ""))
                .order_by(RunRow.created_at)
                .limit(limit)
            )
            return list(session.scalars(query).all())

    def unhinted(self, *, older_than: timedelta, limit: int = 500) -> list[tuple[str, str | None]]:
        """Due runs that no queue message announced in the last `older_than`, of every pool.

        Each is marked hinted in the same statement that picks it, so of several sweepers
        only one re-announces a run: (run id, pool) for those this caller took.
        """
        now = utcnow()
        stale = now - older_than
        with self._db.session() as session:
            candidates = session.execute(
                select(RunRow.id, RunRow.pool, RunRow.dispatched_at)
                .where(
                    *_due(now),
                    or_(
                        RunRow.dispatched_at.is_(None),
                        RunRow.dispatched_at < stale,
                        # hinted before it became due (a retry's wait): announce it again now
                        and_(RunRow.not_before.is_not(None), RunRow.dispatched_at < RunRow.not_before),
                    ),
                )
                .order_by(RunRow.created_at)
                .limit(limit)
            ).all()
            taken: list[tuple[str, str | None]] = []
            for run_id, pool, seen in candidates:
                unchanged = RunRow.dispatched_at.is_(None) if seen is None else RunRow.dispatched_at == seen
                mark = update(RunRow).where(RunRow.id == run_id, unchanged)
                if session.execute(mark.values(dispatched_at=now)).rowcount:  # type: ignore[attr-defined]
                    taken.append((run_id, pool))
            return taken

    def mark_hinted(self, run_ids: list[str]) -> None:
        """The runs were just announced on the queue: the sweeper leaves them alone for a while."""
        if not run_ids:
            return
        with self._db.session() as session:
            session.execute(update(RunRow).where(RunRow.id.in_(run_ids)).values(dispatched_at=utcnow()))

    def pool_of(self, run_id: str) -> str | None:
        with self._db.engine.connect() as connection:
            return connection.execute(select(RunRow.pool).where(RunRow.id == run_id)).scalar()

    def cancel(self, run_id: str) -> str:
        """Ask the run to stop; a run nobody executes is cancelled here and now. Its id."""
        with self._db.session() as session:
            run = session.get(RunRow, run_id.strip())
            if run is None:
                raise NotFoundError(f"no run with id {run_id!r}")
            if run.status not in ACTIVE_RUN_STATUSES:
                raise ConflictError(
                    f"run {run.id} has already {run.status}", hint="only queued or running runs cancel"
                )
            run.cancel_requested = True
            session.flush()
            # Nobody executes it: cancel it here and now, unless a worker claims it meanwhile (the
            # condition is checked by the write itself; the claim bumps the epoch).
            taken = session.execute(
                update(RunRow)
                .where(
                    RunRow.id == run.id,
                    RunRow.status == RunStatus.QUEUED,
                    RunRow.lease_owner.is_(None),
                    RunRow.lease_epoch == run.lease_epoch,
                )
                .values(status=RunStatus.CANCELLED, finished_at=utcnow())
                .execution_options(synchronize_session="fetch")
            )
            if taken.rowcount:  # type: ignore[attr-defined]
                session.execute(
                    update(RunStepRow)
                    .where(RunStepRow.run_id == run.id, RunStepRow.status.in_(OPEN_STEP_STATUSES))
                    .values(status=StepStatus.CANCELLED, updated_at=utcnow())
                    .execution_options(synchronize_session=False)
                )
            cancelled, found = bool(taken.rowcount), run.id  # type: ignore[attr-defined]
        if cancelled:  # counted once committed
            metrics.run_finished(RunStatus.CANCELLED)
        return found

    def retry(self, run_id: str, *, include_unknown: bool = False) -> str:
        """Queue a failed or cancelled run again; steps that succeeded are not run twice. Its id.

        Steps whose outcome is unknown (their message may have been delivered) are
        left as they are unless `include_unknown`: then they are sent again, with
        the Message-ID they had, so that mail clients can fold a second copy.
        """
        with self._db.session() as session:
            run = session.get(RunRow, run_id.strip())
            if run is None:
                raise NotFoundError(f"no run with id {run_id!r}")
            if run.status not in (RunStatus.FAILED, RunStatus.CANCELLED):
                raise ConflictError(
                    f"run {run.id} is {run.status}; only failed or cancelled runs can be retried",
                    hint="wait for it to finish, or cancel it first",
                )
            run.status = RunStatus.QUEUED
            run.error = None
            run.cancel_requested = False
            run.finished_at = None
            run.not_before = None
            again: list[StepStatus] = list(_RETRIED_STEPS)
            if include_unknown:
                again.append(StepStatus.UNKNOWN)
            for step in session.scalars(
                select(RunStepRow).where(RunStepRow.run_id == run.id, RunStepRow.status.in_(again))
            ).all():
                if step.status == StepStatus.UNKNOWN:
                    step.send_state = None
                    step.notes = [*step.notes, "sent again on request (`runs retry --include-unknown`)"]
                step.status = StepStatus.PENDING
                step.attempts = 0
                step.error = None
                step.finished_at = None
            return run.id


def _recorded_inputs(
    stored: dict[str, Any] | None, index: int | None, inputs: dict[str, Any] | None
) -> dict[str, Any] | None:
    """What the step ran with, as rendered (attachment bodies summarised), or None to keep `stored`."""
    if inputs is None:
        return None
    for attachment in inputs.get("attachments") or []:
        if isinstance(attachment, dict) and "content" in attachment:
            attachment["content"] = f"<{len(str(attachment['content'])) * 3 // 4} bytes>"
    # A for_each parent keeps its item list; its items and plain steps keep their inputs.
    if index is not None or stored is None or "items" not in stored:
        return inputs
    return None


def _crashed_while_sending(session: Session, run_id: str, row_id: str) -> None:
    """An earlier execution stopped after DATA began: the step's outcome is unknown."""
    row = session.get(RunStepRow, row_id)
    assert row is not None
    row.notes = [*row.notes, unknown_note(run_id, row.attempts, row.message_id, CRASH_WHY)]
    row.send_state = SendState.UNKNOWN
    row.status = StepStatus.UNKNOWN
    row.error = unknown_error(run_id, CRASH_WHY)
    row.finished_at = row.updated_at = utcnow()


def _record_failure(
    session: Session,
    row_id: str,
    exc: BaseException,
    *,
    message_id: str | None,
    may_have_arrived: bool,
    retry_wait: RetryWait,
) -> FailedAttempt:
    error = error_record(exc)
    row = session.get(RunStepRow, row_id)
    assert row is not None
    row.error = error
    # Chosen for an attempt that failed before DATA (so before its mark): shown, and sent
    # again by the retry, like any Message-ID of the step.
    row.message_id = row.message_id or message_id
    unknown = row.send_state == SendState.SENDING and may_have_arrived
    if unknown:
        # Written, unanswered: resending could deliver it twice. Recorded, never retried.
        error = row.error = {**error, "outcome": StepStatus.UNKNOWN.value}
        row.notes = [*row.notes, unknown_note(row.run_id, row.attempts, row.message_id, error["message"])]
        row.send_state = SendState.UNKNOWN
    elif row.send_state == SendState.SENDING:
        row.send_state = None  # refused, or failed before the message was written
    wait = None if unknown else retry_wait(exc, row.attempts, row.max_attempts)
    status = StepStatus.UNKNOWN if unknown else StepStatus.DEFERRED if wait is not None else StepStatus.FAILED
    row.status = status
    if wait is not None:
        row.notes = [
            *row.notes,
            f"attempt {row.attempts} failed ({error['message']}); retrying in {wait:.1f} s",
        ]
    else:
        row.finished_at = utcnow()
    row.updated_at = utcnow()
    return FailedAttempt(status=status, error=error, wait=wait)
