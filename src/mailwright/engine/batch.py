"""Sending a range of a batch run: many messages, one step each, sent concurrently, recorded in groups.

A batch's messages are sent in ranges (ledger/ranges.py), by the worker that
coordinates the run and by any other that helps (engine/batch_ranges.py); this
module sends one range. Its open steps are streamed from the database in pages
(never all at once) into a small queue that `concurrency` sender tasks drain;
each calls `deliver()` with its own Message-ID. Recording is grouped, so the
database is never the bottleneck: the ledger's `StepWriter` (ledger/batch.py)
collects step updates and writes each group in one transaction. The engine writes
no state itself: the ledger does, and what it sends with comes from a
`BatchSender` (engine/ports.py).

Durability follows the single-send path (engine/executor.py): a message's
Message-ID is fixed when the batch is stored, and just before its DATA is
written (the connection pool's before-DATA hook) its step is durably `sending`.
The marks of all connections are grouped into one transaction by the writer,
so a mark costs a sender the wait for a shared commit, not one of its own.
Every transaction of the writer is fenced by the range's lease (ledger/lease.py):
a worker that lost the lease gets `LeaseLostError` from its next mark and stops
at once, having sent nothing that was not marked, and writes nothing more. The
coordinator also stops when it loses the run's lease.

A step found `sending` when a range is (re)started was being sent when an
earlier execution stopped: its outcome is unknown, so it is recorded as
`unknown` and not sent again (`runs retry --include-unknown` does that). The same
holds for a message whose connection dropped, or whose reply timed out, after
it was written. Every other failure is the message's own (retried in place
when transient, up to its attempts), except those that prove the target
unusable: authentication, TLS, or no connection at all. Those stop the batch.

Rate limits: each message takes a slot from the process-wide limiter of its
target. A slot within `RATE_INLINE_WAIT` is waited for; further away (a per-day
budget spent) the range stops taking messages, the one held back is marked
"deferred" with a note saying until when, and the run is deferred to then;
nothing is failed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from mailwright import metrics
from mailwright.domain.message import make_message_id
from mailwright.domain.runs import RunStatus, SendState, StepStatus
from mailwright.engine.ports import BatchSender
from mailwright.engine.retry import asked_wait, batch_retry_wait
from mailwright.errors import (
    LeaseLostError,
    MailwrightError,
    RateLimitedError,
    TargetAuthError,
    TargetConnectError,
    TargetTimeoutError,
    TargetTLSError,
)
from mailwright.ledger import BatchRange, BatchStep, Lease, RunLedger
from mailwright.ledger.outcomes import CRASH_WHY, error_record, may_have_arrived, unknown_error

log = logging.getLogger(__name__)


PAGE = 500  # steps read per query
RATE_INLINE_WAIT = 120.0  # a batch may wait this long for a rate-limit slot in place
# Stages of opening a connection: a connection or timeout failure there (after the retries) means
# the server is unreachable, and every other message would fail the same way.
OPENING = frozenset({"token", "connect", "tls", "ehlo", "starttls", "auth"})


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


class BatchStop(Exception):
    """Ends sending early: `status` is what the run becomes (RUNNING: a lease was lost).

    `until`: a rate limit (or the target) asked to wait until then (QUEUED)."""

    def __init__(
        self, status: RunStatus, *, error: dict[str, Any] | None = None, until: datetime | None = None
    ):
        super().__init__(status)
        self.status = status
        self.error = error
        self.until = until


class RangeRunner:
    """Sends the open messages of one range of a batch (ledger/ranges.py), whose lease this worker
    holds (`held.lease`, renewed by the caller): every step write is fenced by it.

    `also_held`: another lease whose loss stops the sending too (the coordinator's run lease).
    `progress` is counted into (one object for all the ranges an execution sends).
    """

    def __init__(
        self,
        ledger: RunLedger,
        held: BatchRange,
        *,
        sender: BatchSender[Any],
        concurrency: int,
        stopping: asyncio.Event,
        progress: BatchProgress,
        target: str = "",
        also_held: Lease | None = None,
    ) -> None:
        self._ledger = ledger
        self._run_id = held.lease.run_id
        self._target = target  # the batch's target as the run names it: its messages' default
        self._range = held
        self._leases = [held.lease] if also_held is None else [held.lease, also_held]
        self._sender = sender
        self._concurrency = concurrency
        self._stopping = stopping  # the worker is stopping: the run is given back
        self._writer = ledger.batches.writer(held.lease)
        self._queue: asyncio.Queue[BatchStep | None] = asyncio.Queue()
        self._stop: BatchStop | None = None
        self._room = asyncio.Event()  # the queue has room for more messages
        self.progress = progress

    async def run(self) -> BatchStop | None:
        """Send the range through; what stopped it early, or None when every message is done."""
        self._writer.start()
        senders = [asyncio.create_task(self._sending()) for _ in range(self._concurrency)]
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
        return self._stop

    async def _close_writer(self) -> None:
        try:
            await self._writer.close()
        except LeaseLostError:
            self._stop = BatchStop(RunStatus.RUNNING)  # what was not written is the new owner's to find

    async def _feed(self) -> None:
        """Page through the open steps in message order and hand them to the senders.

        The queue holds at most `concurrency` messages beyond those the senders
        hold, so a stop (cancel, shutdown, lost lease) is noticed before a sender
        hands its message to the connection pool.
        """
        reading = asyncio.create_task(asyncio.to_thread(self._page, self._range.first_index - 1))
        try:
            await self._feed_pages(reading)
        finally:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)

    async def _feed_pages(self, reading: asyncio.Task[list[BatchStep]]) -> None:
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

    def _page(self, after: int) -> list[BatchStep]:
        return self._ledger.batches.page(self._run_id, after=after, before=self._range.end_index, limit=PAGE)

    def _drain_queue(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()

    async def _should_stop(self) -> bool:
        if not self._told_to_halt() and await asyncio.to_thread(self._ledger.cancel_requested, self._run_id):
            self._stop = BatchStop(RunStatus.CANCELLED)
        return self._stop is not None

    def _told_to_halt(self) -> bool:
        """The part of `_should_stop` that needs no database: checked for every message."""
        if self._stop is None:
            if any(lease.is_lost for lease in self._leases):
                self._stop = BatchStop(RunStatus.RUNNING)
            elif self._stopping.is_set():
                self._stop = BatchStop(RunStatus.QUEUED)
        return self._stop is not None

    async def _unless_halted(self, work: Awaitable[Any]) -> bool:
        """Wait for `work` (a rate-limit slot can be minutes away) unless the batch is stopped."""
        task = asyncio.ensure_future(work)
        halts = [asyncio.ensure_future(self._stopping.wait())]
        halts += [asyncio.ensure_future(lease.lost.wait()) for lease in self._leases]
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

    # --- one message -------------------------------------------------------------------

    async def _sending(self) -> None:
        while True:
            step = await self._queue.get()
            self._room.set()
            if step is None or self._told_to_halt():
                return
            try:
                await self._send(step)
            except BatchStop as stop:
                if self._stop is None:
                    self._stop = stop
            except LeaseLostError:
                self._told_to_halt()
            except Exception as exc:  # a bug must not stall the batch: the step records it
                log.exception("batch %s message %d: unexpected error", self._run_id, step.index)
                self._fail(step, exc)

    async def _send(self, step: BatchStep) -> None:
        if step.send_state == SendState.SENDING:  # an earlier execution stopped while sending it
            self._unknown(step, unknown_error(self._run_id, CRASH_WHY), CRASH_WHY)
            return
        sender = self._sender
        try:
            message = sender.prepare(step.inputs)
        except MailwrightError as exc:
            self._fail(step, exc)
            return
        step.message_id = step.message_id or make_message_id(sender.message_id_domain(message))
        while True:
            if not await self._throttle(step, sender, message):
                return  # stopped while waiting for a slot: the step is as it was
            step.attempts += 1
            try:
                output = await sender.deliver(
                    message,
                    message_id=step.message_id,
                    before_data=functools.partial(self._writer.mark_sending, step),
                )
            except LeaseLostError:
                raise
            except Exception as exc:
                if not await self._failed_attempt(step, exc):
                    return
                continue
            self._writer.record_sent(step, output)
            metrics.sent(output)
            if output["status"] == "sent":
                self.progress.sent += 1
            else:
                self.progress.partial += 1
            return

    async def _failed_attempt(self, step: BatchStep, exc: Exception) -> bool:
        """Record a failed attempt; True if the message should be tried again now."""
        marked = step.send_state == SendState.SENDING
        step.send_state = None
        if marked and may_have_arrived(exc):
            error = {**error_record(exc), "outcome": StepStatus.UNKNOWN.value}
            self._unknown(step, error, str(error["message"]))
            return False
        asked = asked_wait(exc)
        if asked is not None:
            return await self._paused_by_target(step, exc, asked, marked=marked)
        wait = batch_retry_wait(exc, step.attempts, step.max_attempts)
        if wait is None:
            self._fail(step, exc)
            if _target_unusable(exc):
                raise BatchStop(RunStatus.FAILED, error=error_record(exc)) from exc
            return False
        step.notes.append(f"attempt {step.attempts} failed ({_message(exc)}); retrying in {wait:.1f} s")
        if marked:  # undo the mark at once: after a crash now, the message is sent, not "unknown"
            self._writer.record_retrying(step)
        return await self._unless_halted(asyncio.sleep(wait))

    async def _paused_by_target(self, step: BatchStep, exc: Exception, asked: float, *, marked: bool) -> bool:
        """The target refused for now and said for how long (Graph's 429 with Retry-After).

        Like a rate limit, this is no failure of the message: the try does not count against
        its attempts. A short pause is waited in place; a longer one stops the batch and defers
        the run until then, this message marked deferred.
        """
        step.attempts -= 1
        if marked:  # undo the mark at once: the message was not accepted
            self._writer.record_retrying(step)
        reason = f"{_message(exc)}; the target asked to wait {asked:g} s"
        if asked <= RATE_INLINE_WAIT:
            step.notes.append(reason)
            return await self._unless_halted(asyncio.sleep(asked))
        until = datetime.now(UTC) + timedelta(seconds=asked)
        self._writer.record_rate_limited(step, reason)
        self._count(step, metrics.SendOutcome.DEFERRED, exc, rate_limited=True)
        self.progress.deferred_until = until
        self.progress.deferred_reason = reason
        raise BatchStop(RunStatus.QUEUED, until=until) from exc

    async def _throttle(self, step: BatchStep, sender: BatchSender[Any], message: Any) -> bool:
        """Wait for the target's rate-limit slot; False if the batch was stopped meanwhile."""
        try:
            slot = sender.slot(message, max_wait=RATE_INLINE_WAIT)
            return True if slot is None else await self._unless_halted(slot)
        except RateLimitedError as exc:
            self._writer.record_rate_limited(step, exc.message)
            self._count(step, metrics.SendOutcome.DEFERRED, exc, rate_limited=True)
            self.progress.deferred_until = exc.until
            self.progress.deferred_reason = exc.message
            raise BatchStop(RunStatus.QUEUED, until=exc.until) from exc

    def _unknown(self, step: BatchStep, error: dict[str, Any], why: str) -> None:
        """The message may or may not have been delivered: recorded so, and not sent again."""
        self._writer.record_unknown(step, run_id=self._run_id, error=error, why=why)
        self.progress.unknown += 1
        metrics.send_step(metrics.SendOutcome.UNKNOWN, target=error.get("target") or self._target_of(step))

    def _fail(self, step: BatchStep, exc: BaseException) -> None:
        self._writer.record_failed(step, exc)
        self.progress.failed += 1
        self._count(step, metrics.SendOutcome.FAILED, exc)

    def _count(
        self, step: BatchStep, outcome: metrics.SendOutcome, exc: BaseException, *, rate_limited: bool = False
    ) -> None:
        target = metrics.target_label(exc, self._target_of(step))
        metrics.send_step(outcome, target=target)
        if rate_limited:
            metrics.rate_limit_deferred(target=target)

    def _target_of(self, step: BatchStep) -> str:
        """The target a message names (or the batch's): its metrics label when an error names none."""
        return str(step.inputs.get("target") or self._target)


def batch_error(run_id: str, counts: dict[str, int]) -> dict[str, Any] | None:
    """The error of a finished batch whose messages did not all arrive (None when they did)."""
    failed, unknown = counts.get(StepStatus.FAILED, 0), counts.get(StepStatus.UNKNOWN, 0)
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


def _message(exc: BaseException) -> str:
    return str(error_record(exc).get("message", exc))
