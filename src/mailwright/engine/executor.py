"""Executing a run: claim it with a lease, run its steps in order, record everything.

The database row is the source of truth. A run is claimed by a conditional
UPDATE (only one worker wins), its lease is renewed while it executes, and a
worker that dies simply lets the lease expire: the recovery loop dispatches the
run again and execution resumes at the first unfinished step. Succeeded steps
are never executed twice; a Send Email step keeps its Message-ID across attempts
and records "sending" just before DATA. Every write of the run's or its steps'
state is fenced by the lease (engine/lease.py): a worker that lost it writes and
sends nothing more. A step left "sending" (a crash after DATA began, or a
connection lost after the message was written) has an unknown outcome: it is
recorded as `unknown` and sent again only when asked (`runs retry --include-unknown`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel
from sqlalchemy import bindparam, case, func, null, or_, select, update
from sqlalchemy.orm import Session

from mailwright.activities.context import ActivityContext
from mailwright.domain.expressions import evaluate_condition_async, render_value_async
from mailwright.domain.validation import validate_model
from mailwright.domain.workflows import Step, WorkflowDocument
from mailwright.engine.lease import Lease
from mailwright.errors import LeaseLostError, MailwrightError, RateLimitedError, StepValueError, TargetError
from mailwright.plugins import activity
from mailwright.services.targets import TargetService
from mailwright.storage.db import Database
from mailwright.storage.files import FileStore
from mailwright.storage.tables import RunRow, RunStepRow, utcnow

if TYPE_CHECKING:
    from mailwright.engine.batch import BatchProgress

log = logging.getLogger(__name__)
T = TypeVar("T")

LEASE = timedelta(seconds=30)
BACKOFF_BASE = 1.0  # seconds; doubled per attempt, with jitter
BACKOFF_CAP = 300.0
# Retries sooner than this wait inside the claim; later ones release the run.
INLINE_WAIT = 5.0

TERMINAL = {"succeeded", "failed", "cancelled"}
UNKNOWN = "unknown"  # a step's status and send state when its message may or may not have arrived
BATCH_KIND = "batch"  # a run document of this kind is a batch of messages, one step each
RATE_LIMIT_NOTE = "rate limit: "
STEP_DONE = {"succeeded", "failed", "skipped", "cancelled", UNKNOWN}
# A step's outcome when its write also ended the run (the last step, succeeded): one write, not two.
CLOSED = "succeeded, run closed"


def backoff(attempt: int) -> float:
    """Exponential backoff with full jitter for the `attempt`-th retry (1-based)."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * (2 ** (attempt - 1)))
    return random.uniform(ceiling / 2, ceiling)


def error_record(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, MailwrightError):
        return exc.details()
    if isinstance(exc, TimeoutError):
        return {"code": "timeout", "message": "the step did not finish within its timeout"}
    return {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}


def is_transient(exc: BaseException) -> bool:
    return bool(getattr(exc, "transient", False)) or isinstance(exc, TimeoutError)


def may_have_arrived(exc: BaseException) -> bool:
    """Whether a send that failed with `exc` after its "sending" mark may still have been delivered.

    The transport answers for itself: a TargetError says whether the message's body
    was written without a reply (`outcome_unknown`); anything else (a step timeout
    cancelling the wait, a bug) cannot tell, so it may have.
    """
    if isinstance(exc, LeaseLostError):
        return False  # raised before DATA: the message was not handed over
    if isinstance(exc, TargetError):
        return exc.outcome_unknown
    return True


def unknown_note(run_id: str, attempt: int, message_id: str | None, why: str) -> str:
    return (
        f"attempt {attempt}: {why}; the message (Message-ID {message_id}) may or may not have been "
        "delivered, so it is not sent again on its own: check with a recipient, then send it again, "
        f"if needed, with `mailwright runs retry {run_id} --include-unknown` (same Message-ID)"
    )


def unknown_error(run_id: str, why: str) -> dict[str, Any]:
    return {
        "code": "outcome_unknown",
        "outcome": "unknown",
        "message": f"the outcome is unknown: {why}; the message may or may not have been delivered",
        "hint": f"check with a recipient; `mailwright runs retry {run_id} --include-unknown` sends it again",
    }


