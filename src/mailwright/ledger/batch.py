"""The ledger of batch runs: their steps read in pages and written in groups, fenced by the lease.

A batch's step is one message: stored `pending` with its Message-ID, marked
`sending` just before its DATA (grouped with other messages' marks), and given
its result. `StepWriter` collects these writes and commits each group in one
transaction that starts with the lease's fence (ledger/lease.py; the lease of
the range the steps are in, ledger/ranges.py): once the lease is lost nothing
more is written and every mark raises `LeaseLostError`.
The hot writes (marks and results) go through the prebuilt statements of
storage/batch_steps.py; rarer ones (a failure, a deferral) through Core.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Table, Update, bindparam, delete, func, or_, select, update
from sqlalchemy.orm import Session

from mailwright.domain.runs import RunStatus, SendState, StepStatus
from mailwright.errors import LeaseLostError
from mailwright.ledger.lease import Lease
from mailwright.ledger.outcomes import error_record, rate_limit_notes, unknown_note
from mailwright.ledger.ranges import RangeLedger
from mailwright.storage.batch_steps import OPEN, batch_steps
from mailwright.storage.db import Database
from mailwright.storage.group import BLIP_WAITS, is_blip
from mailwright.storage.tables import RunRow, RunStepRow, new_id, utcnow

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.2  # results wait at most this long for a transaction
FLUSH_ROWS = 500  # ... or until this many are waiting
# Steps still to send ("running": in flight at a crash).
OPEN_BATCH_STEPS = OPEN
# A batch run's status while its messages are being stored: no worker takes it.
PREPARING = "preparing"
STORING = "storing"  # the lease owner of a batch being stored
PREPARE_LEASE = timedelta(minutes=2)
LEGACY_PREPARE_AGE = timedelta(hours=1)


@dataclass
class BatchStep:
    """One message of a batch as its sender knows it (kept in step with its row by `StepWriter`)."""

    id: str
    index: int
    inputs: dict[str, Any]
    message_id: str | None
    send_state: str | None
    attempts: int
    max_attempts: int
    notes: list[str]


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """What a batch's execution starts from: its target and key, concurrency, and step counts."""

    target: str
    account_key: str | None
    concurrency: int
    counts: dict[str, int]


def new_step(
    run_id: str, *, index: int, step_id: str, activity: str, max_attempts: int, message_id: str
) -> tuple[Any, ...]:
    """A batch message's step row, pending, as `BatchLedger.store_steps` takes it."""
    return (
        new_id(),
        run_id,
        0,  # position
        step_id,
        index,
        activity,
        StepStatus.PENDING,
        0,  # attempts
        max_attempts,
        message_id,
        [],  # notes
        utcnow(),
    )


