"""Email triggers: their stored state, and the one-run-per-mail bookkeeping.

Each mail a trigger takes is a `trigger_messages` row whose unique key is the
workflow, the target, the folder, the folder's UIDVALIDITY and the UID (for POP3:
the UIDL with the Message-ID; on a mailbox that reports changes, Graph: the message's
immutable id, and the mail there at the first look is recorded as skipped). The row
and the run it starts are written in one transaction, so restarts, reconnects and
several workers watching the same folder can never start a second run for the same
mail: the second insert fails.

The after-success action is applied by whoever first moves the row from
``started`` to ``acting`` (a conditional update), and only once the run succeeded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.exc import IntegrityError

from mailwright.domain.runs import FINISHED_RUN_STATUS_LIST
from mailwright.domain.workflows import WorkflowDocument
from mailwright.engine.triggers import ChangePosition, Mail, Outcome, Retry, TriggerPlan, TriggerStatus
from mailwright.errors import NotFoundError
from mailwright.services import audit
from mailwright.services.common import find, workflow_states
from mailwright.services.runs import RunService
from mailwright.storage.db import Database
from mailwright.storage.tables import (
    RunRow,
    TargetRow,
    TriggerMessageRow,
    TriggerStateRow,
    WorkflowRow,
    name_key,
    utcnow,
)

log = logging.getLogger(__name__)

FINISHED = FINISHED_RUN_STATUS_LIST
# Watchers say they are alive every HEARTBEAT_SECONDS (engine/triggers.py); a state not
# touched for this long has nobody watching it.
PAUSED_AFTER = timedelta(seconds=120)
KEYS_PER_QUERY = 500  # keys in one IN (…): well under SQLite's limit on a statement's parameters


class TriggerPublic(BaseModel):
    workflow: str
    workflow_id: str
    index: int
    type: str
    target: str
    folder: str
    enabled: bool
    status: str
    error: str | None
    after_success: str
    on_failure: str
    uidvalidity: int | None
    last_uid: int | None
    last_checked_at: datetime | None
    last_message_at: datetime | None
    runs_started: int
    runs_failed: int
    waiting: int


def _shown_status(state: TriggerStateRow) -> tuple[str, str | None]:
    """The state as a user should read it: "paused" when no worker has looked at it lately."""
    if not state.enabled:
        return "disabled", None
    seen = state.last_checked_at or state.updated_at
    if state.status != "errored" and utcnow() - seen > PAUSED_AFTER:
        return "paused", (
            f"no worker has watched this trigger since {seen:%Y-%m-%d %H:%M:%S} UTC; mail waits in "
            "the folder and is taken when `mailwright serve` or `mailwright worker` runs again"
        )
    return state.status, state.error


def _document(session: Any, workflow_id: str) -> WorkflowDocument:
    workflow = session.get(WorkflowRow, workflow_id)
    if workflow is None:
        raise NotFoundError(f"workflow {workflow_id} was deleted while its trigger was taking mail")
    return WorkflowDocument.model_validate(workflow.document)


class TriggerService:
    def __init__(self, db: Database, runs: RunService) -> None:
        self._db = db
        self._runs = runs

    # --- documents and states ------------------------------------------------------

    def sync(self, workflow_id: str) -> None:
        """Align the states with the document. A trigger whose target and folder stay keeps its place."""
        with self._db.session() as session:
            loaded = workflow_states(session, TriggerStateRow, workflow_id)
            if loaded is None:
                return
            document, states = loaded
            for position, trigger in enumerate(document.triggers):
                target = session.scalars(
                    select(TargetRow).where(TargetRow.name_key == name_key(trigger.target))
                ).first()
                target_id = target.id if target is not None else None
                state = states.pop(position, None)
                if state is None:
                    state = TriggerStateRow(workflow_id=workflow_id, position=position, status="starting")
                    session.add(state)
                elif state.target_id != target_id or state.folder != trigger.folder:
                    # Another mailbox: its own starting point (taken mail stays recorded by its key).
                    state.uidvalidity, state.last_uid, state.baseline_at = None, None, None
                    state.change_cursor = None
                state.target_id, state.folder = target_id, trigger.folder
                state.enabled = trigger.enabled
                state.status = "starting" if trigger.enabled else "disabled"
                state.error = None
                state.updated_at = utcnow()
            for stale in states.values():
                session.delete(stale)

    def list_all(self, workflow: str | None = None) -> list[TriggerPublic]:
        with self._db.session() as session:
            query = select(TriggerStateRow, WorkflowRow).join(
                WorkflowRow, WorkflowRow.id == TriggerStateRow.workflow_id
            )
            if workflow is not None:
                query = query.where(
                    TriggerStateRow.workflow_id == find(session, WorkflowRow, workflow, what="workflow").id
                )
            rows = session.execute(query.order_by(WorkflowRow.name, TriggerStateRow.position)).all()
            counts = self._counts(session)
            return [self._public(state, wf, counts) for state, wf in rows]

    @staticmethod
    def _counts(session: Any) -> dict[tuple[str, int, str], int]:
        grouped = session.execute(
            select(
                TriggerMessageRow.workflow_id,
                TriggerMessageRow.position,
                TriggerMessageRow.status,
                func.count(),
            ).group_by(TriggerMessageRow.workflow_id, TriggerMessageRow.position, TriggerMessageRow.status)
        ).all()
        return {(w, p, s): n for w, p, s, n in grouped}

    @staticmethod
    def _public(
        state: TriggerStateRow, workflow: WorkflowRow, counts: dict[tuple[str, int, str], int]
    ) -> TriggerPublic:
        document = WorkflowDocument.model_validate(workflow.document)
        trigger = document.triggers[state.position] if state.position < len(document.triggers) else None

        def count(*statuses: str) -> int:
            return sum(counts.get((workflow.id, state.position, s), 0) for s in statuses)

        status, error = _shown_status(state)
        after = "none"
        if trigger is not None:
            after = trigger.after_success.action.value
            if trigger.after_success.folder:
                after += f" → {trigger.after_success.folder}"
        return TriggerPublic(
            workflow=workflow.name,
            workflow_id=workflow.id,
            index=state.position,
            type="email",
            target=trigger.target if trigger else "",
            folder=state.folder,
            enabled=state.enabled,
            status=status,
            error=error,
            after_success=after,
            on_failure=trigger.on_failure.action if trigger else "report",
            uidvalidity=state.uidvalidity,
            last_uid=state.last_uid,
            last_checked_at=state.last_checked_at,
            last_message_at=state.last_message_at,
            runs_started=count("started", "acting", "succeeded", "failed", "retrying"),
            runs_failed=count("failed"),
            waiting=count("started", "retrying"),
        )

    def set_enabled(self, workflow: str, index: int, enabled: bool) -> TriggerPublic:
        with self._db.session() as session:
            row = find(session, WorkflowRow, workflow, what="workflow")
            state = session.scalars(
                select(TriggerStateRow).where(
                    TriggerStateRow.workflow_id == row.id, TriggerStateRow.position == index
                )
            ).first()
            if state is None:
                count = len(WorkflowDocument.model_validate(row.document).triggers)
                raise NotFoundError(
                    f"workflow {row.name!r} has no trigger number {index}"
                    + (f" (it has {count}: 0 to {count - 1})" if count else " (it declares no triggers)"),
                    hint=f"see `mailwright triggers list --workflow {row.name!r}`",
                )
            audit.record(
                session,
                action=audit.AuditAction.UPDATE,
                object_type=audit.ObjectType.TRIGGER,
                object_id=state.id,
                object_name=f"{row.name} trigger {index}",
                fields=["enabled"] if state.enabled != enabled else [],
            )
            state.enabled = enabled
            state.status = "starting" if enabled else "disabled"
            state.error = None
            state.updated_at = utcnow()
            workflow_id = row.id
        return next(t for t in self.list_all(workflow_id) if t.index == index)

    def plans(self, pool: str | None = None) -> list[TriggerPlan]:
        """The enabled triggers whose target exists and is in `pool`, for that pool's watchers.

        A target in a worker pool may be reachable from that pool's machines alone (an internal
        server), so only that pool's workers watch its mailbox.
        """
        with self._db.session() as session:
            rows = session.execute(
                select(TriggerStateRow, WorkflowRow, TargetRow)
                .join(WorkflowRow, WorkflowRow.id == TriggerStateRow.workflow_id)
                .join(TargetRow, TargetRow.id == TriggerStateRow.target_id)
                .where(TriggerStateRow.enabled.is_(True))
            ).all()
            plans = []
            for state, workflow, target in rows:
                document = WorkflowDocument.model_validate(workflow.document)
                if state.position >= len(document.triggers) or _pool(target) != pool:
                    continue
                trigger = document.triggers[state.position]
                fingerprint = "|".join(
                    (
                        trigger.model_dump_json(),
                        str(target.updated_at),
                        str(target.account_key_id),
                        str(target.account_key.updated_at if target.account_key else ""),
                    )
                )
                plans.append(
                    TriggerPlan(
                        state_id=state.id,
                        workflow_id=workflow.id,
                        workflow_name=workflow.name,
                        position=state.position,
                        trigger=trigger,
                        target_id=target.id,
                        target_type=target.type,
                        fingerprint=fingerprint,
                        status=state.status,
                    )
                )
            return plans

    def position(self, state_id: str) -> tuple[int | None, int | None, datetime | None]:
        """(UIDVALIDITY, last UID seen, when the baseline was set) of a trigger."""
        with self._db.session() as session:
            state = session.get(TriggerStateRow, state_id)
            if state is None:
                return None, None, None
            return state.uidvalidity, state.last_uid, state.baseline_at

    def change_position(self, state_id: str) -> ChangePosition:
        """Where a trigger on a mailbox that reports changes stands (its cursor), and its UID mark."""
        with self._db.session() as session:
            state = session.get(TriggerStateRow, state_id)
            if state is None:
                return ChangePosition(None, None, None, None)
            return ChangePosition(state.uidvalidity, state.change_cursor, state.last_uid, state.baseline_at)

    def advance(self, state_id: str, *, uidvalidity: int, last_uid: int, baseline: bool = False) -> None:
        """Move the high-water mark forward (never back: two watchers may race)."""
        with self._db.session() as session:
            state = session.get(TriggerStateRow, state_id)
            if state is None:
                return
            if state.uidvalidity != uidvalidity or baseline:
                state.uidvalidity, state.last_uid = uidvalidity, last_uid
                state.baseline_at = state.baseline_at or utcnow()
            elif state.last_uid is None or last_uid > state.last_uid:
                state.last_uid = last_uid
            state.updated_at = utcnow()

    def heartbeat(self, state_ids: list[str]) -> None:
        """The watchers of these triggers are alive (also while idling in IDLE for minutes)."""
        if not state_ids:
            return
        with self._db.session() as session:
            session.execute(
                update(TriggerStateRow)
                .where(TriggerStateRow.id.in_(state_ids), TriggerStateRow.enabled.is_(True))
                .values(last_checked_at=utcnow())
            )

    def set_status(self, state_id: str, status: TriggerStatus, error: str | None = None) -> None:
        with self._db.session() as session:
            session.execute(
                update(TriggerStateRow)
                .where(TriggerStateRow.id == state_id, TriggerStateRow.enabled.is_(True))
                .values(status=status, error=error, last_checked_at=utcnow(), updated_at=utcnow())
            )

    def mark_baseline(self, state_id: str) -> None:
        with self._db.session() as session:
            state = session.get(TriggerStateRow, state_id)
            if state is not None and state.baseline_at is None:
                state.baseline_at = utcnow()

    # --- mail -------------------------------------------------------------------

    def known_keys(
        self, plan: TriggerPlan, *, folder: str, uidvalidity: int, among: Iterable[str] | None = None
    ) -> set[str]:
        """The keys of the mail the workflow took or skipped in the folder (of `among`, when given)."""
        query = select(TriggerMessageRow.message_key).where(
            TriggerMessageRow.workflow_id == plan.workflow_id,
            TriggerMessageRow.target_id == plan.target_id,
            TriggerMessageRow.folder == folder,
            TriggerMessageRow.uidvalidity == uidvalidity,
        )
        with self._db.session() as session:
            if among is None:
                return set(session.scalars(query).all())
            wanted, known = list(among), set[str]()
            for start in range(0, len(wanted), KEYS_PER_QUERY):
                chunk = wanted[start : start + KEYS_PER_QUERY]
                known.update(session.scalars(query.where(TriggerMessageRow.message_key.in_(chunk))).all())
            return known

    def forget_skipped(self, plan: TriggerPlan, *, folder: str, uidvalidity: int, keys: list[str]) -> None:
        """Forget mail recorded as skipped that left the folder: moved back in, it is new mail.

        Mail that started a run stays recorded: it never starts a second one.
        """
        with self._db.session() as session:
            for start in range(0, len(keys), KEYS_PER_QUERY):
                session.execute(
                    delete(TriggerMessageRow).where(
                        TriggerMessageRow.workflow_id == plan.workflow_id,
                        TriggerMessageRow.target_id == plan.target_id,
                        TriggerMessageRow.folder == folder,
                        TriggerMessageRow.uidvalidity == uidvalidity,
                        TriggerMessageRow.status == "skipped",
                        TriggerMessageRow.message_key.in_(keys[start : start + KEYS_PER_QUERY]),
                    )
                )

    def take(
        self,
        plan: TriggerPlan,
        *,
        folder: str,
        uidvalidity: int,
        message_key: str,
        message: dict[str, Any] | None,
        start: bool = True,
    ) -> str | None:
        """Record one mail and (when `start`) start its run; None when it was taken already or skipped."""
        taken = self.take_many(
            plan,
            folder=folder,
            uidvalidity=uidvalidity,
            mails=[Mail(key=message_key, message=message, start=start)],
        )
        return taken[0] if taken else None

    def take_many(
        self,
        plan: TriggerPlan,
        *,
        folder: str,
        uidvalidity: int,
        mails: list[Mail],
        last_uid: int | None = None,
        cursor: str | None = None,
    ) -> list[str]:
        """Record mail and start a run for each one to `start`, in one transaction (one commit per batch).

        Each mail is inserted under a savepoint: one taken already (by this or another
        worker) is refused by the unique key and left out, the others go on. The
        high-water mark moves to `last_uid` in the same transaction, and a mailbox's
        change `cursor` (with the folder's UIDVALIDITY) is kept, when given. Returns the run ids.
        """
        started: list[tuple[str, str]] = []
        with self._db.session() as session:
            document: WorkflowDocument | None = None
            for mail in mails:
                try:
                    with session.begin_nested():
                        row = self._mail_row(plan, folder, uidvalidity, mail)
                        session.add(row)
                        session.flush()  # the unique key is checked here, before any run exists
                except IntegrityError:
                    continue
                if mail.start and mail.message is not None:
                    document = document or _document(session, plan.workflow_id)
                    row.run_id = self._start(
                        session, plan, document, folder=folder, message=mail.message, attempt=1
                    )
                    started.append((mail.key, row.run_id))
            state = session.get(TriggerStateRow, plan.state_id)
            if state is not None:
                if started:
                    state.last_message_at = utcnow()
                if cursor is not None:
                    if state.uidvalidity != uidvalidity:
                        state.uidvalidity, state.last_uid = uidvalidity, None
                    state.change_cursor = cursor
                    state.baseline_at = state.baseline_at or utcnow()
                    state.updated_at = utcnow()
                if (
                    last_uid is not None
                    and state.uidvalidity == uidvalidity
                    and (state.last_uid or 0) < last_uid
                ):
                    state.last_uid = last_uid
        for key, run_id in started:
            self._runs.notify(run_id)
            log.info(
                "trigger %d of workflow %r: mail %s in %s started run %s",
                plan.position,
                plan.workflow_name,
                key,
                folder,
                run_id,
            )
        return [run_id for _, run_id in started]

    @staticmethod
    def _mail_row(plan: TriggerPlan, folder: str, uidvalidity: int, mail: Mail) -> TriggerMessageRow:
        message = mail.message or {}
        return TriggerMessageRow(
            workflow_id=plan.workflow_id,
            position=plan.position,
            target_id=plan.target_id,
            folder=folder,
            uidvalidity=uidvalidity,
            message_key=mail.key,
            uid=message.get("uid"),
            message_id=message.get("message_id") or None,
            subject=message.get("subject"),
            status="started" if mail.start else "skipped",
            attempts=1 if mail.start else 0,
        )

    def _start(
        self,
        session: Any,
        plan: TriggerPlan,
        document: WorkflowDocument,
        *,
        folder: str,
        message: dict[str, Any],
        attempt: int,
    ) -> str:
        trigger_context = {
            "type": "email",
            "target": plan.trigger.target,
            "folder": folder,
            "message": message,
            "attempt": attempt,
        }
        return self._runs.create_triggered(
            session,
            workflow_id=plan.workflow_id,
            document=document,
            inputs=dict(plan.trigger.inputs),
            trigger=trigger_context,
        )

    def outcomes(self, plan: TriggerPlan) -> list[Outcome]:
        """This trigger's taken mail whose runs have finished and that nobody has handled yet."""
        with self._db.session() as session:
            rows = session.execute(
                select(TriggerMessageRow, RunRow.status)
                .join(RunRow, RunRow.id == TriggerMessageRow.run_id)
                .where(
                    TriggerMessageRow.workflow_id == plan.workflow_id,
                    TriggerMessageRow.position == plan.position,
                    TriggerMessageRow.status == "started",
                    RunRow.status.in_(FINISHED),
                )
                .limit(200)
            ).all()
            return [
                Outcome(
                    message_row_id=m.id,
                    workflow_id=m.workflow_id,
                    position=m.position,
                    target_id=m.target_id,
                    folder=m.folder,
                    uidvalidity=m.uidvalidity,
                    uid=m.uid,
                    message_key=m.message_key,
                    run_id=m.run_id or "",
                    run_status=status,
                    attempts=m.attempts,
                )
                for m, status in rows
            ]

    def pending(self, plan: TriggerPlan) -> bool:
        """Whether this trigger has runs still out, or mail waiting for a retry."""
        with self._db.session() as session:
            found = session.scalars(
                select(TriggerMessageRow.id)
                .where(
                    TriggerMessageRow.workflow_id == plan.workflow_id,
                    TriggerMessageRow.position == plan.position,
                    TriggerMessageRow.status.in_(("started", "acting", "retrying")),
                )
                .limit(1)
            ).first()
            return found is not None

    def claim(self, message_row_id: str) -> bool:
        """Exactly one watcher handles a finished run's mail."""
        with self._db.session() as session:
            taken: int = session.execute(
                update(TriggerMessageRow)
                .where(TriggerMessageRow.id == message_row_id, TriggerMessageRow.status == "started")
                .values(status="acting", updated_at=utcnow())
            ).rowcount  # type: ignore[attr-defined]
            return taken == 1

    def settle(
        self,
        message_row_id: str,
        status: Literal["succeeded", "failed", "retrying", "started"],
        *,
        error: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        with self._db.session() as session:
            row = session.get(TriggerMessageRow, message_row_id)
            if row is None:
                return
            row.status, row.error, row.updated_at = status, error, utcnow()
            row.retry_at = utcnow() + timedelta(seconds=retry_after) if retry_after is not None else None

    def due_retries(self, plan: TriggerPlan) -> list[Retry]:
        with self._db.session() as session:
            rows = session.scalars(
                select(TriggerMessageRow).where(
                    and_(
                        TriggerMessageRow.workflow_id == plan.workflow_id,
                        TriggerMessageRow.position == plan.position,
                        TriggerMessageRow.status == "retrying",
                        TriggerMessageRow.retry_at <= utcnow(),
                    )
                )
            ).all()
            return [
                Retry(
                    message_row_id=r.id,
                    workflow_id=r.workflow_id,
                    position=r.position,
                    uid=r.uid,
                    message_key=r.message_key,
                    attempts=r.attempts,
                )
                for r in rows
            ]

    def restart(self, plan: TriggerPlan, retry: Retry, *, folder: str, message: dict[str, Any]) -> str | None:
        """A new run for a mail whose last run failed (exactly one watcher gets to do it)."""
        with self._db.session() as session:
            taken = session.execute(
                update(TriggerMessageRow)
                .where(TriggerMessageRow.id == retry.message_row_id, TriggerMessageRow.status == "retrying")
                .values(status="started", attempts=retry.attempts + 1, retry_at=None, updated_at=utcnow())
            ).rowcount  # type: ignore[attr-defined]
            if not taken:
                return None
            run_id = self._start(
                session,
                plan,
                _document(session, plan.workflow_id),
                folder=folder,
                message=message,
                attempt=retry.attempts + 1,
            )
            row = session.get(TriggerMessageRow, retry.message_row_id)
            assert row is not None
            row.run_id = run_id
        self._runs.notify(run_id)
        return run_id

    def messages(self, workflow: str, index: int | None = None, *, limit: int = 100) -> list[dict[str, Any]]:
        """The mail a workflow's triggers took, newest first."""
        with self._db.session() as session:
            row = find(session, WorkflowRow, workflow, what="workflow")
            query = select(TriggerMessageRow).where(TriggerMessageRow.workflow_id == row.id)
            if index is not None:
                query = query.where(TriggerMessageRow.position == index)
            found = session.scalars(query.order_by(TriggerMessageRow.created_at.desc()).limit(limit)).all()
            return [
                {
                    "trigger": m.position,
                    "folder": m.folder,
                    "uidvalidity": m.uidvalidity,
                    "uid": m.uid,
                    "key": m.message_key,
                    "message_id": m.message_id,
                    "subject": m.subject,
                    "status": m.status,
                    "run_id": m.run_id,
                    "attempts": m.attempts,
                    "error": m.error,
                    "created_at": m.created_at,
                }
                for m in found
            ]


def _pool(target: TargetRow) -> str | None:
    pool = (target.settings or {}).get("worker_pool")
    return pool if isinstance(pool, str) and pool else None
