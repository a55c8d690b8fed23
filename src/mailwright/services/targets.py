"""Targets: create, list, show, update, delete, and test the connection."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from mailwright.domain.capabilities import Mailbox, MailSender
from mailwright.domain.connection_test import ConnectionTestReport
from mailwright.errors import ConflictError, ValidationError
from mailwright.plugins import (
    TargetType,
    account_key_type,
    labels_of,
    target_type,
    target_types,
)
from mailwright.services import audit
from mailwright.services.account_keys import NAME_SCHEMA, AccountKeyService
from mailwright.services.common import clean_name, find
from mailwright.services.ratelimit import RateLimiter
from mailwright.services.shared_limits import limits_for
from mailwright.services.target_public import TargetPublic, public_target
from mailwright.storage.db import Database
from mailwright.storage.tables import AccountKeyRow, AppSettingRow, TargetRow, WorkflowRow, name_key, utcnow
from mailwright.targets import smtp as capture
from mailwright.transport.base import Login

_SANDBOX_FLAG = "sandbox_target_created"


class _TargetFields(BaseModel):
    """What every target has; the settings of its type come as further fields (`model_extra`)."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "description": "Also the settings of the target's type (server, port, security… for SMTP, "
            "IMAP and POP3): GET /api/v1/target-types lists the types."
        },
    )

    description: str | None = None
    account_key: str | None = Field(default=None, description="default account key, by name or id")
    no_account_keys: bool | None = Field(default=None, description="True for open relays")

    def settings_values(self) -> dict[str, Any]:
        """The settings given (None is "leave it as it is" in an update); the type validates them."""
        return {k: v for k, v in (self.model_extra or {}).items() if v is not None}


class TargetCreate(_TargetFields):
    display_name: str = Field(json_schema_extra=NAME_SCHEMA)
    type: str = Field(default="smtp", description="target type: smtp, imap, pop3, or a plugin's")
    preset: str | None = Field(default=None, description="gmail, outlook, yahoo, icloud, fastmail, zoho")


class TargetUpdate(_TargetFields):
    display_name: str | None = Field(default=None, json_schema_extra=NAME_SCHEMA)


