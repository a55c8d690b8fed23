"""Connection pools: up to N SMTP connections per target, reused across runs and steps.

A pool keeps one FIFO queue of messages and at most `max_connections` workers,
each owning one connection. A worker takes the oldest message; while its
connection has a message in flight it takes the next queued one too, so the body
of one message and the MAIL/RCPT/DATA of the next share a write (see
`pipeline.Session`). Many senders over a few connections thus cost about one
round trip per message.

Connections are opened on demand (one at a time until one succeeds, so a wrong
password is tried once, not N times), closed after `max_messages_per_connection`
messages or `idle_timeout` seconds without work, and checked with NOOP before
reuse after a few idle seconds. A message whose body was never written when its
connection failed (dropped, or 421) is sent again, once, on a fresh connection;
one whose body was written is never resent here: its outcome is reported as
unknown and the durable caller decides.

With workers on several machines, `max_connections` is also a cap over all of
them: the registry is given `ConnectionSlots` (Redis, from the services), and each
connection holds one of the target's slots from before it connects until it is
closed. At the cap a pool waits for a slot; its messages wait, nothing fails.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol

from mailwright.domain.smtp import Capabilities
from mailwright.errors import TargetConnectError, TargetError
from mailwright.transport.pipeline import Job, Session
from mailwright.transport.smtp import Delivery, Login, SMTPConnection, SMTPEndpoint

# With a cap shared over workers: how often an idle connection looks whether others wait for a slot.
YIELD_CHECK = 0.5
# Reuse after this much idle time only once NOOP has shown the connection is alive.
CHECK_AFTER = 5.0
CHECK_TIMEOUT = 5.0
CLOSE_TIMEOUT = 5.0


class ConnectionSlot(Protocol):
    def release(self) -> None:
        """Give the slot back (without blocking; idempotent)."""
        ...


class ConnectionSlots(Protocol):
    """A cap on a target's connections shared with other processes (injected: no services here)."""

    async def acquire(self, *, key: str, limit: int) -> ConnectionSlot:
        """One of `limit` slots of target `key`; waits while all are held, never fails for that."""
        ...

    async def wanted(self, *, key: str) -> bool:
        """Whether a process waits for a slot of target `key` now: idle connections give theirs up."""
        ...


@dataclass(frozen=True, slots=True)
class PoolLimits:
    max_connections: int = 8
    max_messages_per_connection: int = 100
    idle_timeout: float = 30.0
    check_after: float = CHECK_AFTER


