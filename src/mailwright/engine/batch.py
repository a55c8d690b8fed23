"""Executing a batch run: many messages, one step each, sent concurrently, recorded in groups.

The steps are streamed from the database in pages (never all at once) into a
small queue that `concurrency` sender tasks drain; each calls `deliver()` with
its own Message-ID. Recording is grouped, so the database is never the
bottleneck: a `StepWriter` collects step updates and writes each group in one
transaction.

Durability follows the single-send path (engine/executor.py): a message's
Message-ID is fixed when the batch is stored, and just before its DATA is
written (the connection pool's before-DATA hook) its step is durably `sending`.
The marks of all connections are grouped into one transaction by the writer,
so a mark costs a sender the wait for a shared commit, not one of its own.
Every transaction of the writer is fenced by the run's lease (engine/lease.py):
a worker that lost the lease gets `LeaseLostError` from its next mark and stops
at once, having sent nothing that was not marked, and writes nothing more.

A step found `sending` when the batch is (re)started was being sent when an
earlier execution stopped: its outcome is unknown, so it is recorded as
`unknown` and not sent again (`runs retry --include-unknown` does that). The same
holds for a message whose connection dropped, or whose reply timed out, after
it was written. Every other failure is the message's own (retried in place
when transient, up to its attempts), except those that prove the target
unusable: authentication, TLS, or no connection at all. Those stop the batch.

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
from sqlalchemy.orm import Session

from mailwright.domain.addresses import Address
from mailwright.domain.message import OutgoingMessage, make_message_id
from mailwright.engine import executor as engine
from mailwright.engine.executor import (
    CRASH_WHY,
    RATE_LIMIT_NOTE,
    UNKNOWN,
    Executor,
    close_run,
    error_record,
    is_transient,
    may_have_arrived,
    unknown_error,
    unknown_note,
)
from mailwright.engine.lease import Lease
from mailwright.errors import (
    LeaseLostError,
    MailwrightError,
    RateLimitedError,
    TargetAuthError,
    TargetConnectError,
    TargetTimeoutError,
    TargetTLSError,
)
from mailwright.services.batches import BatchMessage, sender_of
from mailwright.services.sending import build_outgoing, deliver_output
from mailwright.services.targets import ResolvedTarget
from mailwright.storage.batch_steps import OPEN, batch_steps
from mailwright.storage.db import Database
from mailwright.storage.group import BLIP_WAITS, is_blip
from mailwright.storage.tables import RunRow, RunStepRow, utcnow
from mailwright.targets.capabilities import MailSender

log = logging.getLogger(__name__)


PAGE = 500  # steps read per query
FLUSH_SECONDS = 0.2  # results wait at most this long for a transaction
FLUSH_ROWS = 500  # ... or until this many are waiting
RATE_INLINE_WAIT = 120.0  # a batch may wait this long for a rate-limit slot in place
# Stages of opening a connection: a connection or timeout failure there (after the retries) means
# the server is unreachable, and every other message would fail the same way.
OPENING = frozenset({"connect", "tls", "ehlo", "starttls", "auth"})


@dataclass
class BatchProgress:
    """Live counts of one batch execution, read by the CLI's progress bar."""

    total: int
    sent: int = 0
    partial: int = 0
    failed: int = 0
    unknown: int = 0  # may or may not have been delivered (see the module's docstring)
    done_before: int = 0  # finished in an earlier execution (a resumed batch)
    started: float = field(default_factory=time.monotonic)
    deferred_until: datetime | None = None
    deferred_reason: str | None = None
    finished: bool = False

    @property
    def done(self) -> int:
        return self.done_before + self.finished_here

    @property
    def finished_here(self) -> int:
        return self.sent + self.partial + self.failed + self.unknown

    @property
    def elapsed(self) -> float:
        return max(1e-9, time.monotonic() - self.started)

    @property
    def rate(self) -> float:
        """Messages finished per second in this execution."""
        return self.finished_here / self.elapsed

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

    `mark_sending` returns once the mark is committed (a sender waits for it
    before DATA); `record_sent` and `record` return at once and their rows join
    the next transaction. Every transaction is fenced by the run's lease: once it
    is lost, nothing more is written, and every mark raises `LeaseLostError`.
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

    async def mark_sending(self, values: tuple[Any, ...]) -> None:
        """A message is durably `sending` (the values of `MARK_COLUMNS`) once this returns."""
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