CRASH_WHY = "the worker stopped after DATA began, before the server's reply was recorded"


def _closing(status: str, error: Any, now: Any) -> dict[str, Any]:
    """A run's fields once it ends: its final status, and free (no lease, nothing to wait for)."""
    return {
        "status": status,
        "error": error,
        "finished_at": now,
        "lease_owner": None,
        "lease_expires_at": None,
        "not_before": None,
    }


def close_run(run: RunRow, status: str, error: dict[str, Any] | None) -> None:
    """Give a run its final status and free it: no lease, nothing left to wait for."""
    for name, value in _closing(status, error, utcnow()).items():
        setattr(run, name, value)


# The statements of every run, built once. Composing one costs SQLAlchemy 40 to 200 µs,
# more than SQLite takes to run it, and a single send runs about ten. They are executed on
# the session's connection, as Core statements: the ORM's bulk-update path costs more again.
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
        RunRow.status.in_(("queued", "running")),
        or_(RunRow.not_before.is_(None), RunRow.not_before <= _NOW),
        or_(RunRow.lease_expires_at.is_(None), RunRow.lease_expires_at < _NOW),
    )
    .values(
        lease_owner=bindparam("owner"),
        lease_expires_at=bindparam("expires", type_=RunRow.lease_expires_at.type),
        lease_epoch=RunRow.lease_epoch + 1,  # the fencing token of this claim
        status="running",
        started_at=func.coalesce(RunRow.started_at, _NOW),
    )
    .execution_options(synchronize_session=False)  # no row is loaded before it
)
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
_STEPS = (
    select(RunStepRow)
    .where(RunStepRow.run_id == bindparam("run_id"))
    .order_by(RunStepRow.position, RunStepRow.item_index)
)
_STEPS_AT = _STEPS.where(RunStepRow.position == bindparam("position"))
# `close_run` for a run that succeeded, without loading it.
_SUCCEED = (
    update(RunRow)
    .where(RunRow.id == bindparam("run_id"))
    .values(_closing("succeeded", null(), _NOW))
    .execution_options(synchronize_session=False)
)
# Before DATA: the state and the Message-ID a retry must send again, in one statement.
_MARK_SENDING = (
    update(RunStepRow)
    .where(RunStepRow.id == bindparam("row_id"))
    .values(send_state="sending", message_id=func.coalesce(RunStepRow.message_id, bindparam("chosen")))
    .execution_options(synchronize_session=False)
)


