"""Executing a batch run: many messages, one step each, sent concurrently, recorded in groups.

The steps are streamed from the database in pages (never all at once) into a
small queue that `concurrency` sender tasks drain; each calls `deliver()` with
its own Message-ID. Recording is grouped, so the database is never the
bottleneck: a `StepWriter` collects step updates and writes each group in one
transaction.

Durability follows the single-send path (engine/executor.py): before a message
is handed to the connection pool, its step is durably `sending` with its
Message-ID. That write is the one a sender waits for; the writer commits every
waiting mark together (group commit), so it costs one transaction per group,
not one per message, and because the batch keeps several messages in hand per
connection of the pool (four by default), the wait hides behind the pool's queue
instead of stalling a connection. Results ride along in the next transaction
(at the latest `FLUSH_SECONDS` later). After a crash, a step found `sending`
has an unknown outcome: it is sent again with the same Message-ID, and a note
on the step says so, exactly as for a single send. The window is the messages
in hand (`concurrency`) plus the results not yet committed; a failure whose
stage proves DATA never began clears the mark.

Rate limits: each message takes a slot from the process-wide limiter of its
target. A slot within `RATE_INLINE_WAIT` is waited for; further away (a per-day
budget spent) the batch stops taking messages, the one held back is marked
"deferred" with a note saying until when, and the run is deferred to then;
nothing is failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, Update, bindparam, func, select, update

from mailwright.domain.addresses import Address
from mailwright.domain.message import OutgoingMessage, make_message_id
from mailwright.engine import executor as engine
from mailwright.engine.executor import RATE_LIMIT_NOTE, Executor, error_record, is_transient
from mailwright.errors import (
    MailwrightError,
    TargetAuthError,
    TargetConnectError,
    TargetDeferredError,
    TargetRejectedError,
    TargetTLSError,
)
from mailwright.services.batches import BatchMessage, sender_of
from mailwright.services.ratelimit import RateLimitedError, RateLimits
from mailwright.services.sending import build_outgoing, deliver
from mailwright.services.targets import ResolvedTarget
from mailwright.storage.db import Database
from mailwright.storage.tables import RunRow, RunStepRow, utcnow

log = logging.getLogger(__name__)

PAGE = 500  # steps read per query
FLUSH_SECONDS = 0.2  # results wait at most this long for a transaction
FLUSH_ROWS = 500  # ... or until this many are waiting
RATE_INLINE_WAIT = 120.0  # a batch may wait this long for a rate-limit slot in place
OPEN = ("pending", "deferred", "running")  # steps still to send ("running": in flight at a crash)
# Protocol stages of a failure that prove the message's DATA never started.
BEFORE_DATA = frozenset({"connect", "tls", "ehlo", "starttls", "auth", "mail", "rcpt"})
# Errors about the target, not the message: every other message would fail the same way, so the
# batch stops (its other messages are skipped, and `mailwright runs retry` takes them up again).
TARGET_LEVEL = (TargetAuthError, TargetTLSError, TargetConnectError)


@dataclass
class BatchProgress:
    """Live counts of one batch execution, read by the CLI's progress bar."""

    total: int
    sent: int = 0
    partial: int = 0
    failed: int = 0
    done_before: int = 0  # finished in an earlier execution (a resumed batch)
    started: float = field(default_factory=time.monotonic)
    deferred_until: datetime | None = None
    deferred_reason: str | None = None
    finished: bool = False

    @property
    def done(self) -> int:
        return self.done_before + self.sent + self.partial + self.failed

    @property
    def elapsed(self) -> float:
        return max(1e-9, time.monotonic() - self.started)

    @property
    def rate(self) -> float:
        """Messages finished per second in this execution."""
        return (self.sent + self.partial + self.failed) / self.elapsed

    @property
    def eta(self) -> float | None:
        rate = self.rate
        return (self.total - self.done) / rate if rate > 0 else None


@dataclass
class _Step:
    id: str
    index: int
    inputs: dict[str, Any]
    message_id: str | None
    send_state: str | None
    attempts: int
    max_attempts: int
    notes: list[str]


