"""Group commit: the small write transactions of many concurrent runs, committed together.

A single send writes its run's state four or five times (claim, attempt, the
"sending" mark before DATA, result, end), each a transaction with its own disk
sync, and on SQLite each waits for the one writer lock. Fifty concurrent sends
then queue for the lock one transaction at a time. Here each write is an
operation handed to one writer thread, which applies every operation waiting at
that moment in one transaction: one lock, one commit, one sync for all of them.
A caller hears of its operation only once that commit is durable.

An operation may carry a fence (the lease check of ledger/lease.py), run first:
when it refuses (it returns the exception to raise), that operation is dropped
before it wrote anything and its caller gets that exception, while the others
go on. If an operation's own
writes fail (a bug, a constraint), the group is rolled back and each operation
is applied again alone, so only the culprit fails. A database blip (locked past
the busy timeout, a connection lost) is met by trying the group again a few
times over about 3 s.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_GROUP = 256  # operations per transaction
# A database blip (a lock held past the busy timeout, a dropped connection, a failover) is met by
# trying the whole group again after these waits; nothing of a failed attempt was committed.
BLIP_WAITS = (0.1, 0.3, 1.0, 2.0)


def is_blip(exc: BaseException) -> bool:
    """A database error worth trying again: locked, or the connection lost."""
    if isinstance(exc, OperationalError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


class Sessions(Protocol):
    """Where the writer's transactions come from (storage/db.py's `Database`, which owns the
    group commit: declared here, so that the two modules do not import each other)."""

    def session(self) -> AbstractContextManager[Session]: ...


# Run first in the operation's transaction: None to go on, or the exception its caller gets.
Fence = Callable[[Session], BaseException | None]


@dataclass(eq=False, slots=True)
class _Operation:
    apply: Callable[[Session], Any]
    fence: Fence | None
    deliver: Callable[[Any, BaseException | None], None]  # called by the writer thread


class GroupCommit:
    """One writer thread applying the operations of many callers in shared transactions."""

    def __init__(self, db: Sessions) -> None:
        self._db = db
        self._waiting: list[_Operation] = []
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.transactions = 0
        self.operations = 0

    async def write(self, apply: Callable[[Session], T], *, fence: Fence | None = None) -> T:
        """Apply `apply(session)` in the next group; returns its result once it is committed."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()

        def deliver(result: Any, error: BaseException | None) -> None:
            loop.call_soon_threadsafe(_resolve, done, result, error)

        self._submit(_Operation(apply, fence, deliver))
        return await done

    def write_sync(self, apply: Callable[[Session], T], *, fence: Fence | None = None) -> T:
        """`write` for code running in a thread."""
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def deliver(result: Any, error: BaseException | None) -> None:
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(result)

        self._submit(_Operation(apply, fence, deliver))
        return done.result()

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _submit(self, operation: _Operation) -> None:
        with self._ready:
            if self._closed:
                raise RuntimeError("the database is closed")
            self._waiting.append(operation)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
                self._thread.start()
            self._ready.notify()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._waiting and not self._closed:
                    self._ready.wait()
                if not self._waiting:
                    return
                group, self._waiting = self._waiting[:MAX_GROUP], self._waiting[MAX_GROUP:]
            self._commit(group)

    def _commit(self, group: list[_Operation]) -> None:
        outcomes: list[tuple[_Operation, Any, BaseException | None]] = []
        try:
            for wait in (*BLIP_WAITS, None):
                try:
                    outcomes = self._attempt(group)
                    break
                except Exception as exc:
                    if wait is None or not is_blip(exc):
                        raise
                    log.warning(
                        "a database write failed (%s); trying again in %.1f s", type(exc).__name__, wait
                    )
                    time.sleep(wait)
        except Exception as exc:
            if len(group) == 1 or is_blip(exc):  # the database is gone for now: everyone hears it
                for operation in group:
                    _settle(operation, None, exc)
                return
            # The type only: the exception's text carries the statement's parameters (message data).
            log.warning(
                "a group of %d writes failed (%s); writing them one by one", len(group), type(exc).__name__
            )
            for operation in group:
                self._commit([operation])
            return
        self.transactions += 1
        self.operations += len(group)
        for operation, result, error in outcomes:
            _settle(operation, result, error)

    def _attempt(self, group: list[_Operation]) -> list[tuple[_Operation, Any, BaseException | None]]:
        with self._db.session() as session:
            return [_apply(session, operation) for operation in group]


def _apply(session: Session, operation: _Operation) -> tuple[_Operation, Any, BaseException | None]:
    refused = operation.fence(session) if operation.fence is not None else None
    if refused is not None:
        return operation, None, refused  # dropped before it wrote anything
    return operation, operation.apply(session), None


def _settle(operation: _Operation, result: Any, error: BaseException | None) -> None:
    with contextlib.suppress(RuntimeError):  # its event loop has closed: nobody waits any more
        operation.deliver(result, error)


def _resolve(done: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if done.cancelled():
        return
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(result)
