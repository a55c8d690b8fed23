"""Executing a batch run over many workers: its coordinator, and the workers that help it.

A batch's messages are cut into ranges (ledger/ranges.py), each sent by one worker
at a time under a lease of its own, with the machinery of engine/batch.py.

The coordinator is the worker that claimed the run (`BatchRunner`, holding the
run's lease as for any run). It makes the ranges, tells the worker (the executor's
`on_ranges_open` hook) how many are open so that other workers can be hinted, and
sends ranges itself, one at a time. When no free range is left it waits (polling
the database every `POLL` seconds) for the ranges other workers hold: each of
those either finishes, or is let go (a cancel, a shutdown, a rate limit), or its
holder stops renewing it and its lease expires; then the coordinator takes it
over, and its messages found `sending` are recorded `unknown`, never sent again.
The wait is bounded by the range leases: a holder that renews is sending (each
message bounded by its timeouts and attempts), and one that does not loses the
range within a lease. Then the coordinator settles the run as before: totals,
status, deferral, cancel.

A helper is any other worker whose executor is handed the run while the
coordinator holds it (`RangeHelper`): it claims a due open range, sends it,
and repeats while there are more; it honours a cancel request (it lets the range
go at once) and a rate limit (the range is left open, not to be taken by a
helper before the limit's time, so that the coordinator decides the run's
deferral), and stops when its worker stops. It never writes the run's own state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from mailwright.domain.runs import RunStatus
from mailwright.engine.batch import BatchProgress, BatchStop, RangeRunner, batch_error
from mailwright.engine.ports import BatchSender, BatchSenders
from mailwright.errors import LeaseLostError
from mailwright.ledger import BatchRange, Lease, RunLedger
from mailwright.ledger.batch import OPEN_BATCH_STEPS

log = logging.getLogger(__name__)

POLL = 0.5  # seconds between the coordinator's looks at the ranges other workers hold
DEFAULT_CONCURRENCY = 16

# Told, by the coordinator, the run's id and how many of its ranges are open for other workers.
RangesOpen = Callable[[str, int], None]


async def send_range(
    ledger: RunLedger,
    held: BatchRange,
    *,
    sender: BatchSender[Any],
    concurrency: int,
    stopping: asyncio.Event,
    progress: BatchProgress,
    target: str,
    also_held: Lease | None = None,
) -> BatchStop | None:
    """Send one range under its lease (renewed meanwhile), then let it go: done, or open again.

    What stopped it early, or None when every message of it is done.
    """
    runner = RangeRunner(
        ledger,
        held,
        sender=sender,
        concurrency=concurrency,
        stopping=stopping,
        progress=progress,
        target=target,
        also_held=also_held,
    )
    keeper = asyncio.create_task(held.lease.keep())
    try:
        stop = await runner.run()
    finally:
        keeper.cancel()
    await _let_go(ledger, held, stop)
    return stop


async def _let_go(ledger: RunLedger, held: BatchRange, stop: BatchStop | None) -> None:
    if held.lease.is_lost:
        return  # the range is not ours to write: its next holder carries on from the rows
    until: datetime | None = None
    if stop is not None and stop.until is not None:
        until = stop.until  # a rate limit: helpers leave it alone until then
    elif stop is not None and stop.status == RunStatus.FAILED:
        # The target is unusable: left to the coordinator, which fails the run, not to helpers.
        until = datetime.now(UTC) + timedelta(seconds=held.lease.seconds)
    if not await ledger.batches.ranges.let_go(held, done=stop is None, not_before=until):
        log.info("%s: lost before it could be let go; its next holder carries on", held.lease.name)


class BatchRunner:
    """One execution of a claimed batch run, as its coordinator: the executor holds the run's
    lease (`lease`) and renews it."""

    def __init__(
        self,
        ledger: RunLedger,
        lease: Lease,
        *,
        senders: BatchSenders,
        stopping: asyncio.Event,
        on_progress: Callable[[BatchProgress], None] | None = None,
        on_ranges_open: RangesOpen | None = None,
    ) -> None:
        self._ledger = ledger
        self._run_id = lease.run_id
        self._lease = lease
        self._senders = senders
        self._stopping = stopping  # the worker is stopping: the run is given back
        self._on_progress = on_progress
        self._on_ranges_open = on_ranges_open
        self._sender: BatchSender[Any] | None = None
        self._target = ""
        self._concurrency = DEFAULT_CONCURRENCY
        self.progress = BatchProgress(total=0)

    # --- the whole run ----------------------------------------------------------------

    async def run(self) -> RunStatus:
        await asyncio.to_thread(self._load_run)
        if self._on_progress is not None:
            self._on_progress(self.progress)
        try:
            opened = await self._ledger.batches.ranges.open_ranges(self._lease)
        except LeaseLostError:
            return RunStatus.RUNNING
        if opened > 1 and self._on_ranges_open is not None:
            self._on_ranges_open(self._run_id, opened)
        stop = await self._work()
        log.info(
            "batch %s: %d sent, %d partial, %d failed, %d unknown here in %.1f s (%.0f msg/s)",
            self._run_id,
            self.progress.sent,
            self.progress.partial,
            self.progress.failed,
            self.progress.unknown,
            self.progress.elapsed,
            self.progress.rate,
        )
        status = await self._settle(stop)
        self.progress.finished = True
        return status

    def _load_run(self) -> None:
        plan = self._ledger.batches.plan(self._run_id, default_concurrency=self._concurrency)
        self._sender = self._senders.for_batch(target=plan.target, account_key=plan.account_key)
        self._target = plan.target  # the messages' default target: their metrics label
        self._concurrency = plan.concurrency
        total = sum(plan.counts.values())
        self.progress = BatchProgress(total=total, done_before=total - _open(plan.counts))

    async def _work(self) -> BatchStop | None:
        """Send free ranges, and wait for those others hold, until none is left (None) or a stop."""
        duration = timedelta(seconds=self._lease.seconds)
        ranges = self._ledger.batches.ranges
        while (halt := self._halted()) is None:
            # Counted before the claim: a range let go in between is claimed below, not missed.
            others = await asyncio.to_thread(ranges.unfinished, self._run_id)
            try:
                held = await ranges.claim_as_coordinator(self._lease, duration=duration)
            except LeaseLostError:
                return BatchStop(RunStatus.RUNNING)
            if held is not None:
                stop = await self._send(held)
                if stop is not None:
                    return stop
                continue
            if await asyncio.to_thread(self._ledger.cancel_requested, self._run_id):
                return BatchStop(RunStatus.CANCELLED)
            if not others:
                return None
            if self._on_progress is not None:  # someone draws it: count what the others did
                await asyncio.to_thread(self._count_others)
            await self._pause()
        return halt

    async def _send(self, held: BatchRange) -> BatchStop | None:
        assert self._sender is not None
        return await send_range(
            self._ledger,
            held,
            sender=self._sender,
            concurrency=self._concurrency,
            stopping=self._stopping,
            progress=self.progress,
            target=self._target,
            also_held=self._lease,
        )

    def _count_others(self) -> None:
        """The progress learns what the other workers have done."""
        counts = self._ledger.batches.counts(self._run_id)
        self.progress.done_before = sum(counts.values()) - _open(counts) - self.progress.finished_here

    def _halted(self) -> BatchStop | None:
        if self._lease.is_lost:
            return BatchStop(RunStatus.RUNNING)
        if self._stopping.is_set():
            return BatchStop(RunStatus.QUEUED)
        return None

    async def _pause(self) -> None:
        """Wait `POLL` seconds, or less if the worker stops or the run's lease is lost."""
        halts = [
            asyncio.ensure_future(self._stopping.wait()),
            asyncio.ensure_future(self._lease.lost.wait()),
        ]
        try:
            await asyncio.wait(halts, timeout=POLL, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for halt in halts:
                halt.cancel()

    # --- the end ------------------------------------------------------------------------

    async def _settle(self, stop: BatchStop | None) -> RunStatus:
        try:
            return await self._settle_run(stop)
        except LeaseLostError:
            return RunStatus.RUNNING

    async def _settle_run(self, stop: BatchStop | None) -> RunStatus:
        if stop is not None and stop.status == RunStatus.RUNNING:
            return RunStatus.RUNNING  # the lease was lost: whoever has it now carries on from the rows
        if stop is not None and stop.status == RunStatus.QUEUED:
            return await self._give_back(stop.until)
        if stop is not None:  # cancelled, or failed (the target is unusable)
            return await self._finish(stop.status, stop.error, close_steps=True)
        counts = await asyncio.to_thread(self._ledger.batches.counts, self._run_id)
        if _open(counts):
            # Steps still open (e.g. a stop raced the last page): leave the run for the next pass.
            return await self._give_back(None)
        error = batch_error(self._run_id, counts)
        return await self._finish(RunStatus.FAILED if error else RunStatus.SUCCEEDED, error)

    async def _give_back(self, until: datetime | None) -> RunStatus:
        """Release the run (a graceful stop), or defer it (a rate limit) until `until`."""
        if until is None:
            await self._ledger.release(self._lease)
        else:
            await self._ledger.defer(self._lease, wait=max(0.0, (until - datetime.now(UTC)).total_seconds()))
        return RunStatus.QUEUED

    async def _finish(
        self, status: RunStatus, error: dict[str, Any] | None, *, close_steps: bool = False
    ) -> RunStatus:
        """The run's end, once no other worker holds a range of it; `close_steps`: its messages
        not sent are skipped (or cancelled) with it."""
        while not await self._ledger.batches.ranges.seal(self._lease):
            if (halt := self._halted()) is not None:
                return await self._settle_run(halt)
            await self._pause()
        await self._ledger.finish(self._lease, status, error, close_steps=close_steps)
        log.info("run %s %s", self._run_id, status)
        return status


class RangeHelper:
    """Another worker's help with a batch run that a coordinator holds: sends its free ranges."""

    def __init__(
        self,
        ledger: RunLedger,
        run_id: str,
        *,
        owner: str,
        duration: timedelta,
        senders: BatchSenders,
        stopping: asyncio.Event,
    ) -> None:
        self._ledger = ledger
        self._run_id = run_id
        self._owner = owner
        self._duration = duration
        self._senders = senders
        self._stopping = stopping
        self._sender: BatchSender[Any] | None = None
        self._target = ""
        self._concurrency = DEFAULT_CONCURRENCY
        self.progress = BatchProgress(total=0)

    async def run(self) -> int:
        """Send free ranges until none is left, or a stop (cancel, rate limit, lost lease, the
        worker stopping); how many ranges this worker sent through (0: nothing to help with)."""
        ranges = self._ledger.batches.ranges
        done = 0
        while not self._stopping.is_set():
            held = await ranges.claim(self._run_id, owner=self._owner, duration=self._duration)
            if held is None:
                break
            if self._sender is None:
                await asyncio.to_thread(self._load_run)
            assert self._sender is not None
            stop = await send_range(
                self._ledger,
                held,
                sender=self._sender,
                concurrency=self._concurrency,
                stopping=self._stopping,
                progress=self.progress,
                target=self._target,
            )
            if stop is not None:
                log.info("%s: this helper stopped (%s)", held.lease.name, stop.status)
                break
            done += 1
        if done or self.progress.finished_here:
            log.info(
                "batch %s: helped with %d range(s): %d sent, %d partial, %d failed, %d unknown in %.1f s",
                self._run_id,
                done,
                self.progress.sent,
                self.progress.partial,
                self.progress.failed,
                self.progress.unknown,
                self.progress.elapsed,
            )
        return done

    def _load_run(self) -> None:
        plan = self._ledger.batches.plan(self._run_id, default_concurrency=self._concurrency, counts=False)
        self._sender = self._senders.for_batch(target=plan.target, account_key=plan.account_key)
        self._target = plan.target  # the messages' default target: their metrics label
        self._concurrency = plan.concurrency


def _open(counts: dict[str, int]) -> int:
    return sum(counts.get(status, 0) for status in OPEN_BATCH_STEPS)
