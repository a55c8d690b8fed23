"""The worker: finds due runs in the database and hands them to the task queue.

The queue is Taskiq. The embedded default is its in-process broker, used inside
`mailwright serve` and `mailwright worker`; the broker is chosen by
configuration (`MAILWRIGHT_BROKER`), so a distributed one can be switched on
without touching activities. Whatever the broker, a queue message only says
"look at run X": the executor claims the run row with a lease, so a lost
message is found again by the recovery scan and a duplicated one is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any, Protocol

from taskiq import AsyncBroker, InMemoryBroker

from mailwright.config import Settings
from mailwright.domain.runs import FINISHED_RUN_STATUSES
from mailwright.engine.executor import Executor, worker_id
from mailwright.errors import ConfigError

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0
DRAIN_SECONDS = 60.0  # how long a stopping worker waits for the steps in flight
CLEANUP_INTERVAL = 60.0  # seconds between looks for batches abandoned while being stored
FILES_PRUNE_INTERVAL = 3600.0  # seconds between applications of MAILWRIGHT_FILES_KEEP_DAYS
KEYS_PRUNE_INTERVAL = 3600.0  # seconds between deletions of expired idempotency keys


# What the worker needs of the services (services/app.py's `Services` offers it).


class _Waiters(Protocol):
    def finished(self, run_id: str) -> None: ...


class _Runs(Protocol):
    on_queued: Callable[[str], None] | None

    @property
    def waiters(self) -> _Waiters: ...

    def due(self, *, limit: int = 100) -> list[str]: ...


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
    def schedules(self) -> _Schedules: ...
    @property
    def batches(self) -> _Batches: ...
    @property
    def idempotency(self) -> _Keys: ...
    @property
    def file_service(self) -> _Files: ...

    def executor(
        self, *, worker_id: str, lease: timedelta | None = None, with_files: bool = True
    ) -> Executor: ...

    def mail_triggers(self) -> MailTriggers: ...


def make_broker(kind: str) -> AsyncBroker:
    if kind == "embedded":
        # Many runs may wait on slow servers at once; each is a light coroutine.
        return InMemoryBroker(max_async_tasks=64, propagate_exceptions=False)
    raise ConfigError(
        f"unknown broker {kind!r}",
        hint="MAILWRIGHT_BROKER=embedded is the broker this version ships",
    )


class Worker:
    def __init__(self, services: WorkerServices, *, poll_interval: float = POLL_INTERVAL) -> None:
        self.services = services
        self.id = worker_id()
        self.executor = services.executor(worker_id=self.id)
        self.poll_interval = poll_interval
        self._broker = make_broker(services.settings.broker)

        async def execute_run(run_id: str) -> str | None:
            return await self._execute(run_id)

        self._task = self._broker.register_task(execute_run, task_name="mailwright.execute_run")
        self._slots = asyncio.Semaphore(services.settings.worker_concurrency)
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inflight: set[str] = set()
        self._stop: asyncio.Event | None = None
        self._dispatching: set[asyncio.Task[None]] = set()
        self._next_cleanup = 0.0  # when to look for batches whose storing process died
        self._next_files_prune = 0.0  # when to apply the file retention (if configured) again
        self._next_keys_prune = 0.0  # when to delete expired idempotency keys again

    async def _execute(self, run_id: str) -> str | None:
        try:
            # Claim only when a slot is free, so other workers can take the rest, and so
            # that a crash leaves at most `concurrency` sends with an unknown outcome.
            async with self._slots:
                status = await self.executor.execute(run_id)
            if status in FINISHED_RUN_STATUSES:
                self.services.runs.waiters.finished(run_id)
            return status
        except Exception:
            # The run stays claimed until its lease expires, then another attempt takes it.
            log.exception("run %s: the executor stopped unexpectedly", run_id)
            return None
        finally:
            self._inflight.discard(run_id)

    def notify(self, run_id: str) -> None:
        """Thread-safe: a run was queued in this process; dispatch it now, without a scan."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._dispatch_soon, run_id)

    def _dispatch_soon(self, run_id: str) -> None:
        if self._stop is not None and self._stop.is_set():
            return  # a stopping worker takes nothing new; the run stays queued in the database
        task = asyncio.create_task(self.dispatch(run_id))
        self._dispatching.add(task)
        task.add_done_callback(self._dispatching.discard)

    async def dispatch(self, run_id: str) -> None:
        if run_id in self._inflight:
            return
        self._inflight.add(run_id)
        await self._task.kiq(run_id)

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
        due = await asyncio.to_thread(self.services.runs.due)
        for run_id in due:
            await self.dispatch(run_id)
        return len(due)

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
        await self._broker.startup()
        log.info("worker %s started", self.id)
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
            await self._drain()
            await self._broker.shutdown()
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
        while self._inflight and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        if self._inflight:
            log.warning("stopping with %d run(s) still busy; their leases will expire", len(self._inflight))
