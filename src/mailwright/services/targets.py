"""Targets: create, list, show, update, delete, and test the connection."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from mailwright.domain.smtp import Security
from mailwright.domain.workflows import WorkflowDocument, references
from mailwright.errors import ConflictError, ValidationError
from mailwright.plugins import target_type
from mailwright.services import audit
from mailwright.services.account_keys import NAME_SCHEMA, AccountKeyService
from mailwright.services.common import clean_name, find
from mailwright.services.ratelimit import limiter_for
from mailwright.storage.db import Database
from mailwright.storage.tables import AccountKeyRow, AppSettingRow, TargetRow, WorkflowRow, name_key, utcnow
from mailwright.targets.report import ConnectionTestReport
from mailwright.targets.smtp import SMTPSettings
from mailwright.transport.smtp import Login

_SANDBOX_FLAG = "sandbox_target_created"

# Fields of the SMTP settings a create or update may carry.
_SETTING_FIELDS = (
    "server",
    "port",
    "security",
    "starttls_required",
    "ca_file",
    "disable_certificate_validation",
    "ehlo_name",
    "connect_timeout",
    "command_timeout",
    "data_timeout",
    "polling_interval",
    "rate_per_second",
    "rate_per_minute",
    "rate_per_day",
    "max_connections",
    "max_messages_per_connection",
    "idle_timeout",
)


class _TargetFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str | None = None
    server: str | None = Field(default=None, description="SMTP server host name, IDN or IP")
    port: int | None = Field(default=None, ge=1, le=65535)
    security: Security | None = Field(default=None, description="ssl, starttls or none")
    starttls_required: bool | None = None
    ca_file: str | None = None
    disable_certificate_validation: bool | None = None
    ehlo_name: str | None = None
    connect_timeout: float | None = Field(default=None, gt=0, le=300)
    command_timeout: float | None = Field(default=None, gt=0, le=3600)
    data_timeout: float | None = Field(
        default=None, gt=0, le=3600, description="SMTP: seconds to wait for the reply to the end of data"
    )
    polling_interval: float | None = Field(default=None, ge=5, le=86_400, description="IMAP/POP3: seconds")
    rate_per_second: int | None = Field(default=None, ge=0, description="SMTP: messages/second; 0: no limit")
    rate_per_minute: int | None = Field(default=None, ge=0, description="SMTP: messages/minute; 0: no limit")
    rate_per_day: int | None = Field(default=None, ge=0, description="SMTP: messages/day (UTC); 0: no limit")
    max_connections: int | None = Field(default=None, ge=1, le=256, description="SMTP: pooled connections")
    max_messages_per_connection: int | None = Field(
        default=None, ge=1, le=100_000, description="SMTP: messages before a connection is replaced"
    )
    idle_timeout: float | None = Field(default=None, gt=0, le=3600, description="SMTP: seconds idle")
    account_key: str | None = Field(default=None, description="default account key, by name or id")
    no_account_keys: bool | None = Field(default=None, description="True for open relays")

    def settings_values(self) -> dict[str, Any]:
        values = {f: getattr(self, f) for f in _SETTING_FIELDS if getattr(self, f) is not None}
        # A rate limit of 0 removes the limit (None is "leave it as it is" in an update).
        return {k: None if k.startswith("rate_per_") and v == 0 else v for k, v in values.items()}


class TargetCreate(_TargetFields):
    display_name: str = Field(json_schema_extra=NAME_SCHEMA)
    type: str = Field(default="smtp", description="target type: smtp, imap or pop3")
    preset: str | None = Field(default=None, description="gmail, outlook, yahoo, icloud, fastmail, zoho")


class TargetUpdate(_TargetFields):
    display_name: str | None = Field(default=None, json_schema_extra=NAME_SCHEMA)


class LastTest(BaseModel):
    ok: bool
    at: datetime
    summary: str


class TargetPublic(BaseModel):
    id: str
    display_name: str
    description: str
    type: str
    type_label: str
    protocol: str
    server: str
    port: int
    security: Security
    ca_file: str | None
    disable_certificate_validation: bool
    connect_timeout: float
    command_timeout: float
    # Settings only some target types have: SMTP (starttls_required, ehlo_name), mailbox
    # readers (polling_interval).
    starttls_required: bool = True
    ehlo_name: str | None = None
    polling_interval: float | None = None
    data_timeout: float | None = None
    rate_per_second: int | None = None
    rate_per_minute: int | None = None
    rate_per_day: int | None = None
    max_connections: int | None = None
    max_messages_per_connection: int | None = None
    idle_timeout: float | None = None
    no_account_keys: bool
    account_key: str | None
    account_key_id: str | None
    last_test: LastTest | None
    created_at: datetime
    updated_at: datetime

    def rate_limits_text(self) -> str | None:
        """The rate limits in words, as the CLI and the web show them (None: the type has none)."""
        if self.protocol != "SMTP":
            return None
        pairs = (
            (self.rate_per_second, "second"),
            (self.rate_per_minute, "minute"),
            (self.rate_per_day, "day"),
        )
        limits = [
            f"{value:,} message{'s' if value != 1 else ''} per {unit}" for value, unit in pairs if value
        ]
        return ", ".join(limits) or "no limit"

    def pool_text(self) -> str | None:
        """The connection pool's settings in words (None: the type has no pool)."""
        if self.max_connections is None:
            return None
        parts = [f"up to {self.max_connections} connection{'s' if self.max_connections != 1 else ''}"]
        if self.max_messages_per_connection is not None:
            parts.append(f"{self.max_messages_per_connection:,} messages each")
        if self.idle_timeout is not None:
            parts.append(f"closed after {self.idle_timeout:g} s idle")
        return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class ResolvedTarget:
    """A target ready to connect: settings and the decrypted login of its account key."""

    target: TargetPublic
    settings: BaseModel
    login: Login | None
    sender: str | None

    def smtp(self) -> SMTPSettings:
        """The SMTP settings, or a clear error when the target is of another type."""
        if not isinstance(self.settings, SMTPSettings):
            raise ValidationError(
                f"target {self.target.display_name!r} is an {self.target.type_label}; sending mail needs an "
                "SMTP Endpoint target",
                field="target",
            )
        return self.settings


