"""A claimed run's lease: the fencing token that every write of its state is conditioned on.

The same lease is held on a range of a batch's messages (ledger/ranges.py), whose
row has the same lease columns: a `LeasedRow` names the row and its statements,
and everything below holds for either ("the run" reads "the range" there).

A claim bumps the run's `lease_epoch`. Each transaction that writes the run's or
its steps' state starts with the fence (`begin`, or `fence_in` for an operation
of the group commit, storage/group.py), an UPDATE of the run's row matching this
worker and this epoch: on PostgreSQL it locks the row until the commit (a claim
by another worker waits, then sees the new epoch of its own), on SQLite it takes
the write lock for the whole transaction. If the fence matches nothing, another
worker has claimed the run since: the transaction is rolled back and
`LeaseLostError` raised, so a worker that was paused or partitioned can never
overwrite the new owner's records.

The lease is also kept by time. This worker may act on the run only while it is
sure the lease has not expired: `valid_until` is measured on the monotonic clock
from *before* each successful renewal, and a margin is kept. A renewal that fails
(a database blip, a failover, "database is locked") is retried within that
margin; when the margin is gone the worker stops before the lease can expire,
never after. Every send checks the lease first (`check`), so a worker that was
frozen past its lease (SIGSTOP, a long GC pause, a VM migration) sends nothing
more when it wakes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, Update, bindparam, update
from sqlalchemy.orm import Session

from mailwright.errors import LeaseLostError
from mailwright.storage.db import Database
from mailwright.storage.tables import BatchRangeRow, RunRow, utcnow

log = logging.getLogger(__name__)

RENEW_RETRY = 0.5  # seconds between attempts of a renewal that failed


@dataclass(frozen=True, slots=True)
class LeasedRow:
    """The row a lease is held on (a run's, or a range of a batch's, ledger/ranges.py): the
    statements that fence and renew it, taking the row's key and `owner`, `epoch` (and
    `expires`) as parameters, and the row's name in messages."""

    fence: Update
    renew: Update
    key: dict[str, Any]
    name: str
    kind: str = "run"  # what another worker claims: "run" or "range"


def _lease_statements(table: Any, where: tuple[Any, ...]) -> tuple[Update, Update]:
    """The fence (an UPDATE that changes nothing: it takes the row's write lock) and the renewal."""
    held = (*where, table.lease_owner == bindparam("owner"), table.lease_epoch == bindparam("epoch"))
    fence = (
        update(table)
        .where(*held)
        .values(lease_epoch=table.lease_epoch)
        .execution_options(synchronize_session=False)
    )
    renew = (
        update(table)
        .where(*held)
        .values(lease_expires_at=bindparam("expires", type_=table.lease_expires_at.type))
        .execution_options(synchronize_session=False)
    )
    return fence, renew


_RUN_FENCE, _RUN_RENEW = _lease_statements(RunRow, (RunRow.id == bindparam("run_id"),))
_RANGE_FENCE, _RANGE_RENEW = _lease_statements(
    BatchRangeRow,
    # Named apart from the columns: in an UPDATE, a parameter named as a column would set it.
    (BatchRangeRow.run_id == bindparam("of_run"), BatchRangeRow.range_no == bindparam("of_range")),
)


def run_row(run_id: str) -> LeasedRow:
    """A run's row: its lease fences every write of the run's state (and, without ranges, its steps')."""
    return LeasedRow(fence=_RUN_FENCE, renew=_RUN_RENEW, key={"run_id": run_id}, name=f"run {run_id}")


def range_row(run_id: str, range_no: int) -> LeasedRow:
    """A batch range's row: its lease fences every write of the steps of that range."""
    return LeasedRow(
        fence=_RANGE_FENCE,
        renew=_RANGE_RENEW,
        key={"of_run": run_id, "of_range": range_no},
        name=f"run {run_id} range {range_no}",
        kind="range",
    )


