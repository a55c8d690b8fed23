"""The tables. Names are unique case-insensitively through a `name_key` column (casefolded)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Dialect, ForeignKey, String, Text, TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from mailwright.domain.runs import RunStatus, StepStatus


def new_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


def name_key(name: str) -> str:
    return name.strip().casefold()


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps in UTC, aware on the way out on every backend (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime}  # noqa: RUF012


class AccountKeyRow(Base):
    __tablename__ = "account_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    name_key: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(50), default="email_credentials")
    description: Mapped[str] = mapped_column(Text, default="")
    username: Mapped[str] = mapped_column(String(320))
    password_encrypted: Mapped[str] = mapped_column(Text)
    sender: Mapped[str | None] = mapped_column(String(320), nullable=True)
    # The plain fields of the key's type; its other secrets (encrypted JSON); an OAuth2 token cache.
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    secrets_encrypted: Mapped[str] = mapped_column(Text, default="")
    token_cache_encrypted: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class TargetRow(Base):
    __tablename__ = "targets"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    display_name: Mapped[str] = mapped_column(String(200))
    name_key: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    type: Mapped[str] = mapped_column(String(50))
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    no_account_keys: Mapped[bool] = mapped_column(Boolean, default=False)
    account_key_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("account_keys.id", ondelete="RESTRICT"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_test_ok: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    last_test_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_test_summary: Mapped[str | None] = mapped_column(Text, nullable=True)

    account_key: Mapped[AccountKeyRow | None] = relationship(lazy="joined")


class ApiTokenRow(Base):
    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    name_key: Mapped[str] = mapped_column(String(200), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    # admin, operator or viewer (domain/roles.py); tokens from before roles existed are admins.
    role: Mapped[str] = mapped_column(String(20), default="admin", server_default="admin")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)


class AppSettingRow(Base):
    """Small instance-wide values, e.g. the web admin's password hash."""

    __tablename__ = "app_settings"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebSessionRow(Base):
    """A signed-in browser. The cookie holds a random token; only its hash is stored."""

    __tablename__ = "web_sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    # Who signed in: the admin password (token_name NULL, role admin) or an API token (its role).
    role: Mapped[str] = mapped_column(String(20), default="admin", server_default="admin")
    token_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)


