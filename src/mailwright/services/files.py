"""Retention of the file store: what it holds, and removing old files no active run needs.

Attachments read from mail are kept in the file store (`storage/files.py`) and run
records keep only their reference (``sha256:<hex>``). Nothing else ever removes them,
so `prune` does: it removes the files last stored before a cutoff, except those that a
run which may still use them refers to. Such a run is one that is not finished
(queued, running, preparing or deferred); a run refers to a file when the text
``sha256:<hex>`` appears in its inputs, its trigger (the mail that started it) or its
document, or in the inputs or output of one of its steps. A finished run that is
retried after its files were pruned fails with an error naming the missing file.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Text, cast, select

from mailwright.domain.runs import StepStatus
from mailwright.errors import ValidationError
from mailwright.ledger.batch import PREPARING
from mailwright.services.runs import ACTIVE
from mailwright.storage.db import Database
from mailwright.storage.files import FileStore, StoredFile
from mailwright.storage.tables import RunRow, RunStepRow, StepInputRow

__all__ = ["KEEPING_STATUSES", "FileService", "FilesSummary", "PruneResult"]

# Run statuses whose runs may still read their files. "deferred" is a step's status (a run
# that waits for a retry or a rate limit is "queued"); listed too, should a run ever carry it.
KEEPING_STATUSES = (*ACTIVE, PREPARING, StepStatus.DEFERRED)
RUNS_SHOWN = 20  # referencing runs named in a prune result
_ANY_REF = re.compile(r"sha256:([0-9a-f]{64})")
_BATCH = 1000  # rows fetched at a time while scanning a run's steps


def _when(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


class FilesSummary(BaseModel):
    directory: str
    count: int
    bytes: int
    oldest: datetime | None  # the oldest modified time
    newest: datetime | None


class PruneResult(BaseModel):
    dry_run: bool  # when true, `removed` says what would have been removed
    older_than_seconds: float
    cutoff: datetime  # files modified before this were candidates
    removed: int
    removed_bytes: int
    kept_recent: int  # modified after the cutoff (or stored again while pruning)
    kept_recent_bytes: int
    kept_referenced: int  # old, but an active run still refers to them
    kept_referenced_bytes: int
    referencing_run_count: int  # how many active runs refer to those files
    referencing_runs: list[str]  # their ids (the first RUNS_SHOWN)
    failed: int  # could not be removed (e.g. permissions); see `errors`
    errors: list[str]


class FileService:
    def __init__(self, db: Database, store: FileStore) -> None:
        self._db = db
        self._store = store

    def summary(self) -> FilesSummary:
        count = total = 0
        oldest: float | None = None
        newest: float | None = None
        for stored in self._store.iter_files():
            count += 1
            total += stored.size
            oldest = stored.modified if oldest is None else min(oldest, stored.modified)
            newest = stored.modified if newest is None else max(newest, stored.modified)
        return FilesSummary(
            directory=str(self._store.root),
            count=count,
            bytes=total,
            oldest=None if oldest is None else _when(oldest),
            newest=None if newest is None else _when(newest),
        )

    def prune(self, older_than: timedelta, *, dry_run: bool) -> PruneResult:
        """Remove files modified more than `older_than` ago that no active run refers to."""
        if older_than < timedelta(0):
            raise ValidationError("older_than: must not be negative", field="older_than")
        cutoff = time.time() - older_than.total_seconds()
        recent: list[StoredFile] = []
        old: list[StoredFile] = []
        for stored in self._store.iter_files():
            (old if stored.modified < cutoff else recent).append(stored)
        # Only the old files' references matter; with none, the runs need not be read.
        users = self.referencing_runs({f.ref.removeprefix("sha256:") for f in old}) if old else {}
        result = PruneResult(
            dry_run=dry_run,
            older_than_seconds=older_than.total_seconds(),
            cutoff=_when(cutoff),
            removed=0,
            removed_bytes=0,
            kept_recent=len(recent),
            kept_recent_bytes=sum(f.size for f in recent),
            kept_referenced=0,
            kept_referenced_bytes=0,
            referencing_run_count=0,
            referencing_runs=[],
            failed=0,
            errors=[],
        )
        runs: set[str] = set()
        for stored in old:
            run_ids = users.get(stored.ref.removeprefix("sha256:"))
            if run_ids:
                result.kept_referenced += 1
                result.kept_referenced_bytes += stored.size
                runs.update(run_ids)
                continue
            if not dry_run:
                try:
                    # Only if still old: the same attachment read again meanwhile refreshed it.
                    removed = self._store.delete(stored.ref, modified_before=cutoff)
                except OSError as exc:
                    result.failed += 1
                    if len(result.errors) < RUNS_SHOWN:
                        result.errors.append(f"{stored.ref}: {exc.strerror or exc}")
                    continue
                if not removed:
                    result.kept_recent += 1
                    result.kept_recent_bytes += stored.size
                    continue
            result.removed += 1
            result.removed_bytes += stored.size
        result.referencing_run_count = len(runs)
        result.referencing_runs = sorted(runs)[:RUNS_SHOWN]
        return result

    def referencing_runs(self, digests: set[str]) -> dict[str, set[str]]:
        """For each of `digests` (hex) referred to by an active run: the ids of those runs."""
        found: dict[str, set[str]] = {}
        for run_id, texts in self._active_texts():
            for text in texts:
                if text is None or "sha256:" not in text:
                    continue
                for digest in _ANY_REF.findall(text):
                    if digest in digests:
                        found.setdefault(digest, set()).add(run_id)
        return found

    def _active_texts(self) -> Iterator[tuple[str, Iterable[str | None]]]:
        """The JSON (as text, cast by the database) of every active run and of its steps.

        CAST(json AS TEXT) is the stored JSON on SQLite and the json value's text on
        PostgreSQL; either way a reference appears as the string ``sha256:<hex>``.
        """
        active = RunRow.status.in_(KEEPING_STATUSES)
        runs = select(
            RunRow.id, cast(RunRow.inputs, Text), cast(RunRow.trigger, Text), cast(RunRow.document, Text)
        ).where(active)
        steps = (
            select(RunStepRow.run_id, cast(RunStepRow.inputs, Text), cast(RunStepRow.output, Text))
            .join(RunRow, RunRow.id == RunStepRow.run_id)
            .where(active)
        )
        batch_inputs = (
            select(RunStepRow.run_id, cast(StepInputRow.inputs, Text))
            .join(RunStepRow, RunStepRow.id == StepInputRow.step_id)
            .join(RunRow, RunRow.id == RunStepRow.run_id)
            .where(active)
        )
        with self._db.session() as session:
            for query in (runs, steps, batch_inputs):
                # A batch may have 100,000 steps: streamed, never all in memory at once.
                for row in session.execute(query.execution_options(yield_per=_BATCH)):
                    values: tuple[Any, ...] = tuple(row)
                    yield values[0], values[1:]
