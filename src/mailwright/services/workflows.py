"""Workflows: documents stored by name, validated against what exists, exported and imported."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailwright.domain.runs import RunStatus
from mailwright.domain.triggers import EmailTrigger
from mailwright.domain.workflows import (
    DocumentFormat,
    WorkflowDocument,
    check_references,
    convert_source,
    dump_document,
    parse_document,
    references,
    source_format,
)
from mailwright.errors import ConflictError, ValidationError
from mailwright.plugins import TargetType, activities, labels_of, target_type, target_types
from mailwright.services import audit
from mailwright.services.common import clean_name, find
from mailwright.storage.db import Database
from mailwright.storage.tables import AccountKeyRow, RunRow, TargetRow, WorkflowRow, name_key, utcnow


class WorkflowPublic(BaseModel):
    id: str
    name: str
    description: str
    steps: list[str]
    inputs: dict[str, Any]
    target: str | None
    schedules: list[dict[str, Any]]
    runs: int
    created_at: datetime
    updated_at: datetime
    document: dict[str, Any]


class ExportedWorkflow(BaseModel):
    """An export: the document, and the targets and keys it names (never their secrets)."""

    document: str
    format: Literal["yaml", "json"]
    targets: list[str]
    account_keys: list[str]


def trigger_problems(document: WorkflowDocument, target_types: dict[str, str]) -> list[str]:
    """What an email trigger asks that its target's type cannot do (as the type declares it)."""
    types = {name.casefold(): kind for name, kind in target_types.items()}
    problems: list[str] = []
    for index, trigger in enumerate(document.triggers):
        kind = types.get(trigger.target.casefold())
        if kind is None:
            continue  # reported with the other references
        problems.extend(_trigger_problems(trigger, target_type(kind), where=f"triggers[{index}]"))
    return problems


def _trigger_problems(trigger: EmailTrigger, kind: TargetType, *, where: str) -> list[str]:
    if kind.mailbox is None:
        holding = labels_of([t for t in target_types() if t.mailbox is not None])
        return [
            f"{where}.target: {trigger.target!r} is an {kind.protocol} target; an email trigger "
            f"reads mail, so it needs {holding}"
        ]
    if kind.mailbox_folders:
        return []
    with_folders = labels_of([t for t in target_types() if t.mailbox is not None and t.mailbox_folders])
    if (action := trigger.after_success.action.value) in ("mark_read", "move"):
        return [
            f"{where}.after_success: {kind.protocol} has no folders or flags, so {action} "
            f"cannot be done; use action delete or none, or {with_folders}"
        ]
    if trigger.folder != "INBOX":
        return [
            f"{where}.folder: {kind.protocol} reads only the inbox; leave folder out or use {with_folders}"
        ]
    return []


def _store(row: WorkflowRow, document: WorkflowDocument, text: str) -> list[str]:
    """Write the document and its source into `row`; the parts that changed, for the audit log."""
    before = dict(row.document or {})  # a new row has none yet
    after = document.model_dump(mode="json", by_alias=True, exclude_unset=True)
    # Which parts of a replaced document (steps, triggers, schedules…) changed; "source" when
    # only its comments or layout did.
    fields = audit.changed(before, after) or (["source"] if row.source != text else [])
    row.description = document.description
    row.document = after
    row.source = text
    row.updated_at = utcnow()
    return fields


