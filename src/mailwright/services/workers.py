"""The workers that run now: each process registers itself and keeps its row fresh.

A worker writes its heartbeat every HEARTBEAT_SECONDS; a row not refreshed for
LIVE_SECONDS is a worker that is gone (killed, its machine lost), and is left out
of every listing. Nothing depends on these rows for correctness (leases do that):
they tell people which workers exist, and tell a run waiting in a pool whether
anyone can take it.
"""

from __future__ import annotations

import socket
from datetime import datetime, timedelta

from pydantic import BaseModel
from sqlalchemy import delete, func, select, update

from mailwright.storage.db import Database
from mailwright.storage.tables import WorkerRow, utcnow

HEARTBEAT_SECONDS = 5.0
LIVE_SECONDS = 30.0  # six missed heartbeats
FORGET_AFTER = timedelta(days=1)  # rows of dead workers are deleted after this


class WorkerPublic(BaseModel):
    id: str
    host: str
    pid: int
    pool: str | None
    concurrency: int
    broker: str
    runs_in_hand: int
    started_at: datetime
    heartbeat_at: datetime


class WorkerService:
    def __init__(self, db: Database) -> None:
        self._db = db

    def register(self, worker_id: str, *, pid: int, pool: str | None, concurrency: int, broker: str) -> None:
        now = utcnow()
        with self._db.session() as session:
            session.merge(
                WorkerRow(
                    id=worker_id,
                    host=socket.gethostname(),
                    pid=pid,
                    pool=pool,
                    concurrency=concurrency,
                    broker=broker,
                    runs_in_hand=0,
                    started_at=now,
                    heartbeat_at=now,
                )
            )

    def heartbeat(self, worker_id: str, *, runs_in_hand: int) -> bool:
        """Refresh the row; False if it is gone (deleted as stale after a long pause): register again."""
        with self._db.session() as session:
            done = session.execute(
                update(WorkerRow)
                .where(WorkerRow.id == worker_id)
                .values(heartbeat_at=utcnow(), runs_in_hand=runs_in_hand)
            )
            return bool(done.rowcount)  # type: ignore[attr-defined]

    def leave(self, worker_id: str) -> None:
        """A worker stopping gracefully takes its row with it."""
        with self._db.session() as session:
            session.execute(delete(WorkerRow).where(WorkerRow.id == worker_id))

    def live(self, *, pool: str | None = None, any_pool: bool = True) -> list[WorkerPublic]:
        """Workers whose heartbeat is recent, by pool then host; `any_pool=False`: only `pool`'s."""
        now = utcnow()
        with self._db.session() as session:
            session.execute(delete(WorkerRow).where(WorkerRow.heartbeat_at < now - FORGET_AFTER))
            query = select(WorkerRow).where(WorkerRow.heartbeat_at >= now - timedelta(seconds=LIVE_SECONDS))
            if not any_pool:
                query = query.where(func.coalesce(WorkerRow.pool, "") == (pool or ""))
            rows = session.scalars(query).all()
            workers = [WorkerPublic.model_validate(row, from_attributes=True) for row in rows]
        return sorted(workers, key=lambda w: (w.pool or "", w.host, w.started_at))

    def pool_has_worker(self, pool: str | None) -> bool:
        return bool(self.live(pool=pool, any_pool=False))