@dataclass(frozen=True, slots=True)
class _Resolved:
    target_id: str
    key_id: str | None
    stamp: tuple[Any, Any]  # the target's and the key's updated_at when resolved
    resolved: ResolvedTarget


_RESOLVED_KEPT = 1024
# The target's and its key's updated_at: when neither changed, a kept resolution still holds.
_STAMP = (
    select(TargetRow.updated_at, AccountKeyRow.updated_at)
    .select_from(TargetRow)
    .outerjoin(AccountKeyRow, AccountKeyRow.id == bindparam("key_id"))
    .where(TargetRow.id == bindparam("target_id"))
)


class TargetService:
    def __init__(self, db: Database, account_keys: AccountKeyService) -> None:
        self._db = db
        self._keys = account_keys
        # One limiter per process: every run sending through a target shares its budget.
        self.rate_limits = limiter_for(db)
        # (ref, account key ref) -> the last resolution and the rows' stamp it was made from.
        self._resolved: dict[tuple[str, str | None], _Resolved] = {}

    def create(self, data: TargetCreate) -> TargetPublic:
        kind = target_type(data.type)
        name = clean_name(data.display_name, field="display_name", what="target")
        preset = kind.preset(data.preset) if data.preset else None
        settings = kind.settings_from_input(data.settings_values(), preset)
        with self._db.session() as session:
            self._check_unique(session, name)
            key = self._account_key(session, data.account_key, bool(data.no_account_keys))
            row = TargetRow(
                display_name=name,
                name_key=name_key(name),
                description=(data.description or "").strip(),
                type=kind.name,
                settings=settings.model_dump(mode="json"),
                no_account_keys=key is None,
                account_key_id=key.id if key else None,
            )
            session.add(row)
            session.flush()
            audit.record(
                session,
                action=audit.AuditAction.CREATE,
                object_type=audit.ObjectType.TARGET,
                object_id=row.id,
                object_name=row.display_name,
            )
            return _public(row)

    def update(self, ref: str, data: TargetUpdate) -> TargetPublic:
        with self._db.session() as session:
            row = find(session, TargetRow, ref, what="target")
            before = _audited(row)
            if data.display_name is not None:
                name = clean_name(data.display_name, field="display_name", what="target")
                if name_key(name) != row.name_key:
                    self._check_unique(session, name)
                row.display_name, row.name_key = name, name_key(name)
            if data.description is not None:
                row.description = data.description.strip()
            changes = data.settings_values()
            if changes:
                # Only what is given changes: a new port keeps the security mode,
                # and an impossible pair (ssl on 587) is refused, never downgraded.
                merged = {**row.settings, **changes}
                row.settings = target_type(row.type).settings_from_input(merged, None).model_dump(mode="json")
            if data.account_key is not None or data.no_account_keys is not None:
                wants_none = bool(data.no_account_keys) and data.account_key is None
                key = self._account_key(session, data.account_key, wants_none)
                row.account_key_id = key.id if key else None
                row.no_account_keys = key is None
                row.account_key = key
            row.updated_at = utcnow()
            audit.record(
                session,
                action=audit.AuditAction.UPDATE,
                object_type=audit.ObjectType.TARGET,
                object_id=row.id,
                object_name=row.display_name,
                fields=audit.changed(before, _audited(row)),
            )
            return _public(row)

    def get(self, ref: str) -> TargetPublic:
        with self._db.session() as session:
            return _public(find(session, TargetRow, ref, what="target"))

    def list_all(self) -> list[TargetPublic]:
        with self._db.session() as session:
            rows = session.scalars(select(TargetRow).order_by(TargetRow.name_key)).unique().all()
            return [_public(row) for row in rows]

    def delete(self, ref: str) -> None:
        with self._db.session() as session:
            row = find(session, TargetRow, ref, what="target")
            users = _workflows_naming(session, row.display_name)
            if users:
                raise ConflictError(
                    f"target {row.display_name!r} is used by workflow{'s' if len(users) > 1 else ''} "
                    f"{', '.join(repr(u) for u in users)}",
                    hint="point those workflows at another target first",
                )
            session.delete(row)
            audit.record(
                session,
                action=audit.AuditAction.DELETE,
                object_type=audit.ObjectType.TARGET,
                object_id=row.id,
                object_name=row.display_name,
            )

    async def test(self, ref: str) -> ConnectionTestReport:
        resolved = self.resolve(ref)
        kind = target_type(resolved.target.type)
        report = await kind.run_test(
            resolved.settings, target_name=resolved.target.display_name, login=resolved.login
        )
        with self._db.session() as session:
            row = find(session, TargetRow, resolved.target.id, what="target")
            row.last_test_ok = report.ok
            row.last_test_at = utcnow()
            row.last_test_summary = report.summary
        return report

    def resolve(self, ref: str, *, account_key: str | None = None) -> ResolvedTarget:
        """The target, its settings and the Login to use (its default key, or an override).

        Every send resolves its target twice (the API's check, then the step), and reading
        the rows, validating the settings and decrypting the key cost more than the rest of
        the request's database work. So the result is kept, and used again while one
        statement finds the target's and the key's `updated_at` unchanged (every change of
        either sets it, in this process or another; a rename or a deletion changes or
        removes the row the stamp is read from).
        """
        cached = self._resolved.get((ref, account_key))
        if cached is not None and self._stamp(cached.target_id, cached.key_id) == cached.stamp:
            return cached.resolved
        with self._db.session() as session:
            row = find(session, TargetRow, ref, what="target")
            key_row: AccountKeyRow | None = row.account_key
            if account_key is not None:
                key_row = find(session, AccountKeyRow, account_key, what="account key")
            resolved = ResolvedTarget(
                target=_public(row),
                settings=target_type(row.type).settings_model.model_validate(row.settings),
                login=self._keys.login_for_row(key_row) if key_row is not None else None,
                sender=key_row.sender if key_row is not None else None,
            )
            stamp = (row.updated_at, key_row.updated_at if key_row is not None else None)
            key_id = key_row.id if key_row is not None else None
        if len(self._resolved) >= _RESOLVED_KEPT:
            self._resolved.clear()  # many refs in use: start again rather than grow
        self._resolved[(ref, account_key)] = _Resolved(row.id, key_id, stamp, resolved)
        return resolved

    def _stamp(self, target_id: str, key_id: str | None) -> tuple[Any, Any] | None:
        with self._db.engine.connect() as connection:
            found = connection.execute(_STAMP, {"target_id": target_id, "key_id": key_id}).first()
        return None if found is None else (found[0], found[1])

    def ensure_sandbox_target(self, *, name: str, port: int) -> TargetPublic | None:
        """On first start, a target pointing at the capture server; afterwards keep its port current.

        A user who deleted it does not get it back: the first creation is remembered.
        """
        with self._db.session() as session:
            row = session.scalars(select(TargetRow).where(TargetRow.name_key == name_key(name))).first()
            created_before = session.get(AppSettingRow, _SANDBOX_FLAG) is not None
            if row is None and created_before:
                return None
            if row is None:
                settings = target_type("smtp").settings_from_input(
                    {"server": "127.0.0.1", "port": port, "security": "none"}, None
                )
                row = TargetRow(
                    display_name=name,
                    name_key=name_key(name),
                    description="Captures mail instead of delivering it: see the Sandbox mailbox.",
                    type="smtp",
                    settings=settings.model_dump(mode="json"),
                    no_account_keys=True,
                    account_key_id=None,
                )
                session.add(row)
                session.add(AppSettingRow(key=_SANDBOX_FLAG, value="1"))
            elif row.settings.get("server") == "127.0.0.1" and row.settings.get("port") != port:
                row.settings = {**row.settings, "port": port}
                row.updated_at = utcnow()
            session.flush()
            return _public(row)

    @staticmethod
    def _check_unique(session: Session, name: str) -> None:
        clash = session.scalars(select(TargetRow).where(TargetRow.name_key == name_key(name))).first()
        if clash is not None:
            raise ConflictError(
                f"a target named {clash.display_name!r} already exists (display names are "
                "unique, ignoring case)",
                field="display_name",
                hint="choose another display name",
            )

    @staticmethod
    def _account_key(session: Session, ref: str | None, no_account_keys: bool) -> AccountKeyRow | None:
        if ref and no_account_keys:
            raise ValidationError(
                "choose either a default account key or No Account Keys, not both",
                field="account_key",
            )
        if not ref and not no_account_keys:
            raise ValidationError(
                "choose a default account key, or No Account Keys for an open relay",
                field="account_key",
                hint="--account-key NAME or --no-account-keys",
            )
        if not ref:
            return None
        return find(session, AccountKeyRow, ref, what="account key")


