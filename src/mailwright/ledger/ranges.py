"""A batch's messages in ranges, each sent by one worker at a time under a lease of its own.

A batch of 100,000 messages is one run, claimed by one worker: its coordinator.
Its messages are cut into ranges of `RANGE_SIZE` consecutive indexes (rows of
`batch_ranges`), made when the coordinator claims the run (`open_ranges`: a batch
stored by an older version, or retried, gets them then too). Any worker may claim
an open range (`claim`): the claim bumps the range's `lease_epoch`, and every
write of that range's steps is fenced by that lease (ledger/lease.py, a
`range_row`), exactly as a run's are by the run's. So a range's messages are sent
by one worker at a time, and a worker that lost its range (paused past the
lease, partitioned) writes and sends nothing more of it.

Who may claim: the coordinator claims any open range not held by a live lease
(under its run lease, which fences that claim). Another worker (a helper) claims
only while the run is running under a live lease and not asked to cancel, and
only a range that is due (`not_before`: a helper held back by a rate limit
leaves its range to the coordinator until then, so that the coordinator decides
the run's deferral). A range whose holder's lease expired is claimable again: its
messages found `sending` are then recorded `unknown` by the batch runner, never
sent again.

When the run ends, the coordinator seals it (`seal`): every range not held by a
live lease is closed (its epoch bumped, so a holder that was frozen is fenced
out), and the steps left `sending` by a stopped holder are recorded `unknown`.
Sealing fails while another worker still holds a range live; the coordinator
waits for it (the holder finishes, or lets go on a cancel, or its lease
expires).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Integer, and_, bindparam, exists, func, insert, or_, select, update
from sqlalchemy.orm import Session, aliased

from mailwright.domain.runs import RunStatus, SendState, StepStatus
from mailwright.ledger.lease import Lease, range_row
from mailwright.ledger.outcomes import CRASH_WHY, unknown_error, unknown_note
from mailwright.storage.batch_steps import OPEN
from mailwright.storage.db import Database
from mailwright.storage.tables import BatchRangeRow, RunRow, RunStepRow, utcnow

RANGE_SIZE = 1000  # messages per range: a few seconds of sending, one lease renewal or two

OPEN_RANGE = "open"  # messages may remain
DONE_RANGE = "done"  # its holder sent it through
CLOSED_RANGE = "closed"  # the run ended

_R = BatchRangeRow
_NOW = bindparam("now", type_=_R.lease_expires_at.type)
_FREE = or_(_R.lease_owner.is_(None), _R.lease_expires_at < _NOW)
_DUE = or_(_R.not_before.is_(None), _R.not_before <= _NOW)
# The run may be helped: running under a live lease (a coordinator), not asked to cancel.
_HELPABLE_RUN = and_(
    RunRow.status == RunStatus.RUNNING,
    RunRow.cancel_requested.is_(False),
    RunRow.lease_expires_at >= _NOW,
)


def _next_range(*, helper: bool) -> Any:
    """The first claimable range of the run; on PostgreSQL a range whose row another claim has
    locked is skipped, not waited for (SKIP LOCKED, as the run's claim)."""
    other = aliased(_R)
    free = or_(other.lease_owner.is_(None), other.lease_expires_at < _NOW)
    where = [other.run_id == bindparam("of_run"), other.status == OPEN_RANGE, free]
    if helper:
        where.append(or_(other.not_before.is_(None), other.not_before <= _NOW))
    return (
        select(other.range_no)
        .where(*where)
        .order_by(other.range_no)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )


def _claim_statement(*, helper: bool) -> Any:
    where = [
        _R.run_id == bindparam("of_run"),
        _R.range_no == _next_range(helper=helper),
        _R.status == OPEN_RANGE,
        _FREE,
    ]
    if helper:
        where.append(exists().where(RunRow.id == bindparam("of_run"), _HELPABLE_RUN))
    return (
        update(_R)
        .where(*where)
        .values(
            lease_owner=bindparam("owner"),
            lease_expires_at=bindparam("expires", type_=_R.lease_expires_at.type),
            lease_epoch=_R.lease_epoch + 1,  # the fencing token of this claim
            updated_at=_NOW,
        )
        .returning(_R.range_no, _R.first_index, _R.end_index, _R.lease_epoch)
        .execution_options(synchronize_session=False)
    )


_CLAIM = {helper: _claim_statement(helper=helper) for helper in (False, True)}
# Let go of a range: sent through (done), or left open for another worker (maybe not before a time).
_LET_GO = (
    update(_R)
    .where(
        _R.run_id == bindparam("of_run"),
        _R.range_no == bindparam("of_range"),
        _R.lease_owner == bindparam("owner"),
        _R.lease_epoch == bindparam("epoch"),
    )
    .values(
        status=bindparam("new_status"),
        lease_owner=None,
        lease_expires_at=None,
        not_before=bindparam("due", type_=_R.not_before.type),
        updated_at=_NOW,
    )
    .execution_options(synchronize_session=False)
)
_OF_RUN = _R.run_id == bindparam("of_run")
# The run's range rows that no other transaction has locked (SKIP LOCKED, as the claims): a row
# locked by a worker frozen inside a transaction (SIGSTOP, a VM pause) is left as it is, and
# never waited for, which would hold every write queued behind this one in the group commit.
_UNLOCKED = select(_R.range_no).where(_OF_RUN).with_for_update(skip_locked=True)
# Close what nobody holds live; the epoch bump fences out a holder whose lease expired.
_SEAL = (
    update(_R)
    .where(_OF_RUN, _R.range_no.in_(bindparam("unlocked", expanding=True)), _R.status != CLOSED_RANGE, _FREE)
    .values(status=CLOSED_RANGE, lease_owner=None, lease_expires_at=None, lease_epoch=_R.lease_epoch + 1)
    .execution_options(synchronize_session=False)
)
# A helper's claim would find a range (checked again by the claim itself).
_HELPABLE = (
    select(_R.range_no)
    .join(RunRow, RunRow.id == _R.run_id)
    .where(_OF_RUN, _R.status == OPEN_RANGE, _FREE, _DUE, _HELPABLE_RUN)
    .limit(1)
)
_UNSEALED = select(func.count()).select_from(_R).where(_OF_RUN, _R.status != CLOSED_RANGE)
_OPEN_COUNT = select(func.count()).select_from(_R).where(_OF_RUN, _R.status == OPEN_RANGE)
_FREE_COUNT = select(func.count()).select_from(_R).where(_OF_RUN, _R.status == OPEN_RANGE, _FREE)
_BUCKET = (RunStepRow.item_index // bindparam("size", type_=Integer)).label("bucket")
_OPEN_BUCKETS = (
    select(_BUCKET)
    .where(RunStepRow.run_id == bindparam("of_run"), RunStepRow.position == 0, RunStepRow.status.in_(OPEN))
    .distinct()
)
_LEFT_SENDING = select(RunStepRow.id, RunStepRow.attempts, RunStepRow.message_id, RunStepRow.notes).where(
    RunStepRow.run_id == bindparam("of_run"),
    RunStepRow.position == 0,
    RunStepRow.send_state == SendState.SENDING,
)


@dataclass(frozen=True, slots=True)
class BatchRange:
    """A range this worker holds: its lease (which fences its steps' writes) and its messages'
    indexes, `first_index` up to `end_index` (exclusive)."""

    lease: Lease
    range_no: int
    first_index: int
    end_index: int


class RangeLedger:
    """The ranges of batch runs: made, claimed, let go and sealed (see the module's docstring)."""

    def __init__(self, db: Database, *, size: int | None = None) -> None:
        self._db = db
        # Messages per range for runs cut from now on (MAILWRIGHT_BATCH_RANGE_SIZE); a run cut
        # before keeps its own size.
        self._size = size

    # --- the coordinator ------------------------------------------------------------------------

    async def open_ranges(self, run_lease: Lease) -> int:
        """Make the run's ranges for its open messages (or open them again: a resumed or retried
        run), fenced by the run's lease; how many ranges are open and not held by a live lease."""
        run_id = run_lease.run_id

        def apply(session: Session) -> int:
            connection = session.connection()
            now = utcnow()
            size = self._size_of(connection, run_id)
            found = connection.execute(_OPEN_BUCKETS, {"of_run": run_id, "size": size}).scalars()
            buckets = {int(b) for b in found if b is not None}
            existing = set(connection.execute(select(_R.range_no).where(_R.run_id == run_id)).scalars())
            unlocked = list(connection.execute(_UNLOCKED, {"of_run": run_id}).scalars())
            free = and_(
                _R.run_id == run_id,
                _R.range_no.in_(unlocked),
                or_(_R.lease_owner.is_(None), _R.lease_expires_at < now),
            )
            # The run is due now, so are its ranges; one with nothing open left is done.
            connection.execute(
                update(_R)
                .where(free, _R.range_no.in_(buckets))
                .values(status=OPEN_RANGE, not_before=None, updated_at=now)
            )
            connection.execute(
                update(_R)
                .where(free, _R.range_no.not_in(buckets), _R.status == OPEN_RANGE)
                .values(status=DONE_RANGE, updated_at=now)
            )
            missing = sorted(buckets - existing)
            if missing:
                connection.execute(insert(_R), [_new_range(run_id, n, size, now) for n in missing])
            return int(connection.execute(_FREE_COUNT, {"of_run": run_id, "now": now}).scalar_one())

        return await self._db.group.write(apply, fence=run_lease.fence_in)

    def _size_of(self, connection: Connection, run_id: str) -> int:
        """The run's range size: the one its ranges were cut with, else this ledger's."""
        cut = connection.execute(
            select(_R.end_index - _R.first_index).where(_R.run_id == run_id).limit(1)
        ).scalar()
        return int(cut) if cut else (self._size or RANGE_SIZE)

    async def claim_as_coordinator(self, run_lease: Lease, *, duration: timedelta) -> BatchRange | None:
        """The next open range not held by a live lease (due or not), under the run's lease."""
        return await self._claim(
            run_lease.run_id, owner=run_lease.owner, duration=duration, helper=False, fence=run_lease
        )

    def unfinished(self, run_id: str) -> int:
        """How many of the run's ranges are open: held by a worker, or free to claim (a free one
        the coordinator cannot claim is locked by a worker frozen inside a transaction, whose
        transaction the database ends: storage/db.py)."""
        with self._db.engine.connect() as connection:
            return int(connection.execute(_OPEN_COUNT, {"of_run": run_id}).scalar_one())

    async def seal(self, run_lease: Lease) -> bool:
        """Close the run's ranges before it ends; False while another worker holds one live.

        Once sealed, the steps left `sending` (by a holder that stopped) are recorded unknown.
        """
        run_id = run_lease.run_id

        def apply(session: Session) -> bool:
            connection = session.connection()
            params: dict[str, Any] = {"of_run": run_id, "now": utcnow()}
            params["unlocked"] = list(connection.execute(_UNLOCKED, params).scalars())
            connection.execute(_SEAL, params)
            if connection.execute(_UNSEALED, params).scalar_one():
                return False
            for row in connection.execute(_LEFT_SENDING, params).all():
                _record_unknown(session, run_id, row)
            return True

        return await self._db.group.write(apply, fence=run_lease.fence_in)

    # --- any worker -----------------------------------------------------------------------------

    async def claim(self, run_id: str, *, owner: str, duration: timedelta) -> BatchRange | None:
        """A due open range of a batch that another worker coordinates (see the module's docstring);
        None if there is none (or the run is no batch, or not running, or asked to cancel)."""
        # Read first, without a lock: most runs handed to a worker that cannot claim them are no
        # batch, and the claim is a write (on SQLite, the database's one write lock).
        if not await asyncio.to_thread(self._claimable, run_id):
            return None
        return await self._claim(run_id, owner=owner, duration=duration, helper=True, fence=None)

    def _claimable(self, run_id: str) -> bool:
        with self._db.engine.connect() as connection:
            found = connection.execute(_HELPABLE, {"of_run": run_id, "now": utcnow()}).first()
        return found is not None

    async def let_go(self, held: BatchRange, *, done: bool, not_before: datetime | None = None) -> bool:
        """Release the range: `done` (sent through), or open for another worker (from `not_before`).

        False if the lease was lost meanwhile (then nothing is written)."""
        lease = held.lease
        params = {
            "of_run": lease.run_id,
            "of_range": held.range_no,
            "owner": lease.owner,
            "epoch": lease.epoch,
            "new_status": DONE_RANGE if done else OPEN_RANGE,
            "due": not_before,
            "now": utcnow(),
        }
        if lease.is_lost:
            return False
        written = await self._db.group.write(lambda s: s.connection().execute(_LET_GO, params).rowcount)
        return bool(written)

    def runs_with_free_ranges(self, *, limit: int = 100) -> list[tuple[str, str | None]]:
        """Batch runs that another worker could help now: running under a live lease, not asked to
        cancel, with a due open range nobody holds live (oldest runs first); with each, its
        worker pool (only that pool's workers may help)."""
        query = (
            select(_R.run_id, RunRow.pool)
            .join(RunRow, RunRow.id == _R.run_id)
            .where(_R.status == OPEN_RANGE, _FREE, _DUE, _HELPABLE_RUN)
            .group_by(_R.run_id, RunRow.pool, RunRow.created_at)
            .order_by(RunRow.created_at)
            .limit(limit)
        )
        with self._db.engine.connect() as connection:
            rows = connection.execute(query, {"now": utcnow()}).all()
        return [(run_id, pool) for run_id, pool in rows]

    async def _claim(
        self, run_id: str, *, owner: str, duration: timedelta, helper: bool, fence: Lease | None
    ) -> BatchRange | None:
        acquired_at = time.monotonic()  # before the lease's clock starts in the database

        def apply(session: Session) -> Any:
            now = utcnow()
            params = {"of_run": run_id, "owner": owner, "now": now, "expires": now + duration}
            return session.connection().execute(_CLAIM[helper], params).first()

        row = await self._db.group.write(apply, fence=None if fence is None else fence.fence_in)
        if row is None:
            return None
        lease = Lease(
            self._db,
            run_id=run_id,
            owner=owner,
            epoch=row.lease_epoch,
            duration=duration,
            acquired_at=acquired_at,
            row=range_row(run_id, row.range_no),
        )
        return BatchRange(
            lease=lease, range_no=row.range_no, first_index=row.first_index, end_index=row.end_index
        )


def _new_range(run_id: str, number: int, size: int, now: datetime) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "range_no": number,
        "first_index": number * size,
        "end_index": (number + 1) * size,
        "status": OPEN_RANGE,
        "lease_epoch": 0,
        "updated_at": now,
    }


def _record_unknown(session: Session, run_id: str, row: Any) -> None:
    """A message left `sending` by a holder that stopped after DATA began: its outcome is unknown."""
    now = utcnow()
    session.connection().execute(
        update(RunStepRow)
        .where(RunStepRow.id == row.id)
        .values(
            status=StepStatus.UNKNOWN,
            send_state=SendState.UNKNOWN,
            error=unknown_error(run_id, CRASH_WHY),
            notes=[*(row.notes or []), unknown_note(run_id, row.attempts, row.message_id, CRASH_WHY)],
            finished_at=now,
            updated_at=now,
        )
    )
