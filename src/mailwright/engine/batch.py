"""Executing a batch run: many messages, one step each, sent concurrently, recorded in groups.

The steps are streamed from the database in pages (never all at once) into a
small queue that `concurrency` sender tasks drain; each calls `deliver()` with
its own Message-ID. Recording is grouped, so the database is never the
bottleneck: a `StepWriter` collects step updates and writes each group in one
transaction.

Durability follows the single-send path (engine/executor.py): a message's
Message-ID is fixed when the batch is stored, and before a message is handed
to the connection pool its step is durably `sending`. Those marks are made a
range of messages at a time, in one statement, ahead of the senders: the
first range gives every sender a message; the next ones start at half
`concurrency` and double whenever senders ran out of messages while a mark
was still being written (a fast server), up to a page. Results
ride along in the next transaction (at the latest `FLUSH_SECONDS` later).
After a crash, a step found `sending` has an unknown outcome: it is sent again
with the same Message-ID, and a note on the step says so, exactly as for a
single send. The window is the messages marked and not yet answered: the
senders' (`concurrency`) plus at most two ranges. When the batch stops (a
worker shutting down, a cancel, a deferral), the marked messages no sender
took go back to pending as they were; a failure whose stage proves DATA never
began clears the mark.

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
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, Update, bindparam, func, select, update

from mailwright.domain.addresses import Address
from mailwright.domain.message import OutgoingMessage, make_message_id
from mailwright.engine import executor as engine
from mailwright.engine.executor import RATE_LIMIT_NOTE, Executor, close_run, error_record, is_transient
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
from mailwright.services.sending import build_outgoing, deliver_output, target_pool
from mailwright.services.targets import ResolvedTarget
from mailwright.storage.batch_steps import OPEN, batch_steps
from mailwright.storage.db import Database
from mailwright.storage.tables import RunRow, RunStepRow, utcnow
from mailwright.transport.pool import SMTPPool

log = logging.getLogger(__name__)


PAGE = 500  # steps read per query
FLUSH_SECONDS = 0.2  # results wait at most this long for a transaction
FLUSH_ROWS = 500  # ... or until this many are waiting
RATE_INLINE_WAIT = 120.0  # a batch may wait this long for a rate-limit slot in place
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
    # Marked `sending` with its range, the attempt already counted in `attempts` but not begun.
    counted: bool = False
    prior_state: str | None = None  # its send_state before that mark


class StepWriter:
    """Group commit of step updates.

    `mark_range` and `mark_sending` return once the mark is committed (a sender
    waits for it before DATA); `record_sent` and `record` return at once and
    their rows join the next transaction.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._steps = batch_steps(db.engine.dialect)
        self._ranges: list[tuple[str, int, int]] = []
        self._marks: list[dict[str, Any]] = []
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

    async def mark_range(self, run_id: str, first: int, last: int) -> None:
        """Every open message from `first` to `last` (item indexes) is durably `sending`."""
        self._ranges.append((run_id, first, last))
        await self._committed()

    async def mark_sending(self, values: dict[str, Any]) -> None:
        self._marks.append(values)
        await self._committed()

    async def _committed(self) -> None:
        if self._failed is not None:
            raise self._failed
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(done)
        self._wake.set()
        await done

    def record_sent(self, values: tuple[Any, ...]) -> None:
        """A message sent: the values of `SENT_COLUMNS`."""
        self._sent.append(values)
        if len(self._sent) >= FLUSH_ROWS:
            self._wake.set()

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
            if not self._waiting and not self._closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=FLUSH_SECONDS)
            self._wake.clear()
            ranges, self._ranges = self._ranges, []
            marks, self._marks = self._marks, []
            waiting, self._waiting = self._waiting, []
            sent, self._sent = self._sent, []
            rows, self._rows = self._rows, []
            if not (ranges or marks or sent or rows):
                if self._closing:
                    return
                continue
            try:
                await asyncio.to_thread(self._write, ranges, marks, sent, rows)
            except Exception as exc:  # the senders waiting on a mark must not hang
                log.exception("recording batch results failed")
                self._failed = exc
                for done in waiting + self._waiting:
                    if not done.done():
                        done.set_exception(exc)
                return
            for done in waiting:
                if not done.done():
                    done.set_result(None)

    def _write(
        self,
        ranges: list[tuple[str, int, int]],
        marks: list[dict[str, Any]],
        sent: list[tuple[Any, ...]],
        rows: list[dict[str, Any]],
    ) -> None:
        now = utcnow()
        with self._db.engine.begin() as connection:
            # Marks first: a result in the same group is newer than its mark.
            for run_id, first, last in ranges:
                self._steps.mark.execute(connection, self._steps.mark_values(run_id, first, last, now))
            self._update(connection, marks)
            self._steps.sent.execute_many(connection, sent)
            self._update(connection, rows)
        self.transactions += 1
        self.rows_written += len(ranges) + len(marks) + len(sent) + len(rows)

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
        self._steps = batch_steps(self._db.engine.dialect)
        # Marked `sending` but not yet taken by a sender: put back to pending if the batch stops.
        self._unhanded: dict[str, _Step] = {}
        self._queue: asyncio.Queue[_Step | None] = asyncio.Queue()
        self._stop: _Stop | None = None
        self._resolved: dict[tuple[str, str | None], ResolvedTarget] = {}
        self._senders: dict[tuple[str, str | None], Address] = {}
        self._pools: dict[int, SMTPPool] = {}  # by id() of the entries of `_resolved`
        self._target = ""
        self._account_key: str | None = None
        self._concurrency = 16
        self._mark_every = 8
        self._handed_out = False  # the first range went out
        self._idle_senders = 0  # waiting for the feeder
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
            self._put_back_unhanded()
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
            self._mark_every = max(1, self._concurrency // 2)
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
        """Page through the open steps in message order and hand them to the senders.

        Each range of messages is durably marked `sending` in one statement before
        the first of them is handed out, while the senders work on the range
        before (see the module's docstring for its size). A step stored without a
        Message-ID (by an older version) is marked alone when it is sent.
        """
        reading = asyncio.create_task(asyncio.to_thread(self._page, -1))
        try:
            await self._feed_pages(reading)
        finally:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)

    async def _feed_pages(self, reading: asyncio.Task[list[_Step]]) -> None:
        while self._stop is None:
            if await self._should_stop():
                return
            page = await reading
            if not page:
                return
            # The next page is read while this one is sent: the senders never wait for it.
            reading = asyncio.create_task(asyncio.to_thread(self._page, page[-1].index))
            first = 0
            while first < len(page):
                if self._told_to_halt():
                    return
                # The first range gives every sender a message; later ones top the queue up.
                size = self._mark_every if self._handed_out else self._concurrency
                chunk = page[first : first + size]
                first += len(chunk)
                marking = asyncio.create_task(self._mark_range(chunk))  # while the queue drains
                # Few in hand beyond the senders': a crash leaves at most those "unknown".
                while self._queue.qsize() >= self._mark_every and not self._told_to_halt():
                    await asyncio.sleep(0.001)
                if self._handed_out and self._idle_senders and not marking.done():
                    # Senders ran out of messages while the mark is still being written (a fast
                    # server): mark further ahead. Against a slow one the window stays small.
                    self._mark_every = min(PAGE, 2 * self._mark_every)
                await marking
                if self._stop is not None:
                    return
                self._handed_out = True
                for step in chunk:
                    self._queue.put_nowait(step)

    async def _mark_range(self, chunk: list[_Step]) -> None:
        ready = [step for step in chunk if step.message_id]
        if not ready:
            return
        await self._writer.mark_range(self._run_id, chunk[0].index, chunk[-1].index)
        for step in ready:
            step.attempts += 1
            step.counted = True
            step.prior_state = step.send_state
            self._unhanded[step.id] = step

    async def _should_stop(self) -> bool:
        if not self._told_to_halt() and await asyncio.to_thread(
            self._executor._cancel_requested, self._run_id
        ):
            self._stop = _Stop("cancelled")
        return self._stop is not None

    def _told_to_halt(self) -> bool:
        """The part of `_should_stop` that needs no database: checked for every range and message."""
        if self._stop is None:
            if self._lost.is_set():
                self._stop = _Stop("running")
            elif self._executor.stopping.is_set():
                self._stop = _Stop("queued")
        return self._stop is not None

    async def _unless_halted(self, work: Awaitable[None]) -> bool:
        """Wait for `work` (a rate-limit slot can be minutes away) unless the batch is stopped."""
        task = asyncio.ensure_future(work)
        halts = [
            asyncio.ensure_future(self._executor.stopping.wait()),
            asyncio.ensure_future(self._lost.wait()),
        ]
        try:
            await asyncio.wait([task, *halts], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for halt in halts:
                halt.cancel()
        if task.done():
            task.result()
            return True
        task.cancel()
        self._told_to_halt()
        return False

    def _page(self, after: int) -> list[_Step]:
        with self._db.engine.connect() as connection:
            rows = self._steps.page.rows(connection, (self._run_id, after, PAGE))
        return [
            _Step(
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

    # --- one message -------------------------------------------------------------------

    async def _sender(self) -> None:
        while True:
            if self._queue.empty():
                self._idle_senders += 1
                try:
                    step = await self._queue.get()
                finally:
                    self._idle_senders -= 1
            else:
                step = self._queue.get_nowait()
            if step is None or self._told_to_halt():
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
        self._unhanded.pop(step.id, None)
        try:
            message, resolved, request = self._prepare(step)
        except MailwrightError as exc:
            self._fail(step, exc)
            return
        if step.send_state == "sending":
            step.notes.append(
                f"attempt {step.attempts - step.counted}: the process stopped while the message was being "
                "sent, before the server's reply was recorded; the outcome is unknown, so the message is "
                f"sent again with the same Message-ID {step.message_id}"
            )
            step.send_state = "unknown"
        step.message_id = step.message_id or make_message_id(message.sender.ascii_domain)
        while True:
            if not await self._throttle(step, resolved):
                self._abandon(step)
                return
            if step.counted:  # its range was marked before it was handed out
                step.counted = False
                step.send_state = "sending"
            else:
                step.attempts += 1
                await self._mark_sending(step)
            try:
                output = await deliver_output(
                    message,
                    resolved,
                    continue_if_one_address_valid=request.continue_if_one_address_valid,
                    message_id=step.message_id,
                    pool=self._pool_of(resolved),
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
            now = utcnow()
            self._writer.record_sent((output, step.message_id, step.attempts, step.notes, now, now, step.id))
            if output["status"] == "sent":
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

    def _pool_of(self, resolved: ResolvedTarget) -> SMTPPool:
        # Looked up once per target and key of the batch: the lookup digests the key's secret.
        pool = self._pools.get(id(resolved))
        if pool is None or pool.closed:
            pool = self._pools[id(resolved)] = target_pool(resolved)
        return pool

    async def _throttle(self, step: _Step, resolved: ResolvedTarget) -> bool:
        """Wait for the target's rate-limit slot; False if the batch was stopped meanwhile."""
        limits = RateLimits.of(resolved.settings)
        if not limits:
            return True
        try:
            return await self._unless_halted(
                self._targets.rate_limits.acquire(
                    key=resolved.target.id,
                    limits=limits,
                    target=resolved.target.display_name,
                    max_wait=RATE_INLINE_WAIT,
                )
            )
        except RateLimitedError as exc:
            notes = [n for n in step.notes if not n.startswith(RATE_LIMIT_NOTE)]
            step.notes = [*notes, f"{RATE_LIMIT_NOTE}{exc.message}"]
            row: dict[str, Any] = {
                "id": step.id,
                "status": "deferred",
                "notes": step.notes,
                "updated_at": utcnow(),
            }
            if step.counted:  # marked with its range, never begun: as it was before
                row |= {"attempts": step.attempts - 1, "send_state": step.prior_state}
            self._writer.record(row)
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

    def _abandon(self, step: _Step) -> None:
        """The batch stopped while this message waited for its slot: it was not sent."""
        if step.counted:
            self._unhanded[step.id] = step  # put back as it was before its range was marked
            return
        self._writer.record(
            {
                "id": step.id,
                "status": "pending",
                "send_state": step.send_state,
                "attempts": step.attempts,
                "notes": step.notes,
                "updated_at": utcnow(),
            }
        )

    def _put_back_unhanded(self) -> None:
        """Messages marked with their range that no sender took (the batch stopped): as they were.

        Not when the lease was lost: the run's new owner may be sending them already,
        and to it they are `sending`, an unknown outcome, as after a crash.
        """
        if self._stop is not None and self._stop.status == "running":
            self._unhanded.clear()
            return
        for step in self._unhanded.values():
            self._writer.record(
                {
                    "id": step.id,
                    "status": "pending",
                    "send_state": step.prior_state,
                    "attempts": step.attempts - 1,
                    "updated_at": utcnow(),
                }
            )
        self._unhanded.clear()

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
            close_run(run, status, error)
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