def _workflows_naming(session: Session, target_name: str) -> list[str]:
    key = name_key(target_name)
    users = []
    for row in session.scalars(select(WorkflowRow).order_by(WorkflowRow.name_key)).all():
        named = references(WorkflowDocument.model_validate(row.document)).get("targets", set())
        if key in {name_key(n) for n in named}:
            users.append(row.name)
    return users


def _audited(row: TargetRow) -> dict[str, Any]:
    """The target's fields as the audit log compares them (a target holds no secret)."""
    return {
        "display_name": row.display_name,
        "description": row.description,
        "account_key": row.account_key_id,
        "no_account_keys": row.no_account_keys,
        **row.settings,
    }


def _public(row: TargetRow) -> TargetPublic:
    kind = target_type(row.type)
    settings = kind.settings_model.model_validate(row.settings)
    last = None
    if row.last_test_at is not None and row.last_test_ok is not None:
        last = LastTest(ok=row.last_test_ok, at=row.last_test_at, summary=row.last_test_summary or "")
    return TargetPublic(
        id=row.id,
        display_name=row.display_name,
        description=row.description,
        type=kind.name,
        type_label=kind.label,
        protocol=kind.protocol,
        **settings.model_dump(),
        no_account_keys=row.no_account_keys,
        account_key=row.account_key.name if row.account_key else None,
        account_key_id=row.account_key_id,
        last_test=last,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )
