"""The worker: executes runs it hears of, and finds in the database those nobody announced.

Runs reach a worker through the run queue (engine/broker.py): Taskiq's in-process
broker by default, RabbitMQ for workers on many machines. Whatever the broker, a
queue message only says "look at run X": the executor claims the run row with a
lease, so a duplicated message is a no-op, and a lost one is found again here.

- Embedded broker: each poll dispatches every due run of this worker's pool to
  itself (new, retry due, or abandoned by a dead worker).
- RabbitMQ: runs are announced when queued (by whichever process queued them).
  Each poll the sweeper takes the due runs no announcement covered lately
  (SWEEP_AFTER: a lost message, a worker killed after receiving one, a retry that
  came due, a lease that expired) and announces them again, marking each so that
  of many sweepers one announces it. A run's worst wait for a worker after its
  owner was killed is its lease (MAILWRIGHT_LEASE_SECONDS) plus one poll.

A worker serves one pool (`--pool NAME`, MAILWRIGHT_WORKER_POOL): it claims only
the runs whose target names that pool, or, without a pool, the runs of targets
that name none. It registers itself and beats every HEARTBEAT_SECONDS
(services/workers.py) so that `mailwright workers list` shows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any, Protocol

from mailwright.config import Settings
from mailwright.domain.runs import FINISHED_RUN_STATUSES
from mailwright.engine.broker import broker_kind, make_queue
from mailwright.engine.executor import Executor, worker_id

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0
DRAIN_SECONDS = 60.0  # how long a stopping worker waits for the steps in flight
CLEANUP_INTERVAL = 60.0  # seconds between looks for batches abandoned while being stored
FILES_PRUNE_INTERVAL = 3600.0  # seconds between applications of MAILWRIGHT_FILES_KEEP_DAYS
KEYS_PRUNE_INTERVAL = 3600.0  # seconds between deletions of expired idempotency keys
SWEEP_AFTER = timedelta(seconds=10)  # a due run no hint announced for this long is announced again
HEARTBEAT_SECONDS = 5.0
RANGES_POLL = 2.0  # seconds between looks for batches whose free ranges this worker could send


# What the worker needs of the services (services/app.py's `Services` offers it).


class _Runs(Protocol):
    on_queued: Callable[[str], None] | None

    def finished(self, run_id: str) -> None: ...

    def with_free_ranges(self, *, limit: int = 100) -> list[tuple[str, str | None]]: ...


class _Ledger(Protocol):
    def due(self, *, limit: int = 100, pool: str | None = None) -> list[str]: ...

    def unhinted(self, *, older_than: timedelta, limit: int = 500) -> list[tuple[str, str | None]]: ...

    def pool_of(self, run_id: str) -> str | None: ...


class _Workers(Protocol):
    def register(
        self, worker_id: str, *, pid: int, pool: str | None, concurrency: int, broker: str
    ) -> None: ...

    def heartbeat(self, worker_id: str, *, runs_in_hand: int) -> bool: ...

    def leave(self, worker_id: str) -> None: ...


class _Schedules(Protocol):
    def tick(self) -> list[str]: ...


class _Batches(Protocol):
    def discard_abandoned(self) -> int: ...


class _Keys(Protocol):
    def prune(self) -> int: ...


class PruneReport(Protocol):
    """What pruning stored files did."""

    @property
    def removed(self) -> int: ...
    @property
    def removed_bytes(self) -> int: ...
    @property
    def kept_recent(self) -> int: ...
    @property
    def kept_referenced(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def errors(self) -> list[str]: ...


class _Files(Protocol):
    def prune(self, older_than: timedelta, *, dry_run: bool) -> PruneReport: ...


class MailTriggers(Protocol):
    """Watches the mailboxes of email triggers until `stop` is set."""

    def run(self, stop: asyncio.Event) -> Coroutine[Any, Any, None]: ...


class WorkerServices(Protocol):
    @property
    def settings(self) -> Settings: ...
    @property
    def runs(self) -> _Runs: ...
    @property
    def ledger(self) -> _Ledger: ...
    @property
    def workers(self) -> _Workers: ...
    @property
    def schedules(self) -> _Schedules: ...
    @property
    def batches(self) -> _Batches: ...
    @property
    def idempotency(self) -> _Keys: ...
    @property
    def file_service(self) -> _Files: ...

    def executor(
        self,
        *,
        worker_id: str,
        lease: timedelta | None = None,
        with_files: bool = True,
        pool: str | None = None,
    ) -> Executor: ...

    def mail_triggers(self) -> MailTriggers: ...


class _Unknown:
    """The pool of a run that was not read yet."""


UNKNOWN = _Unknown()


class Worker:
    def __init__(self, services: WorkerServices, *, poll_interval: float = POLL_INTERVAL) -> None:
        self.services = services
        settings = services.settings
        self.id = worker_id()
        self.pool = settings.worker_pool
        self.executor = services.executor(worker_id=self.id, pool=self.pool)
        self.executor.on_ranges_open = self._ranges_open
        self.poll_interval = poll_interval
        self.queue = make_queue(
            settings.broker,
            execute=self._execute,
            pool=self.pool,
            concurrency=settings.worker_concurrency,
            consume=True,
        )
        self._slots = asyncio.Semaphore(settings.worker_concurrency)
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inflight: set[str] = set()  # dispatched here and not ended: not dispatched twice
        # Executing now, however they came (this process, or a hint from RabbitMQ): run id -> how
        # many executions (a coordinator's and its helpers' of one batch).
        self._in_hand: dict[str, int] = {}
        self._stop: asyncio.Event | None = None
        self._dispatching: set[asyncio.Task[None]] = set()
        self._next_cleanup = 0.0  # when to look for batches whose storing process died
        self._next_files_prune = 0.0  # when to apply the file retention (if configured) again
        self._next_keys_prune = 0.0  # when to delete expired idempotency keys again
        self._next_heartbeat = 0.0
        self._next_ranges_sweep = 0.0  # when to look again for batches other workers could help

    async def _execute(self, run_id: str) -> str | None:
        self._in_hand[run_id] = self._in_hand.get(run_id, 0) + 1
        try:
            # Claim only when a slot is free, so other workers can take the rest, and so
            # that a crash leaves at most `concurrency` sends with an unknown outcome.
            async with self._slots:
                status = await self.executor.execute(run_id)
            if status in FINISHED_RUN_STATUSES:
                self.services.runs.finished(run_id)
            return status
        except Exception:
            # The run stays claimed until its lease expires, then another attempt takes it.
            log.exception("run %s: the executor stopped unexpectedly", run_id)
            return None
        finally:
            self._inflight.discard(run_id)
            left = self._in_hand.pop(run_id) - 1
            if left:
                self._in_hand[run_id] = left

    def notify(self, run_id: str) -> None:
        """Thread-safe: a run was queued in this process; dispatch it now, without a scan."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._dispatch_soon, run_id)

    def _dispatch_soon(self, run_id: str) -> None:
        if self._stop is not None and self._stop.is_set():
            return  # a stopping worker takes nothing new; the run stays queued in the database
        self._dispatching_add(asyncio.create_task(self.dispatch(run_id)))

    async def dispatch(self, run_id: str, pool: str | _Unknown | None = UNKNOWN) -> None:
        """Announce the run: to this process (embedded broker) or to its pool's queue (RabbitMQ)."""
        if self.queue.distributed:
            if isinstance(pool, _Unknown):
                pool = await asyncio.to_thread(self.services.ledger.pool_of, run_id)
            if not await self.queue.hint(run_id, pool) and pool == self.pool:
                await self._execute_here(run_id)  # RabbitMQ is away: this worker may take it itself
            return
        await self._execute_here(run_id)

    def _ranges_open(self, run_id: str, open_ranges: int) -> None:
        """A batch this worker coordinates has free ranges: announce it to that many other workers.

        Called on the event loop by the coordinator; the announcements go out as tasks. With the
        embedded broker there is no other worker to tell (other processes find it by polling).
        """
        if not self.queue.distributed:
            return
        for _ in range(max(0, open_ranges - 1)):  # the coordinator takes one itself
            self._dispatching_add(asyncio.create_task(self.queue.hint(run_id, self.pool)))

    async def _execute_here(self, run_id: str) -> None:
        if run_id in self._inflight:
            return
        self._inflight.add(run_id)
        task = asyncio.create_task(self._execute(run_id))
        self._dispatching_add(task)

    def _dispatching_add(self, task: asyncio.Task[Any]) -> None:
        self._dispatching.add(task)
        task.add_done_callback(self._dispatching.discard)

    async def scan(self) -> int:
        """Fire due schedules, then dispatch every due run (new, retry due, or abandoned by a dead worker)."""
        await asyncio.to_thread(self.services.schedules.tick)
        if time.monotonic() >= self._next_cleanup:
            self._next_cleanup = time.monotonic() + CLEANUP_INTERVAL
            await asyncio.to_thread(self.services.batches.discard_abandoned)
        if time.monotonic() >= self._next_keys_prune:
            self._next_keys_prune = time.monotonic() + KEYS_PRUNE_INTERVAL
            await asyncio.to_thread(self._prune_keys)
        if self.services.settings.files_keep_days is not None and time.monotonic() >= self._next_files_prune:
            self._next_files_prune = time.monotonic() + FILES_PRUNE_INTERVAL
            await self.prune_files()
        await self._heartbeat()
        helped = await self._batches_to_help()
        if self.queue.distributed:
            return await self._sweep() + helped
        due = await asyncio.to_thread(self.services.ledger.due, pool=self.pool)
        for run_id in due:
            await self._execute_here(run_id)
        return len(due) + helped

    async def _batches_to_help(self) -> int:
        """Every RANGES_POLL, the batches of this worker's pool that have free ranges: this worker
        helps send them. Hints (on_ranges_open) bring helpers sooner, but a worker busy with its
        own batch may take the hints meant for others (RabbitMQ hands them to whoever asks), and
        a worker started later never saw them: looking here spreads every batch regardless."""
        if time.monotonic() < self._next_ranges_sweep:
            return 0
        self._next_ranges_sweep = time.monotonic() + RANGES_POLL
        found = await asyncio.to_thread(self.services.runs.with_free_ranges)
        mine = [run_id for run_id, pool in found if pool == self.pool]
        for run_id in mine:
            await self._execute_here(run_id)  # a run this worker coordinates or helps already: no-op
        return len(mine)

    async def _sweep(self) -> int:
        """Announce again the due runs no hint covered lately (lost, never sent, or due since)."""
        stale = await asyncio.to_thread(self.services.ledger.unhinted, older_than=SWEEP_AFTER)
        for run_id, pool in stale:
            await self.dispatch(run_id, pool)
        if stale:
            log.info("sweeper: announced %d run(s) again that no queue message covered", len(stale))
        return len(stale)

    async def _heartbeat(self) -> None:
        if time.monotonic() < self._next_heartbeat:
            return
        self._next_heartbeat = time.monotonic() + HEARTBEAT_SECONDS
        workers = self.services.workers
        if not await asyncio.to_thread(workers.heartbeat, self.id, runs_in_hand=len(self._in_hand)):
            await asyncio.to_thread(self._register)

    def _register(self) -> None:
        settings = self.services.settings
        self.services.workers.register(
            self.id,
            pid=os.getpid(),
            pool=self.pool,
            concurrency=settings.worker_concurrency,
            broker=broker_kind(settings.broker),
        )

    def _prune_keys(self) -> None:
        try:
            self.services.idempotency.prune()
        except Exception as exc:  # a busy database: the next hour tries again
            log.warning("could not delete expired idempotency keys: %s", exc)

    async def prune_files(self) -> PruneReport | None:
        """Apply MAILWRIGHT_FILES_KEEP_DAYS: remove older stored files no active run refers to."""
        days = self.services.settings.files_keep_days
        if days is None:
            return None
        try:
            result = await asyncio.to_thread(
                self.services.file_service.prune, timedelta(days=days), dry_run=False
            )
        except Exception:
            # Retention must never stop the worker: the next hour tries again.
            log.exception("file retention: pruning files older than %d days failed", days)
            return None
        if result.removed or result.failed:
            log.info(
                "file retention: removed %d file(s) older than %d days (%d bytes freed); "
                "kept %d still referenced by active runs; %d could not be removed",
                result.removed,
                days,
                result.removed_bytes,
                result.kept_referenced,
                result.failed,
            )
        for error in result.errors:
            log.warning("file retention: could not remove %s", error)
        return result

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = stop
        self.services.runs.on_queued = self.notify
        await self.queue.start()
        await asyncio.to_thread(self._register)
        log.info("worker %s started%s", self.id, f" in pool {self.pool!r}" if self.pool else "")
        triggers = self.services.mail_triggers() if self.services.settings.triggers else None
        watching = asyncio.create_task(triggers.run(stop)) if triggers is not None else None
        try:
            while not stop.is_set():
                await self._scan_through_errors()
                self._wake.clear()
                waiters: list[asyncio.Task[Any]] = [
                    asyncio.create_task(self._wake.wait()),
                    asyncio.create_task(stop.wait()),
                ]
                await asyncio.wait(waiters, timeout=self.poll_interval, return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters:
                    waiter.cancel()
        finally:
            if watching is not None:
                watching.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watching
            self.services.runs.on_queued = None
            self.executor.stopping.set()  # runs in hand are given back between steps
            await self.queue.stop(wait=DRAIN_SECONDS)  # no new hints; Taskiq waits for those in hand
            await self._drain()
            with contextlib.suppress(Exception):  # a database away: the row goes stale by itself
                await asyncio.to_thread(self.services.workers.leave, self.id)
            log.info("worker %s stopped", self.id)

    async def _scan_through_errors(self) -> None:
        """`scan`; a failure (a database restart, a failover) is logged and the next poll tries again.

        A worker that died of one failed query would leave every run queued, while the API
        of `serve` went on accepting them.
        """
        try:
            await self.scan()
        except Exception as exc:
            log.warning(
                "worker %s: looking for due runs failed (%s: %s); trying again",
                self.id,
                type(exc).__name__,
                str(exc).splitlines()[0][:200] if str(exc) else "",
            )

    async def _drain(self) -> None:
        """A graceful stop: let the steps in flight finish, then release their runs."""
        self.executor.stopping.set()
        deadline = asyncio.get_running_loop().time() + DRAIN_SECONDS
        while (self._inflight or self._in_hand) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        if self._inflight or self._in_hand:
            busy = len(self._inflight | set(self._in_hand))
            log.warning("stopping with %d run(s) still busy; their leases will expire", busy)