class WorkflowService:
    def __init__(self, db: Database) -> None:
        self._db = db
        # Called with the workflow id after every save (the schedules follow the document).
        self.on_saved: Callable[[str], None] | None = None

    # --- validation -------------------------------------------------------------

    def validate(self, text: str, *, filename: str | None = None) -> WorkflowDocument:
        """Parse and check every reference and expression; one error lists every problem."""
        document = parse_document(text, filename=filename)
        self._check(document)
        return document

    def _check(self, document: WorkflowDocument) -> None:
        with self._db.session() as session:
            target_types: dict[str, str] = dict(
                session.execute(select(TargetRow.display_name, TargetRow.type)).all()
            )
            key_names = set(session.scalars(select(AccountKeyRow.name)).all())
        problems = check_references(
            document,
            activities={a.name for a in activities()},
            targets=set(target_types),
            account_keys=key_names,
        )
        problems.extend(trigger_problems(document, target_types))
        if problems:
            listing = "; ".join(problems)
            raise ValidationError(
                f"workflow {document.name!r} has {len(problems)} problem{'s' if len(problems) > 1 else ''}: "
                f"{listing}",
                field="document",
            )

    # --- storage -------------------------------------------------------------------

    def create(self, text: str, *, filename: str | None = None, replace: bool = False) -> WorkflowPublic:
        document = self.validate(text, filename=filename)
        name = clean_name(document.name, field="name", what="workflow")
        with self._db.session() as session:
            row = session.scalars(select(WorkflowRow).where(WorkflowRow.name_key == name_key(name))).first()
            if row is not None and not replace:
                raise ConflictError(
                    f"a workflow named {row.name!r} already exists",
                    field="name",
                    hint="rename it in the document, or replace it (--replace)",
                )
            action = audit.AuditAction.UPDATE if row is not None else audit.AuditAction.CREATE
            if row is None:
                row = WorkflowRow(name=name, name_key=name_key(name))
                session.add(row)
            fields = _store(row, document, text)
            session.flush()
            audit.record(
                session,
                action=action,
                object_type=audit.ObjectType.WORKFLOW,
                object_id=row.id,
                object_name=row.name,
                fields=fields if action is audit.AuditAction.UPDATE else None,
            )
            saved = self._public(session, row)
        if self.on_saved is not None:
            self.on_saved(saved.id)
        return saved

    def get(self, ref: str) -> WorkflowPublic:
        with self._db.session() as session:
            return self._public(session, find(session, WorkflowRow, ref, what="workflow"))

    def document(self, ref: str) -> WorkflowDocument:
        with self._db.session() as session:
            row = find(session, WorkflowRow, ref, what="workflow")
            return WorkflowDocument.model_validate(row.document)

    def list_all(self) -> list[WorkflowPublic]:
        with self._db.session() as session:
            rows = session.scalars(select(WorkflowRow).order_by(WorkflowRow.name_key)).all()
            return [self._public(session, row) for row in rows]

    def delete(self, ref: str) -> None:
        with self._db.session() as session:
            row = find(session, WorkflowRow, ref, what="workflow")
            active = session.scalar(
                select(func.count())
                .select_from(RunRow)
                .where(RunRow.workflow_id == row.id, RunRow.status.in_((RunStatus.QUEUED, RunStatus.RUNNING)))
            )
            if active:
                raise ConflictError(
                    f"workflow {row.name!r} has {active} run(s) in progress",
                    hint="cancel them first (mailwright runs cancel RUN)",
                )
            session.delete(row)
            audit.record(
                session,
                action=audit.AuditAction.DELETE,
                object_type=audit.ObjectType.WORKFLOW,
                object_id=row.id,
                object_name=row.name,
            )

    def export(self, ref: str, fmt: DocumentFormat | None = None) -> ExportedWorkflow:
        """The document as its author wrote it (comments and key order kept), or in `fmt`.

        Asked for the other format, the text is rewritten with its keys in the written order
        (JSON has no comments). A workflow saved before sources were kept is written anew.
        """
        with self._db.session() as session:
            row = find(session, WorkflowRow, ref, what="workflow")
            document = WorkflowDocument.model_validate(row.document)
            source = row.source
        if source is None:
            text = dump_document(document, fmt or "yaml")
        else:
            text = convert_source(source, fmt or source_format(source))
        named = references(document)
        return ExportedWorkflow(
            document=text,
            format=fmt or source_format(text),
            targets=sorted(named.get("targets", set())),
            account_keys=sorted(named.get("account_keys", set())),
        )

    @staticmethod
    def _public(session: Session, row: WorkflowRow) -> WorkflowPublic:
        document = WorkflowDocument.model_validate(row.document)
        runs = (
            session.scalar(select(func.count()).select_from(RunRow).where(RunRow.workflow_id == row.id)) or 0
        )
        return WorkflowPublic(
            id=row.id,
            name=row.name,
            description=row.description,
            steps=[f"{s.id} ({s.activity})" for s in document.steps],
            inputs={k: v.model_dump(mode="json") for k, v in document.inputs.items()},
            target=document.target,
            schedules=[s.model_dump(mode="json") for s in document.schedules],
            runs=runs,
            created_at=row.created_at,
            updated_at=row.updated_at,
            document=row.document,
        )