class BatchLedger:
    """A batch run's life: stored (`preparing`) then queued; read and written while it executes."""

    def __init__(self, db: Database, *, range_size: int | None = None) -> None:
        self._db = db
        self.ranges = RangeLedger(db, size=range_size)  # the ranges its messages are sent in, by any worker

    # --- storing a batch ----------------------------------------------------------------------

    @staticmethod
    def open(
        session: Session,
        *,
        name: str,
        document: dict[str, Any],
        target: str,
        account_key: str | None,
        pool: str | None = None,
    ) -> str:
        """The batch's run row, `preparing`, in the caller's transaction; its id."""
        run = RunRow(
            workflow_id=None,
            workflow_name=name,
            document=document,
            status=PREPARING,
            # Held while this process stores the messages: a batch whose storing process
            # died (the lease ran out) was never accepted, and `discard_abandoned` removes it.
            lease_owner=STORING,
            lease_expires_at=utcnow() + PREPARE_LEASE,
            inputs={},
            target=target,
            account_key=account_key,
            cancel_requested=False,
            pool=pool,
        )
        session.add(run)
        session.flush()
        return run.id

    def store_steps(self, steps: list[tuple[Any, ...]], inputs: list[tuple[str, Any]]) -> None:
        """Write step rows (from `new_step`) and their messages' fields, in one transaction."""
        with self._db.engine.begin() as connection:
            statements = batch_steps(connection.dialect)
            statements.insert.execute_many(connection, steps)
            statements.insert_inputs.execute_many(connection, inputs)

    def keep_storing(self, run_id: str) -> None:
        """Extend the storing lease (a file of millions of lines takes minutes)."""
        with self._db.session() as session:
            session.execute(
                update(RunRow).where(RunRow.id == run_id).values(lease_expires_at=utcnow() + PREPARE_LEASE)
            )

    def enqueue(self, run_id: str, *, total: int) -> None:
        """Every message is stored: the batch is queued, and accepted from now on."""
        with self._db.session() as session:
            run = session.get(RunRow, run_id)
            assert run is not None
            run.document = {**run.document, "messages": total}
            run.status = RunStatus.QUEUED
            run.lease_owner = None
            run.lease_expires_at = None
            run.created_at = utcnow()

    def discard(self, run_id: str) -> None:
        """Remove a batch that was refused (or whose storing failed): it was never accepted."""
        with self._db.session() as session:
            run = session.get(RunRow, run_id)
            if run is not None:
                session.delete(run)

    def discard_abandoned(self, *, kind: str) -> list[tuple[str, datetime]]:
        """Remove batches whose storing process stopped before their last message was stored:
        the id and creation time of each."""
        now = utcnow()
        with self._db.session() as session:
            abandoned = session.execute(
                select(RunRow.id, RunRow.created_at).where(
                    RunRow.status == PREPARING,
                    RunRow.document["kind"].as_string() == kind,
                    or_(
                        RunRow.lease_expires_at < now,
                        # Stored by a version without the storing lease.
                        (RunRow.lease_expires_at.is_(None)) & (RunRow.created_at < now - LEGACY_PREPARE_AGE),
                    ),
                )
            ).all()
            if abandoned:
                session.execute(delete(RunRow).where(RunRow.id.in_([row.id for row in abandoned])))
        return [(row.id, row.created_at) for row in abandoned]

    # --- executing a batch --------------------------------------------------------------------

    def plan(self, run_id: str, *, default_concurrency: int, counts: bool = True) -> BatchPlan:
        """What executing the batch starts from (`counts`: with its step counts, else none)."""
        with self._db.session() as session:
            run = session.get(RunRow, run_id)
            assert run is not None
            target, key = run.target or "", run.account_key
            concurrency = int(run.document.get("concurrency") or default_concurrency)
        counted = self.counts(run_id) if counts else {}
        return BatchPlan(target=target, account_key=key, concurrency=concurrency, counts=counted)

    def counts(self, run_id: str) -> dict[str, int]:
        """How many of the run's steps are in each status."""
        with self._db.session() as session:
            rows = session.execute(
                select(RunStepRow.status, func.count())
                .where(RunStepRow.run_id == run_id)
                .group_by(RunStepRow.status)
            ).all()
        return {status: int(n) for status, n in rows}

    def page(self, run_id: str, *, after: int, before: int, limit: int) -> list[BatchStep]:
        """Open steps in message order, after the message `after` (-1: from the first) and before
        the message `before` (the end of a range)."""
        steps = batch_steps(self._db.engine.dialect)
        with self._db.engine.connect() as connection:
            rows = steps.page.rows(connection, (run_id, after, before, limit))
        return [
            BatchStep(
                id=id_,
                index=index,
                inputs=inputs or {},
                message_id=message_id,
                send_state=send_state,
                attempts=attempts,
                max_attempts=max_attempts,
                notes=list(notes or []),
            )
            for id_, index, inputs, message_id, send_state, attempts, max_attempts, notes in rows
        ]

    def writer(self, lease: Lease) -> StepWriter:
        return StepWriter(self._db, lease)