_START_ATTEMPT = (
    update(RunStepRow)
    .where(RunStepRow.id == bindparam("row_id"))
    .values(
        attempts=bindparam("attempt"),
        max_attempts=bindparam("most"),
        status="running",
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
_SENT_IF_SENDING = case((RunStepRow.send_state == "sending", "sent"), else_=RunStepRow.send_state)
_SETTLED = (RunStepRow.output, RunStepRow.error)


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


def worker_id() -> str:
    """This process's name in run leases: host, pid and a random tag (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Executor:
    def __init__(
        self,
        db: Database,
        targets: TargetService,
        *,
        worker_id: str,
        lease: timedelta = LEASE,
        files: FileStore | None = None,
    ) -> None:
        self._db = db
        self._targets = targets
        self._files = files
        self.worker_id = worker_id
        self.lease = lease
        # Set when the worker is asked to stop: runs are released between steps.
        self.stopping = asyncio.Event()
        # Told the live progress of each batch this executor runs (the CLI draws its bar from it).
        self.on_batch_progress: Callable[[BatchProgress], None] | None = None
        self._leases: dict[str, Lease] = {}  # the runs this executor holds now

    # --- claiming -------------------------------------------------------------

    def claim(self, run_id: str) -> bool:
        """Take the run if it is due and nobody holds a live lease on it."""
        with self._db.session() as session:
            return self._claim(session, run_id, time.monotonic()) is not None

    def _claim(self, session: Session, run_id: str, acquired_at: float) -> _Claimed | None:
        """`claim`, and what running it needs from its row, read in the same transaction.

        `acquired_at` is time.monotonic() from before the lease's clock starts in the database.
        """
        now = utcnow()
        params = {"run_id": run_id, "now": now, "owner": self.worker_id, "expires": now + self.lease}
        result = session.connection().execute(_CLAIM, params)
        if not result.rowcount:
            return None
        run = session.connection().execute(_CLAIMED_RUN, {"run_id": run_id}).one()
        # Nobody else changes the steps while the lease is ours: read once, here.
        steps = session.connection().execute(_CLAIMED_STEPS, {"run_id": run_id}).all()
        return _Claimed(
            document=run.document,
            inputs=dict(run.inputs),
            target=run.target,
            account_key=run.account_key,
            trigger=run.trigger,
            cancel_requested=run.cancel_requested,
            epoch=run.lease_epoch,
            acquired_at=acquired_at,
            steps={s.position: {"status": s.status, "output": s.output, "error": s.error} for s in steps},
        )

    async def _write(self, run_id: str, apply: Callable[[Session], T]) -> T:
        """Write the run's state, fenced by its lease, grouped with other runs' writes (one commit)."""
        return await self._db.group.write(apply, fence=self._leases[run_id].fence_in)

    # --- running --------------------------------------------------------------

    async def execute(self, run_id: str) -> str | None:
        """Run what is left of a run; returns its status, or None if another worker has it."""
        if run_id in self._leases:
            return None  # this executor runs it already: its writes are fenced by that lease
        acquired_at = time.monotonic()
        claimed = await self._db.group.write(lambda session: self._claim(session, run_id, acquired_at))
        if claimed is None:
            return None
        lease = Lease(
            self._db,
            run_id=run_id,
            owner=self.worker_id,
            epoch=claimed.epoch,
            duration=self.lease,
            acquired_at=claimed.acquired_at,
        )
        self._leases[run_id] = lease
        keeper = asyncio.create_task(lease.keep())
        try:
            return await self._execute_claimed(run_id, claimed, lease)
        except LeaseLostError:
            # Logged by the lease; the run's new owner carries on from the rows.
            return "running"
        finally:
            keeper.cancel()
            del self._leases[run_id]

    async def _execute_claimed(self, run_id: str, claimed: _Claimed, lease: Lease) -> str:
        if claimed.document.get("kind") == BATCH_KIND:
            return await self._execute_batch(run_id, lease)
        lost = lease.lost
        document = WorkflowDocument.model_validate(claimed.document)
        context: dict[str, Any] = {"inputs": dict(claimed.inputs), "steps": {}}
        if claimed.trigger is not None:
            context["trigger"] = claimed.trigger
        target, key = claimed.target, claimed.account_key
        for position, step in enumerate(document.steps):
            if lost.is_set():
                return "running"  # another worker took over; it continues from the rows
            # Before the first step the row was just read by the claim; after, it is read again.
            if claimed.cancel_requested if position == 0 else self._cancel_requested(run_id):
                return await self._finish(run_id, "cancelled", None)
            if self.stopping.is_set():
                await self._release(run_id)
                return "queued"
            state = claimed.steps[position]
            last = position == len(document.steps) - 1
            outcome = await self._run_step(
                run_id, position, step, state, context, target=target, key=key, closes=last
            )
            if outcome == CLOSED:  # the last step succeeded, and its write ended the run
                log.info("run %s succeeded", run_id)
                return "succeeded"
            if outcome == "deferred":
                return "queued"
            if outcome in ("failed", UNKNOWN) and not step.continue_on_failure:
                error = context["steps"][step.id].get("error")
                return await self._finish(run_id, "failed", error)
        return await self._finish(run_id, "succeeded", None)

    async def _execute_batch(self, run_id: str, lease: Lease) -> str:
        # Imported here: the batch engine builds on this module's claims, retries and deferral.
        from mailwright.engine.batch import BatchRunner

        return await BatchRunner(self, run_id=run_id, lease=lease).run()

    def _cancel_requested(self, run_id: str) -> bool:
        with self._db.session() as session:
            run = session.get(RunRow, run_id)
            return bool(run and run.cancel_requested)

    async def _finish(self, run_id: str, status: str, error: dict[str, Any] | None) -> str:
        def apply(session: Session) -> None:
            if status == "succeeded":  # every step is done: only the run's row changes
                session.connection().execute(_SUCCEED, {"run_id": run_id, "now": utcnow()})
                return
            run = session.get(RunRow, run_id)
            assert run is not None
            close_run(run, status, error)
            for row in self._rows(session, run_id):
                if row.status in ("pending", "queued", "deferred"):
                    row.status = "cancelled" if status == "cancelled" else "skipped"
                    row.updated_at = utcnow()

        await self._write(run_id, apply)
        log.info("run %s %s", run_id, status)
        return status

    @staticmethod
    def _rows(session: Any, run_id: str, position: int | None = None) -> list[RunStepRow]:
        if position is None:
            return list(session.scalars(_STEPS, {"run_id": run_id}).all())
        return list(session.scalars(_STEPS_AT, {"run_id": run_id, "position": position}).all())

    # --- one step (and its for_each items) -------------------------------------

    async def _run_step(
        self,
        run_id: str,
        position: int,
        step: Step,
        state: dict[str, Any],
        context: dict[str, Any],
        *,
        target: str | None,
        key: str | None,
        closes: bool = False,
    ) -> str:
        """Run the step unless an earlier execution finished it (`state`: as the claim read it).

        `closes`: the run's last step; a plain one that succeeds ends the run in the same
        write, and CLOSED is returned.
        """
        if state["status"] in STEP_DONE:
            context["steps"][step.id] = state
            return str(state["status"])
        if step.skip_execution:
            return await self._settle(run_id, position, None, context, step, "skipped", None, None)
        try:
            if step.if_ and not await evaluate_condition_async(step.if_, context):
                return await self._settle(run_id, position, None, context, step, "skipped", None, None)
            if step.for_each is None:
                return await self._run_item(
                    run_id, position, None, step, context, target=target, key=key, closes=closes
                )
            return await self._run_items(run_id, position, step, context, target=target, key=key)
        except MailwrightError as exc:  # a bad expression fails the step, not the worker
            return await self._settle(run_id, position, None, context, step, "failed", None, exc.details())

    async def _run_items(
        self,
        run_id: str,
        position: int,
        step: Step,
        context: dict[str, Any],
        *,
        target: str | None,
        key: str | None,
    ) -> str:
        items = await self._items(run_id, position, step, context)
        outputs: list[Any] = []
        for index, item in enumerate(items):
            outcome = await self._run_item(
                run_id, position, index, step, {**context, "item": item}, target=target, key=key
            )
            if outcome == "deferred":
                return outcome
            with self._db.session() as session:
                row = next(r for r in self._rows(session, run_id, position) if r.item_index == index)
                outputs.append(row.output)
                status, error = row.status, row.error
            if status in ("failed", UNKNOWN):
                return await self._settle(run_id, position, None, context, step, status, outputs, error)
        return await self._settle(run_id, position, None, context, step, "succeeded", outputs, None)

    async def _items(self, run_id: str, position: int, step: Step, context: dict[str, Any]) -> list[Any]:
        """The for_each list, rendered once and persisted as item rows (a resumed run reuses them)."""
        stored = self._stored_items(run_id, position)
        if stored is not None:
            return stored
        value = await render_value_async(step.for_each, context)
        if not isinstance(value, list):
            raise StepValueError(f"step {step.id!r}: for_each must give a list, not {type(value).__name__}")
        if len(value) > step.max_items:
            raise StepValueError(
                f"step {step.id!r}: for_each gives {len(value)} items; the limit is {step.max_items}",
                hint="raise max_items on the step, or split the list",
            )
        await self._write(run_id, lambda session: self._store_items(session, run_id, position, step, value))
        return value

    def _stored_items(self, run_id: str, position: int) -> list[Any] | None:
        with self._db.session() as session:
            rows = self._rows(session, run_id, position)
            parent = next(r for r in rows if r.item_index is None)
            if any(r.item_index is not None for r in rows):
                return list((parent.inputs or {}).get("items", []))
            return None

    def _store_items(
        self, session: Session, run_id: str, position: int, step: Step, value: list[Any]
    ) -> None:
        parent = next(r for r in self._rows(session, run_id, position) if r.item_index is None)
        parent.inputs = {"items": value}
        parent.status = "running"
        parent.started_at = utcnow()
        for index in range(len(value)):
            session.add(
                RunStepRow(
                    run_id=run_id,
                    position=position,
                    step_id=step.id,
                    item_index=index,
                    activity=step.activity,
                    status="pending",
                    max_attempts=step.retries + 1,
                )
            )

    async def _run_item(
        self,
        run_id: str,
        position: int,
        index: int | None,
        step: Step,
        context: dict[str, Any],
        *,
        target: str | None,
        key: str | None,
        closes: bool = False,
    ) -> str:
        spec = activity(step.activity)
        label = step.id if index is None else f"{step.id}[{index}]"
        # The inputs are rendered first, so that the attempt and what it runs with are one write.
        inputs: BaseModel | None = None
        problem: Exception | None = None
        try:
            values = step.with_ if step.literal else await render_value_async(step.with_, context)
            inputs = validate_model(spec.input_model, values)
        except Exception as exc:  # failed as the attempt's outcome, below
            problem = exc
        recorded = (
            None if inputs is None else inputs.model_dump(mode="json", by_alias=True, exclude_none=True)
        )
        started = await self._start_attempt(run_id, position, index, step, inputs=recorded)
        if isinstance(started, str):  # finished by an earlier execution: succeeded, or unknown
            if started == UNKNOWN and index is None:
                return await self._settle(run_id, position, None, context, step, UNKNOWN, None, None)
            return started
        row_id, message_id = started
        chosen = _ChosenMessageId(message_id)
        try:
            if problem is not None:
                raise problem
            assert inputs is not None
            ctx = ActivityContext(
                run_id=run_id,
                step=label,
                targets=self._targets,
                target=await self._render_name(step.target, context) or target,
                account_key=await self._render_name(step.account_key, context) or key,
                message_id=message_id,
                remember_message_id=chosen.remember,
                mark_sending=self._marking(run_id, row_id, chosen),
                files=self._files,
            )
            output = await asyncio.wait_for(spec.execute(ctx, inputs), timeout=step.timeout)
        except Exception as exc:  # recorded on the step; a bug in one activity must not stall the run
            if isinstance(exc, LeaseLostError):
                raise  # nothing more is written: the run's new owner decides
            if not isinstance(exc, MailwrightError | TimeoutError):
                log.exception("run %s step %s: unexpected error", run_id, label)
            return await self._failed_attempt(
                run_id, position, index, row_id, step, context, exc, message_id=chosen.value
            )
        if index is None:  # one write: the attempt's row is the step's row
            return await self._settle(
                run_id, position, None, context, step, "succeeded", output, None, sent=True, closes=closes
            )
        await self._complete(run_id, row_id, output)
        return "succeeded"

    @staticmethod
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

    @staticmethod
    def _crashed_while_sending(session: Session, run_id: str, row_id: str) -> None:
        """An earlier execution stopped after DATA began: the step's outcome is unknown."""
        row = session.get(RunStepRow, row_id)
        assert row is not None
        row.notes = [*row.notes, unknown_note(run_id, row.attempts, row.message_id, CRASH_WHY)]
        row.send_state = row.status = UNKNOWN
        row.error = unknown_error(run_id, CRASH_WHY)
        row.finished_at = row.updated_at = utcnow()

    @staticmethod
    async def _render_name(value: str | None, context: dict[str, Any]) -> str | None:
        if not value:
            return None
        return str(await render_value_async(value, context))

    async def _start_attempt(
        self,
        run_id: str,
        position: int,
        index: int | None,
        step: Step,
        *,
        inputs: dict[str, Any] | None,
    ) -> tuple[str, str | None] | str:
        """Count the attempt and record its inputs: the step's row id and Message-ID.

        Or the status of an item that an earlier execution finished: "succeeded", or
        "unknown" when that execution stopped while the message was being sent.
        """

        def apply(session: Session) -> tuple[str, str | None] | str:
            connection = session.connection()
            where = {"at_run": run_id, "at_position": position, "at_index": index}
            row = connection.execute(_READ_STEP[index is not None], where).one()
            if row.status in ("succeeded", UNKNOWN):
                return str(row.status)
            if row.send_state == "sending":
                self._crashed_while_sending(session, run_id, row.id)
                return UNKNOWN
            params: dict[str, Any] = {
                "row_id": row.id,
                "attempt": row.attempts + 1,
                "most": step.retries + 1,
                "now": utcnow(),
            }
            recorded = self._recorded_inputs(row.inputs, index, inputs)
            if recorded is None:
                connection.execute(_START_ATTEMPT, params)
            else:
                connection.execute(_START_ATTEMPT_WITH_INPUTS, {**params, "rendered": recorded})
            return row.id, row.message_id

        return await self._write(run_id, apply)

    def _marking(self, run_id: str, row_id: str, chosen: _ChosenMessageId) -> Callable[[], Awaitable[None]]:
        lease = self._leases[run_id]

        async def mark() -> None:
            lease.check()  # not after the lease could have run out: nothing is sent then
            # One statement before DATA: the state and the Message-ID a retry must send again.
            params = {"row_id": row_id, "chosen": chosen.value}
            await self._write(run_id, lambda session: session.connection().execute(_MARK_SENDING, params))
            lease.check()  # the write may have waited: still ours, with the margin kept?

        return mark

    async def _complete(self, run_id: str, row_id: str, output: dict[str, Any]) -> None:
        def apply(session: Session) -> None:
            row = session.get(RunStepRow, row_id)
            assert row is not None
            row.status = "succeeded"
            row.output = output
            row.error = None
            if row.send_state == "sending":
                row.send_state = "sent"
            row.finished_at = row.updated_at = utcnow()

        await self._write(run_id, apply)

    async def _failed_attempt(
        self,
        run_id: str,
        position: int,
        index: int | None,
        row_id: str,
        step: Step,
        context: dict[str, Any],
        exc: BaseException,
        *,
        message_id: str | None,
    ) -> str:
        if isinstance(exc, RateLimitedError):
            return await self._throttled(run_id, row_id, exc)
        recorded = await self._write(
            run_id, lambda session: _record_failure(session, row_id, exc, message_id)
        )
        status, error, wait = recorded
        if wait is None:
            if index is None:
                return await self._settle(run_id, position, None, context, step, status, None, error)
            return status
        if wait <= INLINE_WAIT:
            await asyncio.sleep(wait)
            return await self._retry_inline(run_id, position, index, step, context)
        await self._defer_run(run_id, wait)
        return "deferred"

    async def _retry_inline(
        self, run_id: str, position: int, index: int | None, step: Step, context: dict[str, Any]
    ) -> str:
        with self._db.session() as session:
            run = session.get(RunRow, run_id)
            assert run is not None
            target, key = run.target, run.account_key
        return await self._run_item(run_id, position, index, step, context, target=target, key=key)

    async def _throttled(self, run_id: str, row_id: str, exc: RateLimitedError) -> str:
        """Held back by the target's rate limit: not an attempt and not a failure; the run waits."""

        def apply(session: Session) -> None:
            row = session.get(RunStepRow, row_id)
            assert row is not None
            row.attempts = max(0, row.attempts - 1)
            row.status = "deferred"
            # One rate-limit note at a time: a long queue would otherwise pile them up.
            notes = [n for n in row.notes if not n.startswith(RATE_LIMIT_NOTE)]
            row.notes = [*notes, f"{RATE_LIMIT_NOTE}{exc.message}"]
            row.updated_at = utcnow()

        await self._write(run_id, apply)
        await self._defer_run(run_id, max(0.0, (exc.until - utcnow()).total_seconds()))
        return "deferred"

    async def _release(self, run_id: str) -> None:
        """Give the run back at once (a graceful stop); the next worker resumes it."""
        await self._write(run_id, lambda session: _give_back(session, run_id, not_before=None))

    async def _defer_run(self, run_id: str, wait: float) -> None:
        """Release the run until the retry is due; any worker may then take it."""
        due = utcnow() + timedelta(seconds=wait)
        await self._write(run_id, lambda session: _give_back(session, run_id, not_before=due))

    async def _settle(
        self,
        run_id: str,
        position: int,
        index: int | None,
        context: dict[str, Any],
        step: Step,
        status: str,
        output: Any,
        error: dict[str, Any] | None,
        *,
        sent: bool = False,
        closes: bool = False,
    ) -> str:
        """Record the step's outcome; `closes` (and it succeeded): the run succeeds in the same write."""
        values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "updated_at": utcnow()}
        if output is not None:
            values["output"] = output if isinstance(output, dict) else {"items": output}
        if error is not None:
            values["error"] = error
        if sent:  # the attempt succeeded: what it sent (if anything) is known to have arrived
            values["error"] = None  # and its send state, from "sending" to "sent"
        statement = _settle_statement(frozenset(values), index is not None, sent)
        params = {
            "at_run": run_id,
            "at_position": position,
            "at_index": index,
            **{f"new_{column}": value for column, value in values.items()},
        }
        closing = closes and status == "succeeded"

        def apply(session: Session) -> dict[str, Any]:
            row = session.connection().execute(statement, params).one()
            if closing:
                session.connection().execute(_SUCCEED, {"run_id": run_id, "now": utcnow()})
            return {"status": status, "output": row.output, "error": row.error}

        context["steps"][step.id] = await self._write(run_id, apply)
        return CLOSED if closing else status


def _record_failure(
    session: Session, row_id: str, exc: BaseException, message_id: str | None
) -> tuple[str, dict[str, Any], float | None]:
    """A failed attempt on its step's row: its status, its error, and the wait before a retry (or None)."""
    error = error_record(exc)
    row = session.get(RunStepRow, row_id)
    assert row is not None
    row.error = error
    # Chosen for an attempt that failed before DATA (so before its mark): shown, and sent
    # again by the retry, like any Message-ID of the step.
    row.message_id = row.message_id or message_id
    unknown = row.send_state == "sending" and may_have_arrived(exc)
    if unknown:
        # Written, unanswered: resending could deliver it twice. Recorded, never retried.
        error = row.error = {**error, "outcome": UNKNOWN}
        row.notes = [*row.notes, unknown_note(row.run_id, row.attempts, row.message_id, error["message"])]
        row.send_state = UNKNOWN
    elif row.send_state == "sending":
        row.send_state = None  # refused, or failed before the message was written
    retry = not unknown and is_transient(exc) and row.attempts < row.max_attempts
    wait = backoff(row.attempts) if retry else None
    row.status = UNKNOWN if unknown else "deferred" if retry else "failed"
    if wait is not None:
        row.notes = [
            *row.notes,
            f"attempt {row.attempts} failed ({error['message']}); retrying in {wait:.1f} s",
        ]
    else:
        row.finished_at = utcnow()
    row.updated_at = utcnow()
    return row.status, error, wait


def _give_back(session: Session, run_id: str, *, not_before: datetime | None) -> None:
    """The run is queued again, free for any worker (from `not_before` when a retry is due later)."""
    run = session.get(RunRow, run_id)
    assert run is not None
    run.status = "queued"
    run.lease_owner = None
    run.lease_expires_at = None
    if not_before is not None:
        run.not_before = not_before
        run.dispatched_at = None


@dataclass(frozen=True, slots=True)
class _Claimed:
    """The fields of a run's row that executing it reads, as the claim returned them."""

    document: dict[str, Any]
    inputs: dict[str, Any]
    target: str | None
    account_key: str | None
    trigger: dict[str, Any] | None
    cancel_requested: bool
    epoch: int  # the fencing token of this claim
    acquired_at: float  # time.monotonic() just before the claim
    steps: dict[int, dict[str, Any]]  # position -> the step's status, output and error


class _ChosenMessageId:
    """The Message-ID an attempt sends with (kept across attempts once stored).

    The activity chooses it; it is written with the attempt's "sending" mark, in
    the same transaction, or with the attempt's failure: never a write of its own.
    """

    def __init__(self, stored: str | None) -> None:
        self.value = stored

    def remember(self, message_id: str) -> None:
        self.value = message_id