class Lease:
    """This worker's hold on one row (a run, or a range of a batch), from its claim until it lets
    go or loses it. `run_id` is the run the row belongs to."""

    def __init__(
        self,
        db: Database,
        *,
        run_id: str,
        owner: str,
        epoch: int,
        duration: timedelta,
        acquired_at: float,
        row: LeasedRow | None = None,
    ) -> None:
        self._db = db
        self.run_id = run_id
        self.row = row if row is not None else run_row(run_id)
        self.name = self.row.name
        self.owner = owner
        self.epoch = epoch
        self.seconds = duration.total_seconds()
        # Stop this long before the lease could expire: room for clock skew between hosts and
        # for a renewal's retries.
        self.margin = max(0.5, self.seconds / 6)
        self.valid_until = acquired_at + self.seconds
        self.reason: str | None = None
        self.lost = asyncio.Event()  # for waiters on the event loop
        self._lost = False  # for threads (an asyncio.Event is not thread-safe)
        self._loop = asyncio.get_running_loop()
        self._params = {**self.row.key, "owner": owner, "epoch": epoch}

    # --- is it still ours? ---------------------------------------------------------------

    @property
    def is_lost(self) -> bool:
        return self._lost

    def usable_for(self) -> float:
        """Seconds this worker may still act on the row (0 when it must stop)."""
        if self._lost:
            return 0.0
        return max(0.0, self.valid_until - self.margin - time.monotonic())

    def check(self) -> None:
        """Raise `LeaseLostError` unless the lease is surely still ours: call before each send."""
        if not self._lost and self.usable_for() <= 0:
            self.lose("its lease was not renewed in time (was this process paused?)")
        if self._lost:
            raise LeaseLostError(f"{self.name}: this worker lost its lease ({self.reason})")

    def lose(self, reason: str) -> None:
        """Stop acting on the run: nothing more is sent or written by this worker (thread-safe)."""
        if self._lost:
            return
        self._lost = True
        self.reason = reason
        log.warning(
            "%s: lease lost (%s); this worker stops sending and writes nothing more for it",
            self.name,
            reason,
        )
        if _running_loop() is self._loop:
            self.lost.set()
        else:
            self._loop.call_soon_threadsafe(self.lost.set)

    # --- fenced writes ---------------------------------------------------------------------

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A Core transaction that commits only if this worker still holds the lease."""
        self.check()
        with self._db.engine.begin() as connection:
            self._fence(connection.execute(self.row.fence, self._params).rowcount)
            yield connection

    def fence_in(self, session: Session) -> LeaseLostError | None:
        """The fence as a group commit's operation runs it: the error if the lease is gone."""
        if self._lost or not session.connection().execute(self.row.fence, self._params).rowcount:
            self.lose(f"another worker claimed the {self.row.kind}")
            return LeaseLostError(f"{self.name}: this worker lost its lease ({self.reason})")
        return None

    def _fence(self, rowcount: int) -> None:
        if not rowcount:
            self.lose(f"another worker claimed the {self.row.kind}")
            raise LeaseLostError(f"{self.name}: another worker claimed the {self.row.kind}")

    # --- renewal ----------------------------------------------------------------------------

    def renew(self) -> bool:
        """Extend the lease; False if another worker holds it now. May raise (database errors)."""
        with self._db.session() as session:
            params: dict[str, Any] = {**self._params, "expires": utcnow() + timedelta(seconds=self.seconds)}
            return bool(session.connection().execute(self.row.renew, params).rowcount)

    async def keep(self) -> None:
        """Renew every third of the lease until cancelled or lost."""
        while not self._lost:
            await asyncio.sleep(self.seconds / 3)
            await self._renew_within_margin()

    async def _renew_within_margin(self) -> None:
        while not self._lost:
            started = time.monotonic()
            left = self.valid_until - self.margin - started
            if left <= 0:
                self.lose("its lease could not be renewed before it would expire")
                return
            try:
                renewed = await asyncio.wait_for(asyncio.to_thread(self.renew), timeout=left)
            except TimeoutError:
                self.lose("renewing its lease did not finish before it would expire")
                return
            except Exception as exc:  # a blip: try again while the lease still holds
                log.warning(
                    "%s: renewing the lease failed (%s); retrying for %.1f s more",
                    self.name,
                    type(exc).__name__,
                    left,
                )
                await asyncio.sleep(min(RENEW_RETRY, left / 3))
                continue
            if not renewed:
                self.lose(f"another worker claimed the {self.row.kind}")
                return
            self.valid_until = started + self.seconds
            return


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