@dataclass(frozen=True, slots=True)
class ResolvedTarget:
    """A target ready to connect: settings, the decrypted login of its account key, its capabilities."""

    target: TargetPublic
    settings: BaseModel
    login: Login | None
    sender: str | None  # the account key's default From

    @property
    def kind(self) -> TargetType:
        return target_type(self.target.type)

    @property
    def pool(self) -> str | None:
        """The worker pool whose workers alone may use this target (None: workers without a pool)."""
        pool = getattr(self.settings, "worker_pool", None)
        return pool if isinstance(pool, str) and pool else None

    def mail_sender(self, purpose: str) -> MailSender:
        """The target's sender, or a clear error naming the types that can send."""
        factory = self.kind.sender
        if factory is None:
            raise self._cannot(purpose, [t for t in target_types() if t.sender is not None])
        return factory(
            self.settings, target_id=self.target.id, target_name=self.target.display_name, login=self.login
        )

    def mailbox(self, purpose: str, *, folders: bool | None = None) -> AbstractAsyncContextManager[Mailbox]:
        """The target's mailbox, opened and logged in when entered.

        `folders`: True when the caller needs folders and UIDs (IMAP), False for one drop
        of numbered messages (POP3), None for either.
        """
        kind = self.kind
        if kind.mailbox is None or folders not in (None, kind.mailbox_folders):
            fitting = [
                t for t in target_types() if t.mailbox is not None and folders in (None, t.mailbox_folders)
            ]
            raise self._cannot(purpose, fitting)
        return kind.mailbox(self.settings, target_name=self.target.display_name, login=self.login)

    def has_folders(self) -> bool:
        """Whether its mailbox has folders and UIDs (IMAP), rather than one drop of messages (POP3)."""
        return self.kind.mailbox_folders

    def poll_seconds(self) -> float | None:
        """How often to look for new mail when the mailbox cannot say (None: the type does not say)."""
        poll = self.kind.poll_seconds
        return poll(self.settings) if poll is not None else None

    def _cannot(self, purpose: str, fitting: list[TargetType]) -> ValidationError:
        wanted = labels_of(fitting) if fitting else "another kind of target"
        return ValidationError(
            f"target {self.target.display_name!r} is an {self.target.type_label}; {purpose} needs {wanted}",
            field="target",
        )


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
    def __init__(
        self, db: Database, account_keys: AccountKeyService, *, redis_url: str | None = None
    ) -> None:
        self._db = db
        self._keys = account_keys
        # One limiter per process: every run sending through a target shares its budget; with
        # Redis (MAILWRIGHT_REDIS_URL) every worker shares it, and the connection cap too.
        self.rate_limits: RateLimiter
        self.rate_limits, self._shared = limits_for(db, redis_url=redis_url)
        # (ref, account key ref) -> the last resolution and the rows' stamp it was made from.
        self._resolved: dict[tuple[str, str | None], _Resolved] = {}

    def close(self) -> None:
        """Let go of Redis (the shared limits), if they were made."""
        if self._shared is not None:
            self._shared.close()

    def create(self, data: TargetCreate) -> TargetPublic:
        kind = target_type(data.type)
        name = clean_name(data.display_name, field="display_name", what="target")
        preset = kind.preset(data.preset) if data.preset else None
        settings = kind.settings_from_input(data.settings_values(), preset)
        with self._db.session() as session:
            self._check_unique(session, name)
            key = self._account_key(session, kind, data.account_key, bool(data.no_account_keys))
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
                key = self._account_key(session, target_type(row.type), data.account_key, wants_none)
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
                _check_key_type(target_type(row.type), key_row)
            kind = target_type(row.type)
            settings = kind.settings_model.model_validate(row.settings)
            hints = kind.login_hints(settings) if kind.login_hints else {}
            resolved = ResolvedTarget(
                target=_public(row),
                settings=settings,
                login=self._keys.login_for_row(key_row, hints) if key_row is not None else None,
                sender=(key_row.sender if key_row is not None else None)
                or (kind.default_sender(settings) if kind.default_sender else None),
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
                row = TargetRow(
                    display_name=name,
                    name_key=name_key(name),
                    description="Captures mail instead of delivering it: see the Sandbox mailbox.",
                    type=capture.SMTP_ENDPOINT.name,
                    settings=capture.capture_settings(port),
                    no_account_keys=True,
                    account_key_id=None,
                )
                session.add(row)
                session.add(AppSettingRow(key=_SANDBOX_FLAG, value="1"))
            elif row.type == capture.SMTP_ENDPOINT.name and (
                moved := capture.moved_capture(row.settings, port)
            ):
                row.settings = moved
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
    def _account_key(
        session: Session, kind: TargetType, ref: str | None, no_account_keys: bool
    ) -> AccountKeyRow | None:
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
        key = find(session, AccountKeyRow, ref, what="account key")
        _check_key_type(kind, key)
        return key


def _check_key_type(kind: TargetType, key: AccountKeyRow) -> None:
    """A target logs in only with the kinds of key its type accepts (Graph: Graph credentials)."""
    if key.kind in kind.account_key_types:
        return
    accepted = [account_key_type(name).label for name in kind.account_key_types]
    raise ValidationError(
        f"account key {key.name!r} is {account_key_type(key.kind).label}; "
        f"{kind.label} targets accept {' or '.join(accepted)} keys",
        field="account_key",
        hint="choose a key of an accepted type, or create one",
    )


def _workflows_naming(session: Session, target_name: str) -> list[str]:
    # Imported here: workflow documents bring the expression sandbox (Jinja), which only a
    # deletion needs; listing or showing targets starts without it.
    from mailwright.domain.workflows import WorkflowDocument, references

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
    return public_target(row, account_key_name=row.account_key.name if row.account_key else None)