class SMTPPool:
    """The connections to one target (one endpoint and login); safe for many concurrent senders."""

    def __init__(
        self,
        *,
        endpoint: SMTPEndpoint,
        login: Login | None,
        limits: PoolLimits,
        identity: Hashable = None,
        slots: ConnectionSlots | None = None,
        slots_key: str = "",
    ) -> None:
        self.endpoint = endpoint
        self.login = login
        self.limits = limits
        self.identity = identity  # what the connections were opened with (settings, login)
        self.opened = 0  # connections opened so far (for tests and reports)
        self.closed = False
        self._queue: deque[Job] = deque()
        self._idle: deque[asyncio.Future[Job | None]] = deque()
        self._eager: deque[Session] = deque()  # busy, but may take a message at once
        self._workers: set[asyncio.Task[None]] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self._running = 0  # workers, counted from their creation to the end of their connection
        self._opening = 0
        self._live = 0
        self._healthy = False  # an open succeeded since the last one failed
        self._capabilities: Capabilities | None = None
        self._probe: asyncio.Future[Capabilities] | None = None
        self._slots = slots  # the cap over all workers (None: this pool's own count only)
        self._slots_key = slots_key or endpoint.address
        self._held: dict[int, ConnectionSlot] = {}  # id(session) -> the slot its connection holds
        self._slot_waiters: set[asyncio.Task[Any]] = set()  # workers waiting for a slot

    # --- the senders' side -----------------------------------------------------------

    async def capabilities(self) -> Capabilities:
        """What the server offers (SMTPUTF8 shapes the message); opens a connection if none was."""
        if self._capabilities is not None:
            return self._capabilities
        if self.closed:
            raise self._closed_error()
        if self._probe is None:
            self._probe = asyncio.get_running_loop().create_future()
            if self._opening == 0 and self._running < self.limits.max_connections:
                self._spawn()
        return await asyncio.shield(self._probe)

    async def deliver(
        self,
        *,
        sender: str,
        recipients: list[tuple[str, bool]],
        data: bytes,
        smtputf8: bool,
        continue_if_one_address_valid: bool,
        before_data: Callable[[], Awaitable[None]] | None = None,
    ) -> Delivery:
        """Send one message on a pooled connection.

        `recipients` pairs each envelope address with whether it needs SMTPUTF8;
        `before_data` starts when this message's DATA command is written; its body waits for it.
        """
        if self.closed:
            raise self._closed_error()
        job = Job(
            sender=sender,
            recipients=recipients,
            data=data,
            smtputf8=smtputf8,
            continue_if_one_address_valid=continue_if_one_address_valid,
            before_data=before_data,
            future=asyncio.get_running_loop().create_future(),
        )
        self._submit(job)
        return await job.future

    def _submit(self, job: Job) -> None:
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(job)
                return
        while self._eager:
            if self._eager.popleft().offer(job):
                return
        self._queue.append(job)
        self._grow()

    def _grow(self) -> None:
        """Open more connections while messages wait and the pool may have more."""
        while not self.closed and self._running < self.limits.max_connections:
            if not self._healthy and self._opening:
                return  # until one connection opens, one attempt at a time (a wrong password once)
            if len(self._queue) <= self._opening:
                return
            self._spawn()

    def _spawn(self) -> None:
        self._running += 1
        self._opening += 1  # counted from now, so that _grow does not open two for one message
        task = asyncio.get_running_loop().create_task(self._work())
        self._workers.add(task)
        task.add_done_callback(self._workers.discard)

    # --- the workers' side -------------------------------------------------------------

    def _take_nowait(self) -> Job | None:
        while self._queue:
            job = self._queue.popleft()
            if not job.abandoned:
                return job
        return None

    async def _take(self) -> Job | None:
        """The next message, or None after `idle_timeout` without one (or when closing)."""
        job = self._take_nowait()
        if job is not None or self.closed:
            return job
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Job | None] = loop.create_future()
        self._idle.append(waiter)
        timer = loop.call_later(self.limits.idle_timeout, _resolve, waiter, None)
        try:
            if self._slots is not None:
                return await self._idle_unless_wanted(waiter)
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and (handed := waiter.result()) is not None:
                self._queue.appendleft(handed)
            raise
        finally:
            timer.cancel()
            if waiter in self._idle:  # a handed-over waiter was already taken off
                self._idle.remove(waiter)

    async def _idle_unless_wanted(self, waiter: asyncio.Future[Job | None]) -> Job | None:
        """Idle, but not on a slot another worker waits for: the cap is over all workers, and a
        pool that keeps its idle connections would hold the others back until `idle_timeout`."""
        assert self._slots is not None
        while True:
            done, _ = await asyncio.wait({waiter}, timeout=YIELD_CHECK)
            if done:
                return waiter.result()
            if await self._slots.wanted(key=self._slots_key):
                _resolve(waiter, None)  # this connection closes and gives its slot back
                return waiter.result()

    async def _work(self) -> None:
        session: Session | None = None
        carry: deque[Job] = deque()  # messages to send again on a fresh connection
        try:
            session = await self._open([], counted=True)
            while session is not None:
                job = carry.popleft() if carry else await self._take()
                if job is None:
                    break
                if self._queue:
                    self._grow()  # more waiting than this connection took: maybe open another
                if job.abandoned:
                    continue
                session = await self._ready(session, [job, *carry])
                if session is None:
                    break
                if session.transactions == 0:
                    job.timings.update(session.open_timings)
                again = await session.run(
                    job,
                    self._take_nowait,
                    max_transactions=self.limits.max_messages_per_connection,
                    offers=self._eager,
                )
                if again:
                    self._discard(session)
                    session = None
                    retries = [job for job in again if _may_retry(job)]
                    if retries:
                        carry.extend(retries)
                        session = await self._open(list(carry), counted=False)
        except BaseException as exc:
            # Cancelled (the event loop ends) or a bug: nobody may be left waiting for ever.
            error = self._closed_error() if isinstance(exc, asyncio.CancelledError) else exc
            for waiting in [*carry, *(session.held if session is not None else [])]:
                waiting.fail(error)
            self._running -= 1
            if session is not None:
                self._live -= 1
                session.close_now()
                self._let_go(session)
            raise
        self._running -= 1
        if session is not None:
            self._live -= 1
            try:
                await session.quit(CLOSE_TIMEOUT)
            finally:
                self._let_go(session)
        self._grow()

    async def _ready(self, session: Session, jobs: list[Job]) -> Session | None:
        """A connection fit for `jobs`: alive, under its message limit, checked after idling."""
        limit = self.limits.max_messages_per_connection
        if not session.usable or session.transactions >= limit:
            self._discard(session)
            return await self._open(jobs, counted=False)
        if time.monotonic() - session.last_used > self.limits.check_after and not await session.check(
            min(CHECK_TIMEOUT, self.endpoint.command_timeout)
        ):
            self._discard(session)
            return await self._open(jobs, counted=False)
        return session

    async def _open(self, jobs: list[Job], *, counted: bool) -> Session | None:
        """A new connection; if it cannot open, the messages that needed it fail with the reason."""
        if not counted:
            self._opening += 1
        slot: ConnectionSlot | None = None
        connection = SMTPConnection(self.endpoint)
        try:
            if self._slots is not None:
                # Before connecting, so that the server never sees more than the cap over all workers.
                slot = await self._slot()
            await connection.open(self.login)
            session = Session(connection)
        except Exception as exc:
            await connection.close()
            if slot is not None:
                slot.release()
            self._opening -= 1
            self._healthy = False
            self._open_failed(exc, jobs)
            return None
        except asyncio.CancelledError:
            self._opening -= 1
            connection.abort()
            if slot is not None:
                slot.release()
            raise
        if slot is not None:
            self._held[id(session)] = slot
        self._opening -= 1
        self._live += 1
        self.opened += 1
        self._healthy = True
        self._capabilities = session.capabilities
        if self._probe is not None and not self._probe.done():
            self._probe.set_result(session.capabilities)
        return session

    async def _slot(self) -> ConnectionSlot:
        """A slot of the cap over all workers; closing the pool stops the wait at once."""
        assert self._slots is not None
        task = asyncio.current_task()
        if task is not None:
            self._slot_waiters.add(task)
        try:
            return await self._slots.acquire(key=self._slots_key, limit=self.limits.max_connections)
        finally:
            if task is not None:
                self._slot_waiters.discard(task)

    def _open_failed(self, exc: Exception, jobs: list[Job]) -> None:
        for job in jobs:
            job.fail(exc)
        if self._probe is not None and not self._probe.done():
            self._probe.set_exception(exc)
            self._probe.exception()  # retrieved: nobody may be waiting for it
        self._probe = None
        if self._live == 0 and self._opening == 0:
            # No connection serves this target now: the waiting messages would meet the same fate.
            while (waiting := self._take_nowait()) is not None:
                waiting.fail(exc)

    def _discard(self, session: Session) -> None:
        """Close a connection in the background (QUIT when it is still usable)."""
        self._live -= 1
        if not session.usable:
            session.abort()
            self._let_go(session)
            return
        task = asyncio.get_running_loop().create_task(session.quit(CLOSE_TIMEOUT))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        task.add_done_callback(lambda _task: self._let_go(session))

    def _let_go(self, session: Session) -> None:
        """The connection is closed: its slot of the cap over all workers goes back."""
        slot = self._held.pop(id(session), None)
        if slot is not None:
            slot.release()

    def _closed_error(self) -> TargetError:
        return TargetConnectError(
            f"the connection pool for {self.endpoint.address} closed before the message was sent",
            target=self.endpoint.target_name,
            hint="Mailwright is shutting down or the target changed; send again",
        )

    # --- closing -----------------------------------------------------------------------

    async def aclose(self, timeout: float = 10.0) -> None:
        """Stop taking messages, let the connections finish what they carry, QUIT them."""
        self.closed = True
        while (job := self._take_nowait()) is not None:
            job.fail(self._closed_error())
        while self._idle:
            _resolve(self._idle.popleft(), None)
        if self._probe is not None and not self._probe.done():
            self._probe.set_exception(self._closed_error())
            self._probe.exception()
        for waiting in list(self._slot_waiters):
            waiting.cancel()  # no connection yet: nothing to finish
        tasks = [*self._workers, *self._closing]
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)

    def load(self) -> tuple[int, int, int]:
        """(live connections, messages waiting for one, connections being opened or probed)."""
        probing = self._probe is not None and not self._probe.done()
        return self._live, len(self._queue), self._opening + probing

    def stats(self) -> dict[str, int]:
        return {
            "connections": self._running,
            "live": self._live,
            "opening": self._opening,
            "queued": len(self._queue),
            "idle": len(self._idle),
            "opened": self.opened,
        }


