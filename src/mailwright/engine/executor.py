"""Executing a run: claim it with a lease, run its steps in order, record everything.

The database row is the source of truth. A run is claimed by a conditional
UPDATE (only one worker wins), its lease is renewed while it executes, and a
worker that dies simply lets the lease expire: the recovery loop dispatches the
run again and execution resumes at the first unfinished step. Succeeded steps
are never executed twice; a Send Email step keeps its Message-ID across attempts
and records "sending" just before DATA. Every write of the run's or its steps'
state is fenced by the lease (ledger/lease.py) and written by the run
ledger (mailwright.ledger), never by the executor itself: a worker that lost it writes and
sends nothing more. A step left "sending" (a crash after DATA began, or a
connection lost after the message was written) has an unknown outcome: it is
recorded as `unknown` and sent again only when asked (`runs retry --include-unknown`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel

from mailwright import metrics
from mailwright.domain.expressions import evaluate_condition_async, render_value_async
from mailwright.domain.runs import RunStatus, StepStatus
from mailwright.domain.validation import validate_model
from mailwright.domain.workflows import Step, WorkflowDocument
from mailwright.engine import retry
from mailwright.engine.batch import BatchProgress
from mailwright.engine.batch_ranges import BatchRunner, RangeHelper, RangesOpen
from mailwright.engine.ports import ActivityContexts, BatchSenders
from mailwright.errors import LeaseLostError, MailwrightError, RateLimitedError, StepValueError
from mailwright.ledger import Attempt, Claim, FailedAttempt, Lease, RunLedger
from mailwright.ledger.outcomes import may_have_arrived
from mailwright.plugins import activity

log = logging.getLogger(__name__)

LEASE = timedelta(seconds=30)
BATCH_KIND = "batch"  # a run document of this kind is a batch of messages, one step each
SEND_ACTIVITY = "send_email"  # its steps are counted in the send metrics, by target
STEP_DONE = frozenset(
    {StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.CANCELLED, StepStatus.UNKNOWN}
)


# A step's outcome when its write also ended the run (the last step, succeeded): one write, not two.
CLOSED = "succeeded, run closed"
# An outcome of running a step: its status, or CLOSED.
Outcome = StepStatus | str


def worker_id() -> str:
    """This process's name in run leases: host, pid and a random tag (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Executor:
    def __init__(
        self,
        ledger: RunLedger,
        *,
        contexts: ActivityContexts,
        batches: BatchSenders,
        worker_id: str,
        lease: timedelta = LEASE,
        pool: str | None = None,
    ) -> None:
        self._ledger = ledger
        self.pool = pool  # the worker pool it serves: it claims only that pool's runs
        self._contexts = contexts
        self._batches = batches
        self.worker_id = worker_id
        self.lease = lease
        # Set when the worker is asked to stop: runs are released between steps.
        self.stopping = asyncio.Event()
        # Told the live progress of each batch this executor runs (the CLI draws its bar from it).
        self.on_batch_progress: Callable[[BatchProgress], None] | None = None
        # Told (run id, how many) when this executor starts coordinating a batch with more than one
        # open range: the worker hints that many runs to other workers, which then help with them.
        self.on_ranges_open: RangesOpen | None = None
        self._leases: dict[str, Lease] = {}  # the runs this executor holds now

    # --- claiming -------------------------------------------------------------

    def claim(self, run_id: str) -> bool:
        """Take the run if it is due and nobody holds a live lease on it."""
        return self._ledger.try_claim(run_id, owner=self.worker_id, duration=self.lease, pool=self.pool)

    # --- running --------------------------------------------------------------

    async def execute(self, run_id: str) -> RunStatus | None:
        """Run what is left of a run; returns its status, or None if another worker has it.

        When another worker has it and it is a batch with free ranges, this executor helps: it
        sends those ranges (engine/batch_ranges.py) before returning None; the run's status is
        its coordinator's to report.
        """
        if run_id in self._leases:
            return None  # this executor runs it already: its writes are fenced by that lease
        claim = await self._ledger.claim(run_id, owner=self.worker_id, duration=self.lease, pool=self.pool)
        if claim is None:
            await self.help(run_id)
            return None
        lease = claim.lease
        self._leases[run_id] = lease
        keeper = asyncio.create_task(lease.keep())
        try:
            return await self._execute_claimed(claim)
        except LeaseLostError:
            # Logged by the lease; the run's new owner carries on from the rows.
            return RunStatus.RUNNING
        finally:
            keeper.cancel()
            del self._leases[run_id]

    async def help(self, run_id: str) -> int:
        """Send the free ranges of a batch run that another worker coordinates; how many ranges
        this executor sent through (0: none free, or the run is no batch, or not running, or it
        belongs to another worker pool)."""
        if await asyncio.to_thread(self._ledger.pool_of, run_id) != self.pool:
            return 0  # its target may be reachable from that pool's machines alone
        helper = RangeHelper(
            self._ledger,
            run_id,
            owner=self.worker_id,
            duration=self.lease,
            senders=self._batches,
            stopping=self.stopping,
        )
        return await helper.run()

    async def _execute_claimed(self, claim: Claim) -> RunStatus:
        lease = claim.lease
        if claim.document.get("kind") == BATCH_KIND:
            runner = BatchRunner(
                self._ledger,
                lease,
                senders=self._batches,
                stopping=self.stopping,
                on_progress=self.on_batch_progress,
                on_ranges_open=self.on_ranges_open,
            )
            return await runner.run()
        run_id = lease.run_id
        document = WorkflowDocument.model_validate(claim.document)
        context: dict[str, Any] = {"inputs": dict(claim.inputs), "steps": {}}
        if claim.trigger is not None:
            context["trigger"] = claim.trigger
        target, key = claim.target, claim.account_key
        for position, step in enumerate(document.steps):
            if lease.lost.is_set():
                return RunStatus.RUNNING  # another worker took over; it continues from the rows
            # Before the first step the row was just read by the claim; after, it is read again.
            if claim.cancel_requested if position == 0 else self._ledger.cancel_requested(run_id):
                return await self._finish(lease, RunStatus.CANCELLED, None)
            if self.stopping.is_set():
                await self._ledger.release(lease)
                return RunStatus.QUEUED
            state = claim.steps[position]
            last = position == len(document.steps) - 1
            outcome = await self._run_step(
                lease, position, step, state, context, target=target, key=key, closes=last
            )
            if outcome == CLOSED:  # the last step succeeded, and its write ended the run
                log.info("run %s succeeded", run_id)
                return RunStatus.SUCCEEDED
            if outcome == StepStatus.DEFERRED:
                return RunStatus.QUEUED
            if outcome in (StepStatus.FAILED, StepStatus.UNKNOWN) and not step.continue_on_failure:
                error = context["steps"][step.id].get("error")
                return await self._finish(lease, RunStatus.FAILED, error)
        return await self._finish(lease, RunStatus.SUCCEEDED, None)

    async def _finish(self, lease: Lease, status: RunStatus, error: dict[str, Any] | None) -> RunStatus:
        await self._ledger.finish(lease, status, error)
        log.info("run %s %s", lease.run_id, status)
        return status

    # --- one step (and its for_each items) -------------------------------------

    async def _run_step(
        self,
        lease: Lease,
        position: int,
        step: Step,
        state: dict[str, Any],
        context: dict[str, Any],
        *,
        target: str | None,
        key: str | None,
        closes: bool = False,
    ) -> Outcome:
        """Run the step unless an earlier execution finished it (`state`: as the claim read it).

        `closes`: the run's last step; a plain one that succeeds ends the run in the same
        write, and CLOSED is returned.
        """
        if state["status"] in STEP_DONE:
            context["steps"][step.id] = state
            return StepStatus(state["status"])
        if step.skip_execution:
            return await self._settle(lease, position, context, step, StepStatus.SKIPPED)
        try:
            if step.if_ and not await evaluate_condition_async(step.if_, context):
                return await self._settle(lease, position, context, step, StepStatus.SKIPPED)
            if step.for_each is None:
                return await self._run_item(
                    lease, position, None, step, context, target=target, key=key, closes=closes
                )
            return await self._run_items(lease, position, step, context, target=target, key=key)
        except MailwrightError as exc:  # a bad expression fails the step, not the worker
            return await self._settle(lease, position, context, step, StepStatus.FAILED, error=exc.details())

    async def _run_items(
        self,
        lease: Lease,
        position: int,
        step: Step,
        context: dict[str, Any],
        *,
        target: str | None,
        key: str | None,
    ) -> Outcome:
        items = await self._items(lease, position, step, context)
        outputs: list[Any] = []
        for index, item in enumerate(items):
            outcome = await self._run_item(
                lease, position, index, step, {**context, "item": item}, target=target, key=key
            )
            if outcome == StepStatus.DEFERRED:
                return outcome
            result = self._ledger.item_result(lease.run_id, position, index)
            outputs.append(result.output)
            if result.status in (StepStatus.FAILED, StepStatus.UNKNOWN):
                return await self._settle(
                    lease, position, context, step, result.status, output=outputs, error=result.error
                )
        return await self._settle(lease, position, context, step, StepStatus.SUCCEEDED, output=outputs)

    async def _items(self, lease: Lease, position: int, step: Step, context: dict[str, Any]) -> list[Any]:
        """The for_each list, rendered once and persisted as item rows (a resumed run reuses them)."""
        stored = self._ledger.stored_items(lease.run_id, position)
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
        await self._ledger.store_items(
            lease,
            position=position,
            step_id=step.id,
            activity=step.activity,
            max_attempts=step.retries + 1,
            items=value,
        )
        return value

    async def _run_item(
        self,
        lease: Lease,
        position: int,
        index: int | None,
        step: Step,
        context: dict[str, Any],
        *,
        target: str | None,
        key: str | None,
        closes: bool = False,
    ) -> Outcome:
        run_id = lease.run_id
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
        started = await self._ledger.start_attempt(
            lease, position=position, index=index, max_attempts=step.retries + 1, inputs=recorded
        )
        if not isinstance(started, Attempt):  # finished by an earlier execution: succeeded, or unknown
            if started == StepStatus.UNKNOWN and index is None:
                if step.activity == SEND_ACTIVITY:
                    metrics.send_step(metrics.SendOutcome.UNKNOWN, target=target)
                return await self._settle(lease, position, context, step, StepStatus.UNKNOWN)
            return started
        chosen = _ChosenMessageId(started.message_id)
        where = target  # the target the step names: its metrics label when the error names none
        try:
            if problem is not None:
                raise problem
            assert inputs is not None
            where = await self._render_name(step.target, context) or target
            ctx = self._contexts.context(
                run_id=run_id,
                claim_epoch=lease.epoch,
                step=label,
                target=where,
                account_key=await self._render_name(step.account_key, context) or key,
                message_id=started.message_id,
                remember_message_id=chosen.remember,
                mark_sending=self._marking(lease, started.row_id, chosen),
            )
            output = await asyncio.wait_for(spec.execute(ctx, inputs), timeout=step.timeout)
        except Exception as exc:  # recorded on the step; a bad activity must not stall the run
            if isinstance(exc, LeaseLostError):
                raise  # nothing more is written: the run's new owner decides
            if not isinstance(exc, MailwrightError | TimeoutError):
                log.exception("run %s step %s: unexpected error", run_id, label)
            return await self._failed_attempt(
                lease,
                position,
                index,
                started.row_id,
                step,
                context,
                exc,
                message_id=chosen.value,
                target=where,
            )
        if step.activity == SEND_ACTIVITY:
            metrics.sent(output)
        if index is None:  # one write: the attempt's row is the step's row
            return await self._settle(
                lease, position, context, step, StepStatus.SUCCEEDED, output=output, sent=True, closes=closes
            )
        await self._ledger.complete_item(lease, row_id=started.row_id, output=output)
        return StepStatus.SUCCEEDED

    @staticmethod
    async def _render_name(value: str | None, context: dict[str, Any]) -> str | None:
        if not value:
            return None
        return str(await render_value_async(value, context))

    def _marking(self, lease: Lease, row_id: str, chosen: _ChosenMessageId) -> Callable[[], Awaitable[None]]:
        async def mark() -> None:
            lease.check()  # not after the lease could have run out: nothing is sent then
            await self._ledger.mark_sending(lease, row_id=row_id, message_id=chosen.value)
            lease.check()  # the write may have waited: still ours, with the margin kept?

        return mark

    async def _failed_attempt(
        self,
        lease: Lease,
        position: int,
        index: int | None,
        row_id: str,
        step: Step,
        context: dict[str, Any],
        exc: BaseException,
        *,
        message_id: str | None,
        target: str | None,
    ) -> Outcome:
        if isinstance(exc, RateLimitedError):
            return await self._throttled(lease, row_id, exc)
        failed = await self._ledger.record_failure(
            lease,
            row_id=row_id,
            exc=exc,
            message_id=message_id,
            may_have_arrived=may_have_arrived(exc),
            retry_wait=retry.retry_wait,
        )
        if step.activity == SEND_ACTIVITY:
            _count_failure(failed, exc, target=target)
        if failed.wait is None:
            if index is None:
                return await self._settle(lease, position, context, step, failed.status, error=failed.error)
            return failed.status
        if failed.wait <= retry.INLINE_WAIT:
            await asyncio.sleep(failed.wait)
            target, key = self._ledger.target_and_key(lease.run_id)
            return await self._run_item(lease, position, index, step, context, target=target, key=key)
        await self._ledger.defer(lease, wait=failed.wait)
        return StepStatus.DEFERRED

    async def _throttled(self, lease: Lease, row_id: str, exc: RateLimitedError) -> Outcome:
        """Held back by the target's rate limit: not an attempt and not a failure; the run waits."""
        metrics.rate_limit_deferred(target=exc.target)
        metrics.send_step(metrics.SendOutcome.DEFERRED, target=exc.target)
        await self._ledger.hold_for_rate_limit(lease, row_id=row_id, note=exc.message)
        await self._ledger.defer(lease, wait=max(0.0, (exc.until - datetime.now(UTC)).total_seconds()))
        return StepStatus.DEFERRED

    async def _settle(
        self,
        lease: Lease,
        position: int,
        context: dict[str, Any],
        step: Step,
        status: StepStatus,
        *,
        output: Any = None,
        error: dict[str, Any] | None = None,
        sent: bool = False,
        closes: bool = False,
    ) -> Outcome:
        """Record the step's outcome; `closes` (and it succeeded): the run succeeds in the same write."""
        context["steps"][step.id] = await self._ledger.settle_step(
            lease, position=position, status=status, output=output, error=error, sent=sent, closes=closes
        )
        return CLOSED if closes and status == StepStatus.SUCCEEDED else status


def _count_failure(failed: FailedAttempt, exc: BaseException, *, target: str | None) -> None:
    """A send step's failed attempt in the metrics, when it ends the step or defers the run
    (a retry waited for in place is neither)."""
    if failed.wait is None:
        unknown = failed.status == StepStatus.UNKNOWN
        outcome = metrics.SendOutcome.UNKNOWN if unknown else metrics.SendOutcome.FAILED
    elif failed.wait > retry.INLINE_WAIT:
        outcome = metrics.SendOutcome.DEFERRED
    else:
        return
    metrics.send_step(outcome, target=metrics.target_label(exc, target))


class _ChosenMessageId:
    """The Message-ID an attempt sends with (kept across attempts once stored).

    The activity chooses it; it is written with the attempt's "sending" mark, in
    the same transaction, or with the attempt's failure: never a write of its own.
    """

    def __init__(self, stored: str | None) -> None:
        self.value = stored

    def remember(self, message_id: str) -> None:
        self.value = message_id
