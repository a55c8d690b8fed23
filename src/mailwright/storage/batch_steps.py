"""The step rows of a batch run, written and read in bulk (the statements of storage/bulk.py).

A batch's step is one message: stored `pending` with its Message-ID (its fields
go to `step_inputs`, written once), marked `sending` just before its DATA
(grouped with other messages' marks), and given its result. Rarer updates (a
failure, a deferral) go through SQLAlchemy Core in engine/batch.py.
"""

from __future__ import annotations

import functools
from typing import cast

from sqlalchemy import Dialect, Table

from mailwright.domain.runs import SendState, StepStatus
from mailwright.storage.bulk import BulkSelect, BulkWrite, columns_of
from mailwright.storage.tables import RunStepRow, StepInputRow

# Steps still to send ("running": in flight at a crash); the statements below spell it out.
OPEN = (StepStatus.PENDING, StepStatus.DEFERRED, StepStatus.RUNNING)
_OPEN_SQL = ", ".join(f"'{status}'" for status in OPEN)

INSERT_COLUMNS = (
    "id",
    "run_id",
    "position",
    "step_id",
    "item_index",
    "activity",
    "status",
    "attempts",
    "max_attempts",
    "message_id",
    "notes",
    "updated_at",
)
INPUT_COLUMNS = ("step_id", "inputs")
PAGE_COLUMNS = (
    "id",
    "item_index",
    "inputs",  # from step_inputs, or from the step row of a batch stored by an older version
    "message_id",
    "send_state",
    "attempts",
    "max_attempts",
    "notes",
)
MARK_COLUMNS = ("message_id", "attempts", "started_at", "updated_at", "id")
SENT_COLUMNS = ("output", "message_id", "attempts", "notes", "finished_at", "updated_at", "id")


class BatchSteps:
    """The statements, prepared for one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        table = cast(Table, RunStepRow.__table__)
        inputs = cast(Table, StepInputRow.__table__)
        self.insert = BulkWrite.insert(dialect, table, INSERT_COLUMNS)
        self.insert_inputs = BulkWrite.insert(dialect, inputs, INPUT_COLUMNS)
        selected = ", ".join(
            "COALESCE(i.inputs, s.inputs)" if name == "inputs" else f"s.{name}" for name in PAGE_COLUMNS
        )
        self.page = BulkSelect(
            dialect,
            f"SELECT {selected} FROM run_steps s LEFT JOIN step_inputs i ON i.step_id = s.id "  # noqa: S608
            "WHERE s.run_id = ? AND s.position = 0 AND s.item_index > ? AND s.item_index < ? "
            f"AND s.status IN ({_OPEN_SQL}) "
            "ORDER BY s.item_index LIMIT ?",
            columns_of(table, PAGE_COLUMNS),
        )
        # Just before its DATA: the message's step is durably "sending" (grouped with others').
        self.marked = BulkWrite.update(
            dialect,
            table,
            constants=f"status = '{StepStatus.RUNNING}', send_state = '{SendState.SENDING}'",
            columns=MARK_COLUMNS[:-1],
            key="id",
        )
        self.sent = BulkWrite.update(
            dialect,
            table,
            constants=f"status = '{StepStatus.SUCCEEDED}', error = NULL, send_state = '{SendState.SENT}'",
            columns=SENT_COLUMNS[:-1],
            key="id",
        )


@functools.lru_cache(maxsize=4)
def batch_steps(dialect: Dialect) -> BatchSteps:
    return BatchSteps(dialect)