class StepWriter:
    """Group commit of step updates.

    `mark_sending` returns once the mark is committed (a sender waits for it before
    DATA); `record` returns at once and its row joins the next transaction.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._marks: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._rows: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None
        self.transactions = 0
        self.rows_written = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="batch-step-writer")

    async def mark_sending(self, values: dict[str, Any]) -> None:
        if self._failed is not None:
            raise self._failed
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._marks.append((values, done))
        self._wake.set()
        await done

    def record(self, values: dict[str, Any]) -> None:
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

    async def _loop(self) -> None:
        while True:
            if not self._marks and not self._closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=FLUSH_SECONDS)
            self._wake.clear()
            marks, self._marks = self._marks, []
            rows, self._rows = self._rows, []
            if not marks and not rows:
                if self._closing:
                    return
                continue
            try:
                await asyncio.to_thread(self._write, [m for m, _ in marks], rows)
            except Exception as exc:  # the senders waiting on a mark must not hang
                log.exception("recording batch results failed")
                self._failed = exc
                for _, done in marks + self._marks:
                    if not done.done():
                        done.set_exception(exc)
                return
            for _, done in marks:
                if not done.done():
                    done.set_result(None)

    def _write(self, marks: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
        # Core executemany, not the ORM: this runs for every group of messages.
        with self._db.engine.begin() as connection:
            # Marks first: a result in the same group is newer than its mark.
            for group in (marks, rows):
                for columns, same in _by_columns(group).items():
                    connection.execute(_update_statement(columns), same)
        self.transactions += 1
        self.rows_written += len(marks) + len(rows)


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


class _Stop(Exception):
    """Ends the batch early: `status` is what the run becomes."""

    def __init__(self, status: str, *, error: dict[str, Any] | None = None, until: datetime | None = None):
        super().__init__(status)
        self.status = status
        self.error = error
        self.until = until


class BatchRunner:
    """One execution of a claimed batch run (the executor holds and renews the lease)."""

    def __init__(self, executor: Executor, *, run_id: str, lost: asyncio.Event) -> None:
        self._executor = executor
        self._db: Database = executor._db
        self._targets = executor._targets
        self._run_id = run_id
        self._lost = lost
        self._writer = StepWriter(self._db)
        self._queue: asyncio.Queue[_Step | None] = asyncio.Queue()
        self._stop: _Stop | None = None
        self._resolved: dict[tuple[str, str | None], ResolvedTarget] = {}
        self._senders: dict[tuple[str, str | None], Address] = {}
        self._target = ""
        self._account_key: str | None = None
        self._concurrency = 16
        self.progress = BatchProgress(total=0)

    # --- the whole run ----------------------------------------------------------------

    async def run(self) -> str:
        await asyncio.to_thread(self._load_run)
        if self._executor.on_batch_progress is not None:
            self._executor.on_batch_progress(self.progress)
        self._writer.start()
        senders = [asyncio.create_task(self._sender()) for _ in range(self._concurrency)]
        try:
            await self._feed()
        finally:
            for _ in senders:
                self._queue.put_nowait(None)
            await asyncio.gather(*senders, return_exceptions=True)
            await self._writer.close()
        log.info(
            "batch %s: %d sent, %d partial, %d failed in %.1f s (%.0f msg/s; %d transactions)",
            self._run_id,
            self.progress.sent,
            self.progress.partial,
            self.progress.failed,
            self.progress.elapsed,
            self.progress.rate,
            self._writer.transactions,
        )
        status = await asyncio.to_thread(self._settle)
        self.progress.finished = True
        return status

    def _load_run(self) -> None:
        with self._db.session() as session:
            run = session.get(RunRow, self._run_id)
            assert run is not None
            if run.started_at is None:
                run.started_at = utcnow()
            self._target, self._account_key = run.target or "", run.account_key
            self._concurrency = int(run.document.get("concurrency") or 16)
            counts = dict(
                session.execute(
                    select(RunStepRow.status, func.count())
                    .where(RunStepRow.run_id == self._run_id)
                    .group_by(RunStepRow.status)
                ).all()
            )
        total = sum(int(n) for n in counts.values())
        open_steps = sum(int(counts.get(status, 0)) for status in OPEN)
        self.progress = BatchProgress(total=total, done_before=total - open_steps)

    async def _feed(self) -> None:
        """Page through the open steps in message order and hand them to the senders."""
        after = -1
        while self._stop is None:
            if await self._should_stop():
                return
            page = await asyncio.to_thread(self._page, after)
            if not page:
                return
            for step in page:
                # A bounded queue keeps memory flat: the reader waits for the senders.
                while self._queue.qsize() >= 2 * self._concurrency and self._stop is None:
                    await asyncio.sleep(0.002)
                if self._stop is not None:
                    return
                self._queue.put_nowait(step)
            after = page[-1].index

    async def _should_stop(self) -> bool:
        if self._lost.is_set():
            self._stop = _Stop("running")
        elif self._executor.stopping.is_set():
            self._stop = _Stop("queued")
        elif await asyncio.to_thread(self._executor._cancel_requested, self._run_id):
            self._stop = _Stop("cancelled")
        return self._stop is not None

    def _page(self, after: int) -> list[_Step]:
        with self._db.session() as session:
            rows = session.execute(
                select(
                    RunStepRow.id,
                    RunStepRow.item_index,
                    RunStepRow.inputs,
                    RunStepRow.message_id,
                    RunStepRow.send_state,
                    RunStepRow.attempts,
                    RunStepRow.max_attempts,
                    RunStepRow.notes,
                )
                .where(
                    RunStepRow.run_id == self._run_id,
                    RunStepRow.position == 0,
                    RunStepRow.item_index > after,
                    RunStepRow.status.in_(OPEN),
                )
                .order_by(RunStepRow.item_index)
                .limit(PAGE)
            ).all()
        return [
            _Step(
                id=r.id,
                index=r.item_index,
                inputs=r.inputs or {},
                message_id=r.message_id,
                send_state=r.send_state,
                attempts=r.attempts,
                max_attempts=r.max_attempts,
                notes=list(r.notes or []),
            )
            for r in rows
        ]

    # --- one message -------------------------------------------------------------------

    async def _sender(self) -> None:
        while True:
            step = await self._queue.get()
            if step is None or self._stop is not None:
                return
            try:
                await self._send(step)
            except _Stop as stop:
                if self._stop is None:
                    self._stop = stop
            except Exception as exc:  # a bug must not stall the batch: the step records it
                log.exception("batch %s message %d: unexpected error", self._run_id, step.index)
                self._fail(step, exc)

    async def _send(self, step: _Step) -> None:
        try:
            message, resolved, request = self._prepare(step)
        except MailwrightError as exc:
            self._fail(step, exc)
            return
        if step.send_state == "sending":
            step.notes.append(
                f"attempt {step.attempts}: the process stopped after DATA began, before the server's reply "
                "was recorded; the outcome is unknown, so the message is sent again with the same "
                f"Message-ID {step.message_id}"
            )
            step.send_state = "unknown"
        step.message_id = step.message_id or make_message_id(message.sender.ascii_domain)
        while True:
            await self._throttle(step, resolved)
            step.attempts += 1
            await self._mark_sending(step)
            try:
                result = await deliver(
                    message,
                    resolved,
                    continue_if_one_address_valid=request.continue_if_one_address_valid,
                    message_id=step.message_id,
                )
            except Exception as exc:
                if not _data_may_have_begun(exc):
                    step.send_state = None  # it failed before DATA: certainly not delivered
                if _transient(exc) and step.attempts < step.max_attempts:
                    wait = _backoff(step.attempts)
                    if step.send_state == "sending" and not isinstance(exc, TargetDeferredError):
                        step.notes.append(
                            f"attempt {step.attempts}: the connection failed after DATA began; the outcome "
                            "is unknown, so the message is sent again with the same Message-ID"
                        )
                    step.notes.append(
                        f"attempt {step.attempts} failed ({_message(exc)}); retrying in {wait:.1f} s"
                    )
                    await asyncio.sleep(wait)
                    continue
                self._fail(step, exc)
                if isinstance(exc, TARGET_LEVEL):
                    raise _Stop("failed", error=exc.details()) from exc
                return
            output = result.model_dump(mode="json")
            self._writer.record(
                {
                    "id": step.id,
                    "status": "succeeded",
                    "output": output,
                    "error": None,
                    "send_state": "sent",
                    "message_id": step.message_id,
                    "attempts": step.attempts,
                    "notes": step.notes,
                    "finished_at": utcnow(),
                    "updated_at": utcnow(),
                }
            )
            if result.status == "sent":
                self.progress.sent += 1
            else:
                self.progress.partial += 1
            return

    def _prepare(self, step: _Step) -> tuple[OutgoingMessage, ResolvedTarget, BatchMessage]:
        request = BatchMessage.model_validate(step.inputs)
        key = request.account_key if request.account_key is not None else self._account_key
        which = (request.target.strip().casefold() or "", key)
        resolved = self._resolved.get(which)
        if resolved is None:
            resolved = self._targets.resolve(request.target or self._target, account_key=key)
            self._resolved[which] = resolved
        sender = sender_of(request, resolved, cache=self._senders)
        return build_outgoing(request, sender, files=self._executor._files), resolved, request

    async def _throttle(self, step: _Step, resolved: ResolvedTarget) -> None:
        limits = RateLimits.of(resolved.settings)
        if not limits:
            return
        try:
            await self._targets.rate_limits.acquire(
                key=resolved.target.id,
                limits=limits,
                target=resolved.target.display_name,
                max_wait=RATE_INLINE_WAIT,
            )
        except RateLimitedError as exc:
            notes = [n for n in step.notes if not n.startswith(RATE_LIMIT_NOTE)]
            step.notes = [*notes, f"{RATE_LIMIT_NOTE}{exc.message}"]
            self._writer.record(
                {"id": step.id, "status": "deferred", "notes": step.notes, "updated_at": utcnow()}
            )
            self.progress.deferred_until = exc.until
            self.progress.deferred_reason = exc.message
            raise _Stop("deferred", until=exc.until) from exc

    async def _mark_sending(self, step: _Step) -> None:
        """Durably "sending" before the message is handed to the pool (whose queue hides the wait).

        Marking here rather than in the pool's before-DATA hook keeps the commit out of the
        connection's path; the price is that a crash may also leave messages still queued in
        the pool marked "sending": they are resent with their Message-ID, never lost.
        """
        await self._writer.mark_sending(
            {
                "id": step.id,
                "status": "running",
                "send_state": "sending",
                "message_id": step.message_id,
                "attempts": step.attempts,
                "notes": step.notes,
                "started_at": utcnow(),
                "updated_at": utcnow(),
            }
        )
        step.send_state = "sending"

    def _fail(self, step: _Step, exc: BaseException) -> None:
        # A refusal after DATA means nothing was delivered; a dropped connection there
        # leaves "sending": the outcome is unknown (as in the single-send path).
        refused = isinstance(exc, TargetRejectedError | TargetDeferredError)
        send_state = None if refused or step.send_state != "sending" else "sending"
        self._writer.record(
            {
                "id": step.id,
                "status": "failed",
                "error": error_record(exc),
                "send_state": send_state,
                "message_id": step.message_id,
                "attempts": max(step.attempts, 1),
                "notes": step.notes,
                "finished_at": utcnow(),
                "updated_at": utcnow(),
            }
        )
        self.progress.failed += 1

    # --- the end ------------------------------------------------------------------------

    def _settle(self) -> str:
        stop = self._stop
        if stop is not None and stop.status == "running":
            return "running"  # the lease was lost: whoever has it now carries on from the rows
        if stop is not None and stop.status == "queued":
            self._executor._release(self._run_id)
            return "queued"
        if stop is not None and stop.status == "deferred":
            assert stop.until is not None
            self._executor._defer_run(self._run_id, max(0.0, (stop.until - utcnow()).total_seconds()))
            return "queued"
        if stop is not None and stop.status in ("cancelled", "failed"):
            self._close_remaining("cancelled" if stop.status == "cancelled" else "skipped")
            return self._finish(stop.status, stop.error)
        counts = self._counts()
        if any(counts.get(s, 0) for s in OPEN):
            # Steps still open (e.g. a stop raced the last page): leave the run for the next pass.
            self._executor._release(self._run_id)
            return "queued"
        failed = counts.get("failed", 0)
        if failed:
            total = sum(counts.values())
            error = {
                "code": "batch_failed",
                "message": f"{failed:,} of {total:,} messages failed; see the failed steps",
            }
            return self._finish("failed", error)
        return self._finish("succeeded", None)

    def _counts(self) -> dict[str, int]:
        with self._db.session() as session:
            rows = session.execute(
                select(RunStepRow.status, func.count())
                .where(RunStepRow.run_id == self._run_id)
                .group_by(RunStepRow.status)
            ).all()
        return {status: int(n) for status, n in rows}

    def _close_remaining(self, status: str) -> None:
        with self._db.session() as session:
            session.execute(
                update(RunStepRow)
                .where(RunStepRow.run_id == self._run_id, RunStepRow.status.in_(("pending", "deferred")))
                .values(status=status, updated_at=utcnow())
            )

    def _finish(self, status: str, error: dict[str, Any] | None) -> str:
        with self._db.session() as session:
            run = session.get(RunRow, self._run_id)
            assert run is not None
            run.status = status
            run.error = error
            run.finished_at = utcnow()
            run.lease_owner = None
            run.lease_expires_at = None
            run.not_before = None
        log.info("run %s %s", self._run_id, status)
        return status


def _data_may_have_begun(exc: BaseException) -> bool:
    return getattr(exc, "stage", None) not in BEFORE_DATA


def _transient(exc: BaseException) -> bool:
    return is_transient(exc) and not isinstance(exc, RateLimitedError)


def _backoff(attempt: int) -> float:
    # The schedule of single sends, capped short: a batch retries in place.
    return min(engine.INLINE_WAIT, engine.backoff(attempt))


def _message(exc: BaseException) -> str:
    return str(error_record(exc).get("message", exc))
