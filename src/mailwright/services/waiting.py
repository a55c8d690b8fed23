"""Start a run and get its outcome: send and wait, wait for a run, run a run inline.

The one place the faces (API, web, CLI) go to for "send this and tell me how it
went" and "execute this here and give me the finished run"; they only present
what these return. Three ways to wait, each for its own caller:

- `wait`: an answer that must come back quickly (HTTP). Woken by this process's
  worker the moment the run ends; meanwhile only the run's status is read, now
  and then, for runs finished by a worker elsewhere.
- `run_inline`: a command that executes the run itself (`workflows run --wait`),
  claiming it like any worker, and waiting here for retries that are due later.
- `follow`: a command that shows a run's progress while another process executes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from mailwright.domain.runs import FINISHED_RUN_STATUSES, RunStatus
from mailwright.services.idempotency import IdempotencyClaim, IdempotencyService, Started
from mailwright.services.runs import RunPublic, RunService, SendOutcome
from mailwright.services.sending import SendEmailRequest, SendResult, SendService

if TYPE_CHECKING:
    from mailwright.engine.executor import Executor

# A worker of another process finishes runs without telling this one: look at the row this often.
RECHECK_SECONDS = 0.25
# How often a run executed by another worker is looked at again (inline, or followed).
ELSEWHERE_SECONDS = 0.5
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class SendAnswer:
    """How a Send Email run went, as far as the wait saw it.

    Exactly one of: `result` (succeeded), `error` (failed or cancelled), or neither
    (still queued or running when the wait ended).
    """

    run_id: str
    status: str
    replayed: bool
    result: SendResult | None = None
    error: dict[str, Any] | None = None


def answer_for(outcome: SendOutcome, *, replayed: bool) -> SendAnswer:
    """The answer to a Send Email request whose run is, for now, as `outcome` says."""
    if outcome.status == RunStatus.SUCCEEDED and outcome.output is not None:
        result = SendResult.model_validate({**outcome.output, "run_id": outcome.id})
        return SendAnswer(outcome.id, outcome.status, replayed, result=result)
    if outcome.status in (RunStatus.FAILED, RunStatus.CANCELLED):
        error = outcome.step_error or outcome.error
        error = error or {"code": "failed", "message": f"the run {outcome.status}"}
        return SendAnswer(outcome.id, outcome.status, replayed, error=error)
    return SendAnswer(outcome.id, outcome.status, replayed)


class WaitService:
    def __init__(
        self,
        *,
        runs: RunService,
        idempotency: IdempotencyService,
        sending: SendService,
        make_executor: Callable[[str], Executor],
    ) -> None:
        self._runs = runs
        self._idempotency = idempotency
        self._sending = sending
        # worker id -> an executor wired to the services (Services.executor): this module
        # starts runs and waits for them; how they execute is the engine's.
        self._make_executor = make_executor

    # --- Send Email ------------------------------------------------------------------

    def start_send_email(self, request: SendEmailRequest, *, key: str | None, scope: str) -> Started:
        """Store a one-step Send Email run (once per `key` in `scope`) and tell the workers.

        The request model is already valid (the face built it); what only the target
        can tell (its key, the sender, every field of the message) is checked here,
        before anything is stored: bad input is refused (422/404) and nothing is sent.
        A retried key skips the checks and gets the first request's run.
        """
        claim = None
        if key is not None:
            claim = IdempotencyClaim.of(scope, key, request.model_dump(mode="json", by_alias=True))
        return self._idempotency.start_send_email(request, claim, check=lambda: self._sending.check(request))

    async def send_and_wait(
        self, request: SendEmailRequest, *, key: str | None, scope: str, timeout: float
    ) -> SendAnswer:
        """`start_send_email`, then its outcome once the run ends or `timeout` seconds pass."""
        started = await asyncio.to_thread(self.start_send_email, request, key=key, scope=scope)
        return await self.send_outcome(started, timeout=timeout)

    async def send_outcome(self, started: Started, *, timeout: float | None) -> SendAnswer:
        """The outcome of a started Send Email run; `timeout=None`: as it is now, without waiting."""
        if timeout is None:
            outcome = await asyncio.to_thread(self._runs.send_outcome, started.run_id)
        else:
            # The answer reads the run's status, output and errors in one statement.
            outcome = await self.wait(
                started.run_id, timeout=timeout, read=self._runs.send_outcome, fresh=not started.replayed
            )
        return answer_for(outcome, replayed=started.replayed)

    # --- waiting for any run -----------------------------------------------------------

    async def wait(self, run_id: str, *, timeout: float, read: Callable[[str], R], fresh: bool = True) -> R:
        """`read(run_id)` once the run is finished, or when the timeout passes.

        This process's worker wakes the waiter as soon as the run ends; meanwhile only
        the run's status is looked at, every RECHECK_SECONDS, for runs finished
        elsewhere. `fresh`: the run was queued a moment ago, so wait before the first
        look (an older one, such as a replayed request's, is looked at once).
        """
        deadline = time.monotonic() + timeout
        while True:
            woken = self._runs.waiters.register(run_id)  # before looking: a finish in between still wakes us
            try:
                remaining = deadline - time.monotonic()
                if not fresh:
                    status = await asyncio.to_thread(self._runs.status, run_id)
                    if status in FINISHED_RUN_STATUSES or remaining <= 0:
                        return await asyncio.to_thread(read, run_id)
                fresh = False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(woken), timeout=min(remaining, RECHECK_SECONDS))
                if woken.done():  # told by this process's worker: finished
                    return await asyncio.to_thread(read, run_id)
            finally:
                self._runs.waiters.discard(run_id, woken)

    async def follow(self, run_id: str, *, seen: Callable[[RunPublic], None] | None = None) -> RunPublic:
        """The run once finished, read every ELSEWHERE_SECONDS (`seen` gets each reading)."""
        while True:
            run = await asyncio.to_thread(self._runs.get, run_id)
            if seen is not None:
                seen(run)
            if run.status in FINISHED_RUN_STATUSES:
                return run
            await asyncio.sleep(ELSEWHERE_SECONDS)

    # --- executing a run in this process -------------------------------------------------

    def inline_executor(self) -> Executor:
        """An executor for this process, claiming runs like any worker (with its own worker id)."""
        # Not a Worker: that imports the task broker, a quarter of a second for a command.
        from mailwright.engine.executor import worker_id

        return self._make_executor(worker_id())

    async def run_inline(self, run_id: str, *, longest_wait: float | None = None) -> RunPublic:
        """Execute a run in this process and return it finished.

        A retry due later is waited for here, as a worker would; a run another worker
        holds is tried again now and then until it is finished (or free to take).
        `longest_wait`: a retry (or rate-limit deferral) due later than that many seconds
        is left to the workers, and the run is returned unfinished. A run of a worker pool
        is executed by that pool's workers (its target may be reachable from there alone):
        it is followed until finished.
        """
        if self._runs.get(run_id).pool is not None:
            return await self.follow(run_id)
        executor = self.inline_executor()
        while True:
            status = await executor.execute(run_id)
            run = self._runs.get(run_id)
            if run.status in FINISHED_RUN_STATUSES:
                return run
            if status is None:
                await asyncio.sleep(ELSEWHERE_SECONDS)  # another worker holds it: wait for it to finish
            elif run.not_before is not None:
                wait = (run.not_before - datetime.now(UTC)).total_seconds()
                if longest_wait is not None and wait > longest_wait:
                    return run
                await asyncio.sleep(max(0.05, wait))