def _may_retry(job: Job) -> bool:
    """Once: a message whose connection failed twice before its body was written fails with the reason.

    A message offered to a connection that failed before writing it (no `last_error`)
    was never tried: it does not count.
    """
    if job.last_error is None:
        return True
    job.attempts += 1
    if job.attempts > 1:
        job.fail(job.last_error or TargetConnectError("the connection failed before the message was sent"))
        return False
    return True


def _resolve(waiter: asyncio.Future[Job | None], value: Job | None) -> None:
    if not waiter.done():
        waiter.set_result(value)


class PoolRegistry:
    """The pools of a process, one per target and event loop (pools cannot cross loops)."""

    def __init__(self) -> None:
        self._pools: dict[tuple[int, str], tuple[weakref.ref[asyncio.AbstractEventLoop], SMTPPool]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._slots: ConnectionSlots | None = None

    def set_connection_slots(self, slots: ConnectionSlots | None) -> None:
        """The cap over all workers for pools made from now on (set by the services; None: per process)."""
        self._slots = slots

    def pool(
        self,
        *,
        target_id: str,
        identity: Hashable,
        endpoint: Callable[[], SMTPEndpoint],
        login: Login | None,
        limits: PoolLimits,
    ) -> SMTPPool:
        """The pool for a target; an edited target or key (another `identity`) gets a new one."""
        loop = asyncio.get_running_loop()
        key = (id(loop), target_id)
        entry = self._pools.get(key)
        if entry is not None and entry[0]() is loop:
            pool = entry[1]
            if pool.identity == identity and not pool.closed:
                return pool
            self._close_later(pool)
        self._forget_dead_loops()
        pool = SMTPPool(
            endpoint=endpoint(),
            login=login,
            limits=limits,
            identity=identity,
            slots=self._slots,
            slots_key=target_id,
        )
        self._pools[key] = (weakref.ref(loop), pool)
        return pool

    def _close_later(self, pool: SMTPPool) -> None:
        task = asyncio.get_running_loop().create_task(pool.aclose())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _forget_dead_loops(self) -> None:
        for key, (ref, _pool) in list(self._pools.items()):
            loop = ref()
            if loop is None or loop.is_closed():
                del self._pools[key]

    def load(self, target_id: str) -> tuple[int, int, int] | None:
        """The target's pool in this loop: (live connections, messages waiting for one, connections
        being opened, a capability probe included); None: no pool."""
        entry = self._pools.get((id(asyncio.get_running_loop()), target_id))
        if entry is None or entry[0]() is not asyncio.get_running_loop() or entry[1].closed:
            return None
        return entry[1].load()

    def pools(self) -> list[SMTPPool]:
        """The pools of the running event loop."""
        loop = asyncio.get_running_loop()
        return [
            pool for (loop_id, _), (ref, pool) in self._pools.items() if loop_id == id(loop) and ref() is loop
        ]

    async def aclose(self) -> None:
        """Close every pool of the running event loop (server shutdown)."""
        pools = self.pools()
        loop_id = id(asyncio.get_running_loop())
        for key in [key for key in self._pools if key[0] == loop_id]:
            del self._pools[key]
        mine = [task for task in self._background if task.get_loop() is asyncio.get_running_loop()]
        await asyncio.gather(*(pool.aclose() for pool in pools), *mine)


_shared = PoolRegistry()


def shared_pools() -> PoolRegistry:
    """The process-wide registry: every send in the process shares its pools."""
    return _shared


__all__ = ["ConnectionSlot", "ConnectionSlots", "PoolLimits", "PoolRegistry", "SMTPPool", "shared_pools"]