class WorkflowRow(Base):
    __tablename__ = "workflows"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    name_key: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The document as the user wrote it (comments, key order); None for one stored before 0014.
    source: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class RunRow(Base):
    """One execution of a workflow (or of a single Send Email). The row is the truth, not the queue."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    workflow_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("workflows.id", ondelete="SET NULL"), nullable=True
    )
    workflow_name: Mapped[str] = mapped_column(String(200))
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20), default=RunStatus.QUEUED.value)
    inputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    target: Mapped[str | None] = mapped_column(String(200), nullable=True)
    account_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    not_before: Mapped[datetime | None] = mapped_column(nullable=True)
    lease_owner: Mapped[str | None] = mapped_column(String(100), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # The fencing token: every claim bumps it, and every write of the run's or its steps' state is
    # conditioned on it, so a worker that lost its lease (paused, partitioned) cannot write.
    lease_epoch: Mapped[int] = mapped_column(default=0, server_default="0")
    dispatched_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # The mail that started the run (an email trigger): {"message": ..., "target": ..., "folder": ...}.
    trigger: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # The worker pool that may execute it (its target's `worker_pool`); None: any worker without one.
    pool: Mapped[str | None] = mapped_column(String(100), nullable=True)


class RunStepRow(Base):
    """One step of a run (one row per for_each item). Send steps carry their delivery state."""

    __tablename__ = "run_steps"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    run_id: Mapped[str] = mapped_column(String(36), ForeignKey("runs.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column()
    step_id: Mapped[str] = mapped_column(String(100))
    item_index: Mapped[int | None] = mapped_column(nullable=True)
    activity: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20), default=StepStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int] = mapped_column(default=4)
    inputs: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    output: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    message_id: Mapped[str | None] = mapped_column(String(300), nullable=True)
    send_state: Mapped[str | None] = mapped_column(String(20), nullable=True)
    notes: Mapped[list[str]] = mapped_column(JSON, default=list)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class BatchRangeRow(Base):
    """A span of a batch's messages (item indexes `first_index` to `end_index`, exclusive) that one
    worker sends at a time, under a lease of its own: a batch is spread over every worker that can
    take a range, not only over the one that claimed the run (ledger/ranges.py).

    `status`: open (messages may remain), done (its holder sent it through), closed (the run ended).
    `not_before`: a helper that was held back (a rate limit) leaves the range to the run's
    coordinator until then. `lease_epoch` only ever grows: it fences the holder's writes as the
    run's epoch fences the run's.
    """

    __tablename__ = "batch_ranges"

    run_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    range_no: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    first_index: Mapped[int] = mapped_column()
    end_index: Mapped[int] = mapped_column()
    status: Mapped[str] = mapped_column(String(20), default="open")
    lease_owner: Mapped[str | None] = mapped_column(String(100), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(nullable=True)
    lease_epoch: Mapped[int] = mapped_column(default=0, server_default="0")
    not_before: Mapped[datetime | None] = mapped_column(nullable=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class IdempotencyKeyRow(Base):
    """A client's Idempotency-Key: a retried request with the same key and body gets the same run."""

    __tablename__ = "idempotency_keys"

    scope: Mapped[str] = mapped_column(String(100), primary_key=True)  # e.g. "send-email"
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))  # SHA-256 of the canonical request
    run_id: Mapped[str] = mapped_column(String(36), ForeignKey("runs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class StepInputRow(Base):
    """A batch message's fields, kept apart from its step row.

    The step row is rewritten twice per message (marked sending, then its result).
    On SQLite an update rewrites the whole row, so a 4 KB message inside it was
    written three times over (and each time again at the checkpoint); here it is
    written once. `run_steps.inputs` is NULL for such steps; a batch stored by an
    older version keeps its fields there, and readers take whichever is set.
    """

    __tablename__ = "step_inputs"

    step_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("run_steps.id", ondelete="CASCADE"), primary_key=True
    )
    inputs: Mapped[dict[str, Any]] = mapped_column(JSON)


class ScheduleStateRow(Base):
    """Where a workflow's cron schedule stands: next fire time, last fire, missed fires."""

    __tablename__ = "schedule_states"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    workflow_id: Mapped[str] = mapped_column(String(36), ForeignKey("workflows.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column()
    cron: Mapped[str] = mapped_column(String(200))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    next_fire_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_fired_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_run_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    missed_count: Mapped[int] = mapped_column(default=0)
    last_missed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class TriggerStateRow(Base):
    """Where a workflow's email trigger stands: its folder's UIDVALIDITY and the last UID seen, or,
    on a mailbox that reports changes (Graph), the cursor of its last look (a delta link)."""

    __tablename__ = "trigger_states"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    workflow_id: Mapped[str] = mapped_column(String(36), ForeignKey("workflows.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column()
    target_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    folder: Mapped[str] = mapped_column(String(500))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    status: Mapped[str] = mapped_column(String(20), default="starting")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    uidvalidity: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_uid: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    change_cursor: Mapped[str | None] = mapped_column(Text, nullable=True)
    baseline_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_checked_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_message_at: Mapped[datetime | None] = mapped_column(nullable=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class TriggerMessageRow(Base):
    """One mail an email trigger took. The unique key is what makes it one run per mail."""

    __tablename__ = "trigger_messages"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    workflow_id: Mapped[str] = mapped_column(String(36), ForeignKey("workflows.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column()
    target_id: Mapped[str] = mapped_column(String(36))
    folder: Mapped[str] = mapped_column(String(500))
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    # IMAP: the UID; POP3: the UIDL and the Message-ID (servers may reuse a UIDL).
    message_key: Mapped[str] = mapped_column(String(500))
    uid: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    message_id: Mapped[str | None] = mapped_column(String(998), nullable=True)
    subject: Mapped[str | None] = mapped_column(Text, nullable=True)
    # started → succeeded (after-success done) | failed | retrying; skipped: conditions not met
    status: Mapped[str] = mapped_column(String(20))
    run_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    attempts: Mapped[int] = mapped_column(default=0)
    retry_at: Mapped[datetime | None] = mapped_column(nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEntryRow(Base):
    """Who created, changed or deleted which target, account key, workflow, trigger or token.

    Written by the services in the transaction of the change itself. `fields` lists the
    names of the fields a change touched, never their values (a password is a field name).
    """

    __tablename__ = "audit_log"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    face: Mapped[str] = mapped_column(String(20))  # api, web, cli, system
    actor_type: Mapped[str] = mapped_column(String(20))  # token, user, local, system
    actor: Mapped[str] = mapped_column(String(200))  # token name, web user, OS user
    action: Mapped[str] = mapped_column(String(20))  # create, update, delete, revoke
    object_type: Mapped[str] = mapped_column(String(30))  # target, account_key, workflow, trigger, token
    object_id: Mapped[str] = mapped_column(String(36))
    object_name: Mapped[str] = mapped_column(String(300))
    fields: Mapped[list[str]] = mapped_column(JSON, default=list)


class WorkerRow(Base):
    """A running worker process, kept fresh by its heartbeat; a stale row is a dead worker."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column()
    pool: Mapped[str | None] = mapped_column(String(100), nullable=True)
    concurrency: Mapped[int] = mapped_column()
    broker: Mapped[str] = mapped_column(String(20))
    runs_in_hand: Mapped[int] = mapped_column(default=0, server_default="0")
    started_at: Mapped[datetime] = mapped_column()
    heartbeat_at: Mapped[datetime] = mapped_column()


class DeliveryHourRow(Base):
    """Send steps of one hour and one target (as the runs name it; "" for none), counted once the
    hour is over (services/stats.py), so the dashboard never counts a month of steps again."""

    __tablename__ = "delivery_hours"

    hour: Mapped[datetime] = mapped_column(primary_key=True)
    target: Mapped[str] = mapped_column(String(200), primary_key=True)
    sent: Mapped[int] = mapped_column()
    failed: Mapped[int] = mapped_column()
    deferred: Mapped[int] = mapped_column()
    rate_limited: Mapped[int] = mapped_column(default=0, server_default="0")


class DeliveryFailureRow(Base):
    """Failed send steps of one hour and target by error class (`code`) and SMTP reply code (0: none)."""

    __tablename__ = "delivery_failures"

    hour: Mapped[datetime] = mapped_column(primary_key=True)
    target: Mapped[str] = mapped_column(String(200), primary_key=True)
    code: Mapped[str] = mapped_column(String(100), primary_key=True)
    smtp_code: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    count: Mapped[int] = mapped_column()
    example: Mapped[str] = mapped_column(Text, default="")