class StepWriter:
    """Group commit of a batch's step updates.

    `mark_sending` returns once the mark is committed (a sender waits for it
    before DATA); the `record_*` methods return at once and their rows join the
    next transaction. Every transaction is fenced by the lease it is given (the
    range's the steps belong to, ledger/ranges.py): once it is lost, nothing more
    is written, and every mark raises `LeaseLostError`.
    """

    def __init__(self, db: Database, lease: Lease) -> None:
        self._db = db
        self._lease = lease
        self._steps = batch_steps(db.engine.dialect)
        self._marks: list[tuple[Any, ...]] = []
        self._waiting: list[asyncio.Future[None]] = []
        self._sent: list[tuple[Any, ...]] = []
        self._rows: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None
        self.transactions = 0
        self.rows_written = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="batch-step-writer")

    # --- what senders record ---------------------------------------------------------------

    async def mark_sending(self, step: BatchStep) -> None:
        """Durably "sending" just before DATA, grouped with the other senders' marks.

        Checked against the lease before and after: a worker paused past its lease
        (or that cannot renew it) sends nothing more.
        """
        self._lease.check()
        now = utcnow()
        self._marks.append((step.message_id, step.attempts, now, now, step.id))
        await self._committed()
        self._lease.check()
        step.send_state = SendState.SENDING

    def record_sent(self, step: BatchStep, output: dict[str, Any]) -> None:
        now = utcnow()
        self._sent.append((output, step.message_id, step.attempts, step.notes, now, now, step.id))
        if len(self._sent) >= FLUSH_ROWS:
            self._wake.set()

    def record_retrying(self, step: BatchStep) -> None:
        """A marked attempt failed before its message was written: unmarked now, so that after a
        crash the message is sent again, not called unknown."""
        self._record(
            {
                "id": step.id,
                "status": StepStatus.DEFERRED,
                "send_state": None,
                "message_id": step.message_id,
                "attempts": step.attempts,
                "notes": step.notes,
                "updated_at": utcnow(),
            }
        )

    def record_rate_limited(self, step: BatchStep, message: str) -> None:
        """Held back by the target's rate limit: deferred, with a note saying until when."""
        step.notes = rate_limit_notes(step.notes, message)
        self._record(
            {"id": step.id, "status": StepStatus.DEFERRED, "notes": step.notes, "updated_at": utcnow()}
        )

    def record_unknown(self, step: BatchStep, *, run_id: str, error: dict[str, Any], why: str) -> None:
        """The message may or may not have been delivered: recorded so, and not sent again."""
        step.notes.append(unknown_note(run_id, step.attempts, step.message_id, why))
        self._record(
            {
                "id": step.id,
                "status": StepStatus.UNKNOWN,
                "send_state": SendState.UNKNOWN,
                "error": error,
                "message_id": step.message_id,
                "attempts": step.attempts,
                "notes": step.notes,
                "finished_at": utcnow(),
                "updated_at": utcnow(),
            }
        )

    def record_failed(self, step: BatchStep, exc: BaseException) -> None:
        self._record(
            {
                "id": step.id,
                "status": StepStatus.FAILED,
                "error": error_record(exc),
                "send_state": None,
                "message_id": step.message_id,
                "attempts": max(step.attempts, 1),
                "notes": step.notes,
                "finished_at": utcnow(),
                "updated_at": utcnow(),
            }
        )

    def _record(self, values: dict[str, Any]) -> None:
        self._rows.append(values)
        if len(self._rows) >= FLUSH_ROWS:
            self._wake.set()

    async def close(self) -> None:
        """Write everything still waiting; raises if the last write failed."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._failed is not None:
            raise self._failed

    # --- the writer ---------------------------------------------------------------------------

    async def _committed(self) -> None:
        if self._failed is not None:
            raise self._failed
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(done)
        self._wake.set()
        await done

    async def _loop(self) -> None:
        while True:
            if not self._waiting and not self._closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=FLUSH_SECONDS)
            self._wake.clear()
            marks, self._marks = self._marks, []
            waiting, self._waiting = self._waiting, []
            sent, self._sent = self._sent, []
            rows, self._rows = self._rows, []
            if not (marks or sent or rows):
                if self._closing:
                    return
                continue
            try:
                await self._write_through_blips(marks, sent, rows)
            except Exception as exc:  # the senders waiting on a mark must not hang
                if not isinstance(exc, LeaseLostError):  # logged by the lease
                    log.exception("recording batch results failed")
                self._failed = exc
                for done in waiting + self._waiting:
                    if not done.done():
                        done.set_exception(exc)
                return
            for done in waiting:
                if not done.done():
                    done.set_result(None)

    async def _write_through_blips(
        self, marks: list[tuple[Any, ...]], sent: list[tuple[Any, ...]], rows: list[dict[str, Any]]
    ) -> None:
        """Write one group; a database blip is tried again while the lease still holds."""
        for wait in BLIP_WAITS:
            try:
                await asyncio.to_thread(self._write, marks, sent, rows)
                return
            except Exception as exc:
                if not is_blip(exc) or self._lease.usable_for() <= wait:
                    raise
                log.warning(
                    "recording batch results failed (%s); trying again in %.1f s", type(exc).__name__, wait
                )
                await asyncio.sleep(wait)
        await asyncio.to_thread(self._write, marks, sent, rows)

    def _write(
        self,
        marks: list[tuple[Any, ...]],
        sent: list[tuple[Any, ...]],
        rows: list[dict[str, Any]],
    ) -> None:
        with self._lease.begin() as connection:
            # Marks first: a result in the same group is newer than its mark.
            self._steps.marked.execute_many(connection, marks)
            self._steps.sent.execute_many(connection, sent)
            self._update(connection, rows)
        self.transactions += 1
        self.rows_written += len(marks) + len(sent) + len(rows)

    @staticmethod
    def _update(connection: Connection, rows: list[dict[str, Any]]) -> None:
        for columns, same in _by_columns(rows).items():
            connection.execute(_update_statement(columns), same)


def _by_columns(rows: list[dict[str, Any]]) -> dict[tuple[str, ...], list[dict[str, Any]]]:
    """Rows that set the same columns go in one executemany (order kept per step)."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(sorted(k for k in row if k != "id")), []).append(
            {("step_id_" if k == "id" else k): v for k, v in row.items()}
        )
    return groups


@functools.lru_cache(maxsize=32)
def _update_statement(columns: tuple[str, ...]) -> Update:
    table = cast(Table, RunStepRow.__table__)
    return (
        update(table)
        .where(table.c.id == bindparam("step_id_"))
        .values({name: bindparam(name) for name in columns})
    )
