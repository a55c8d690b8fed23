"""Helpers shared by the services: names, references by name or id."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailwright.errors import NotFoundError, ValidationError
from mailwright.storage.tables import (
    AccountKeyRow,
    ApiTokenRow,
    ScheduleStateRow,
    TargetRow,
    TriggerStateRow,
    WorkflowRow,
    name_key,
)

if TYPE_CHECKING:
    from mailwright.domain.workflows import WorkflowDocument

Row = TypeVar("Row", AccountKeyRow, TargetRow, ApiTokenRow, WorkflowRow)


def clean_name(value: str, *, field: str, what: str) -> str:
    name = value.strip()
    if not name:
        raise ValidationError(f"the {what} name is empty", field=field)
    if len(name) > 200:
        raise ValidationError(f"the {what} name is longer than 200 characters", field=field)
    if any(ord(c) < 32 for c in name):
        raise ValidationError(f"the {what} name contains control characters", field=field)
    return name


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def find(session: Session, model: type[Row], ref: str, *, what: str) -> Row:
    """A row by id or by name (case-insensitive)."""
    ref = ref.strip()
    row = session.get(model, ref) if _is_uuid(ref) else None
    if row is None:
        row = session.scalars(select(model).where(model.name_key == name_key(ref))).first()
    if row is None:
        raise NotFoundError(
            f"no {what} named {ref!r}",
            hint=f"list them with `mailwright {what.replace(' ', '-')}s list`",
        )
    return row


State = TypeVar("State", ScheduleStateRow, TriggerStateRow)


def workflow_states(
    session: Session, model: type[State], workflow_id: str
) -> tuple[WorkflowDocument, dict[int, State]] | None:
    """A workflow's document and its stored schedule or trigger states by position (None if it is gone)."""
    # Imported here: workflow documents bring the expression sandbox (Jinja), which the
    # commands that never read a workflow (`targets list`) start without.
    from mailwright.domain.workflows import WorkflowDocument

    row = session.get(WorkflowRow, workflow_id)
    if row is None:
        return None
    document = WorkflowDocument.model_validate(row.document)
    found = session.scalars(select(model).where(model.workflow_id == workflow_id)).all()
    return document, {state.position: state for state in found}