class _Stop(Exception):
    """Ends the batch early: `status` is what the run becomes."""

    def __init__(self, status: str, *, error: dict[str, Any] | None = None, until: datetime | None = None):
        super().__init__(status)
        self.status = status
        self.error = error
        self.until = until


class BatchRunner:
    """One execution of a claimed batch run (the executor holds the lease; `lease` renews it)."""

    def __init__(self, executor: Executor, *, run_id: str, lease: Lease) -> None:
        self._executor = executor
        self._db: Database = executor._db
        self._targets = executor._targets
        self._run_id = run_id
        self._lease = lease
        self._writer = StepWriter(self._db, lease)
        self._steps = batch_steps(self._db.engine.dialect)
        self._queue: asyncio.Queue[_Step | None] = asyncio.Queue()
        self._stop: _Stop | None = None
        self._resolved: dict[tuple[str, str | None], ResolvedTarget] = {}
        self._senders: dict[tuple[str, str | None], Address] = {}
        self._pools: dict[int, MailSender] = {}  # by id() of the entries of `_resolved`
        self._target = ""
        self._account_key: str | None = None
        self._concurrency = 16
        self._room = asyncio.Event()  # the queue has room for more messages
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
        except BaseException:
            self._drain_queue()
            raise
        finally:
            if self._stop is not None:
                self._drain_queue()  # messages no sender took: untouched in the database
            for _ in senders:
                self._queue.put_nowait(None)
            await asyncio.gather(*senders, return_exceptions=True)
            await self._close_writer()
        log.info(
            "batch %s: %d sent, %d partial, %d failed, %d unknown in %.1f s (%.0f msg/s; %d transactions)",
            self._run_id,
            self.progress.sent,
            self.progress.partial,
            self.progress.failed,
            self.progress.unknown,
            self.progress.elapsed,
            self.progress.rate,
            self._writer.transactions,
        )
        status = await self._settle()
        self.progress.finished = True
        return status

    async def _close_writer(self) -> None:
        try:
            await self._writer.close()
        except LeaseLostError:
            self._stop = _Stop("running")  # what was not written is the new owner's to find

    def _load_run(self) -> None:
        with self._db.session() as session:
            run = session.get(RunRow, self._run_id)
            assert run is not None
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
        """Page through the open steps in message order and hand them to the senders.

        The queue holds at most `concurrency` messages beyond those the senders
        hold, so a stop leaves little to drain; nothing is marked before a sender
        hands its message to the connection pool.
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
            for step in page:
                while self._queue.qsize() >= self._concurrency and not self._told_to_halt():
                    self._room.clear()
                    await self._unless_halted(self._room.wait())
                if self._told_to_halt():
                    return
                self._queue.put_nowait(step)

    def _drain_queue(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()

    async def _should_stop(self) -> bool:
        if not self._told_to_halt() and await asyncio.to_thread(
            self._executor._cancel_requested, self._run_id
        ):
            self._stop = _Stop("cancelled")
        return self._stop is not None

    def _told_to_halt(self) -> bool:
        """The part of `_should_stop` that needs no database: checked for every message."""
        if self._stop is None:
            if self._lease.is_lost:
                self._stop = _Stop("running")
            elif self._executor.stopping.is_set():
                self._stop = _Stop("queued")
        return self._stop is not None

    async def _unless_halted(self, work: Awaitable[Any]) -> bool:
        """Wait for `work` (a rate-limit slot can be minutes away) unless the batch is stopped."""
        task = asyncio.ensure_future(work)
        halts = [
            asyncio.ensure_future(self._executor.stopping.wait()),
            asyncio.ensure_future(self._lease.lost.wait()),
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
            step = await self._queue.get()
            self._room.set()
            if step is None or self._told_to_halt():
                return
            try:
                await self._send(step)
            except _Stop as stop:
                if self._stop is None:
                    self._stop = stop
            except LeaseLostError:
                self._told_to_halt()
            except Exception as exc:  # a bug must not stall the batch: the step records it
                log.exception("batch %s message %d: unexpected error", self._run_id, step.index)
                self._fail(step, exc)

    async def _send(self, step: _Step) -> None:
        if step.send_state == "sending":  # an earlier execution stopped while sending it
            self._unknown(step, unknown_error(self._run_id, CRASH_WHY), CRASH_WHY)
            return
        try:
            message, resolved, request = self._prepare(step)
        except MailwrightError as exc:
            self._fail(step, exc)
            return
        step.message_id = step.message_id or make_message_id(message.sender.ascii_domain)
        while True:
            if not await self._throttle(step, resolved):
                return  # stopped while waiting for a slot: the step is as it was
            step.attempts += 1
            try:
                output = await deliver_output(
                    message,
                    resolved,
                    continue_if_one_address_valid=request.continue_if_one_address_valid,
                    message_id=step.message_id,
                    sender=self._pool_of(resolved),
                    before_data=functools.partial(self._mark_sending, step),
                )
            except LeaseLostError:
                raise
            except Exception as exc:
                if not await self._failed_attempt(step, exc):
                    return
                continue
            now = utcnow()
            self._writer.record_sent((output, step.message_id, step.attempts, step.notes, now, now, step.id))
            if output["status"] == "sent":
                self.progress.sent += 1
            else:
                self.progress.partial += 1
            return

    async def _failed_attempt(self, step: _Step, exc: Exception) -> bool:
        """Record a failed attempt; True if the message should be tried again now."""
        marked = step.send_state == "sending"
        step.send_state = None
        if marked and may_have_arrived(exc):
            error = {**error_record(exc), "outcome": UNKNOWN}
            self._unknown(step, error, str(error["message"]))
            return False
        if not (_transient(exc) and step.attempts < step.max_attempts):
            self._fail(step, exc)
            if _target_unusable(exc):
                raise _Stop("failed", error=error_record(exc)) from exc
            return False
        wait = _backoff(step.attempts)
        step.notes.append(f"attempt {step.attempts} failed ({_message(exc)}); retrying in {wait:.1f} s")
        if marked:  # undo the mark at once: after a crash now, the message is sent, not "unknown"
            self._writer.record(
                {
                    "id": step.id,
                    "status": "deferred",
                    "send_state": None,
                    "message_id": step.message_id,
                    "attempts": step.attempts,
                    "notes": step.notes,
                    "updated_at": utcnow(),
                }
            )
        return await self._unless_halted(asyncio.sleep(wait))

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

    def _pool_of(self, resolved: ResolvedTarget) -> MailSender:
        # Looked up once per target and key of the batch: the lookup digests the key's secret.
        pool = self._pools.get(id(resolved))
        if pool is None or pool.closed:
            pool = self._pools[id(resolved)] = resolved.mail_sender("sending mail")
        return pool

    async def _throttle(self, step: _Step, resolved: ResolvedTarget) -> bool:
        """Wait for the target's rate-limit slot; False if the batch was stopped meanwhile."""
        limits = self._pool_of(resolved).rate_limits
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
            self._writer.record(
                {"id": step.id, "status": "deferred", "notes": step.notes, "updated_at": utcnow()}
            )
            self.progress.deferred_until = exc.until
            self.progress.deferred_reason = exc.message
            raise _Stop("deferred", until=exc.until) from exc

    async def _mark_sending(self, step: _Step) -> None:
        """Durably "sending" just before DATA: the pool's hook, grouped with the other senders'.

        Checked against the lease before and after: a worker paused past its lease
        (or that cannot renew it) sends nothing more.
        """
        self._lease.check()
        now = utcnow()
        await self._writer.mark_sending((step.message_id, step.attempts, now, now, step.id))
        self._lease.check()
        step.send_state = "sending"

    def _unknown(self, step: _Step, error: dict[str, Any], why: str) -> None:
        """The message may or may not have been delivered: recorded so, and not sent again."""
        step.notes.append(unknown_note(self._run_id, step.attempts, step.message_id, why))
        self._writer.record(
            {
                "id": step.id,
                "status": UNKNOWN,
                "send_state": UNKNOWN,
                "error": error,
                "message_id": step.message_id,
                "attempts": step.attempts,
                "notes": step.notes,
                "finished_at": utcnow(),
                "updated_at": utcnow(),
            }
        )
        self.progress.unknown += 1

    def _fail(self, step: _Step, exc: BaseException) -> None:
        self._writer.record(
            {
                "id": step.id,
                "status": "failed",
                "error": error_record(exc),
                "send_state": None,
                "message_id": step.message_id,
                "attempts": max(step.attempts, 1),
                "notes": step.notes,
                "finished_at": utcnow(),
                "updated_at": utcnow(),
            }
        )
        self.progress.failed += 1

    # --- the end ------------------------------------------------------------------------

    async def _settle(self) -> str:
        try:
            return await self._settle_run()
        except LeaseLostError:
            return "running"

    async def _settle_run(self) -> str:
        stop = self._stop
        if stop is not None and stop.status == "running":
            return "running"  # the lease was lost: whoever has it now carries on from the rows
        if stop is not None and stop.status == "queued":
            await self._executor._release(self._run_id)
            return "queued"
        if stop is not None and stop.status == "deferred":
            assert stop.until is not None
            await self._executor._defer_run(self._run_id, max(0.0, (stop.until - utcnow()).total_seconds()))
            return "queued"
        if stop is not None and stop.status in ("cancelled", "failed"):
            return await self._finish(stop.status, stop.error, close_steps=True)
        counts = await asyncio.to_thread(self._counts)
        if any(counts.get(s, 0) for s in OPEN):
            # Steps still open (e.g. a stop raced the last page): leave the run for the next pass.
            await self._executor._release(self._run_id)
            return "queued"
        error = batch_error(self._run_id, counts)
        return await self._finish("failed" if error else "succeeded", error)

    def _counts(self) -> dict[str, int]:
        with self._db.session() as session:
            rows = session.execute(
                select(RunStepRow.status, func.count())
                .where(RunStepRow.run_id == self._run_id)
                .group_by(RunStepRow.status)
            ).all()
        return {status: int(n) for status, n in rows}

    async def _finish(self, status: str, error: dict[str, Any] | None, *, close_steps: bool = False) -> str:
        """The run's end; `close_steps`: its messages not sent are skipped (or cancelled) with it."""

        def apply(session: Session) -> None:
            if close_steps:
                session.execute(
                    update(RunStepRow)
                    .where(RunStepRow.run_id == self._run_id, RunStepRow.status.in_(("pending", "deferred")))
                    .values(status="cancelled" if status == "cancelled" else "skipped", updated_at=utcnow())
                )
            run = session.get(RunRow, self._run_id)
            assert run is not None
            close_run(run, status, error)

        await self._executor._write(self._run_id, apply)
        log.info("run %s %s", self._run_id, status)
        return status


def batch_error(run_id: str, counts: dict[str, int]) -> dict[str, Any] | None:
    """The error of a finished batch whose messages did not all arrive (None when they did)."""
    failed, unknown = counts.get("failed", 0), counts.get(UNKNOWN, 0)
    if not (failed or unknown):
        return None
    total = sum(counts.values())
    parts = [f"{failed:,} of {total:,} messages failed"] if failed else []
    if unknown:
        parts.append(f"{unknown:,} of {total:,} may or may not have been delivered (outcome unknown)")
    return {
        "code": "batch_failed" if failed else "outcome_unknown",
        "message": f"{'; '.join(parts)}; see the steps",
        "hint": f"`mailwright runs show {run_id} --state failed` (or --state unknown) lists them; "
        f"`mailwright runs retry {run_id}` sends the failed ones again (--include-unknown: the unknown too)",
    }


def _target_unusable(exc: BaseException) -> bool:
    """A failure that proves the target unusable for every message: the batch stops."""
    if isinstance(exc, TargetAuthError | TargetTLSError):
        return True
    opening = getattr(exc, "stage", None) in OPENING
    return opening and isinstance(exc, TargetConnectError | TargetTimeoutError)


def _transient(exc: BaseException) -> bool:
    return is_transient(exc) and not isinstance(exc, RateLimitedError)


def _backoff(attempt: int) -> float:
    # The schedule of single sends, capped short: a batch retries in place.
    return min(engine.INLINE_WAIT, engine.backoff(attempt))


def _message(exc: BaseException) -> str:
    return str(error_record(exc).get("message", exc))
