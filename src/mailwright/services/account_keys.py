"""Email Credentials account keys: stored apart from targets, reused by many."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from mailwright.domain.addresses import parse_address
from mailwright.errors import ConflictError, ValidationError
from mailwright.secrets import MASK, Secret, SecretBox, stored_key_id
from mailwright.services import audit
from mailwright.services.common import clean_name, find
from mailwright.storage.db import Database
from mailwright.storage.tables import AccountKeyRow, TargetRow, name_key, utcnow
from mailwright.transport.base import Login

KIND = "email_credentials"

# What `clean_name` accepts, for the OpenAPI document (it checks, with messages that say what to fix):
# 1 to 200 characters, not only white space, no control characters.
NAME_SCHEMA: dict[str, Any] = {
    "minLength": 1,
    "maxLength": 200,
    "pattern": r"^[^\x00-\x1f]*[^\s\x00-\x1f][^\x00-\x1f]*$",
}


class AccountKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="unique name, e.g. 'alice-gmail'", json_schema_extra=NAME_SCHEMA)
    username: str = Field(min_length=1, max_length=320, description="mailbox username")
    password: Secret = Field(
        description="mailbox password or app password (write-only)", json_schema_extra={"minLength": 1}
    )
    sender: str | None = Field(default=None, description="default From address")
    description: str = ""


class AccountKeyUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, json_schema_extra=NAME_SCHEMA)
    username: str | None = Field(default=None, min_length=1, max_length=320)
    password: Secret | None = Field(default=None, description="blank keeps the stored one")
    sender: str | None = Field(default=None, description="empty string clears it")
    description: str | None = None


class AccountKeyPublic(BaseModel):
    """An account key as the API and CLI show it: the password is always ********."""

    id: str
    name: str
    type: str = KIND
    description: str
    username: str
    password: str = MASK
    sender: str | None
    used_by: list[str]
    created_at: datetime
    updated_at: datetime


def _check_sender(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    return str(parse_address(value, field="sender"))


def _context(row_id: str) -> str:
    # Binds the ciphertext to its row: copied elsewhere, it does not decrypt.
    return f"account-key:{row_id}:password"


def _audited(row: AccountKeyRow) -> dict[str, Any]:
    """The fields the audit log compares: not the password (an update names it when it is given)."""
    return {"name": row.name, "username": row.username, "sender": row.sender, "description": row.description}


def _record(
    session: Any, action: audit.AuditAction, row: AccountKeyRow, fields: list[str] | None = None
) -> None:
    audit.record(
        session,
        action=action,
        object_type=audit.ObjectType.ACCOUNT_KEY,
        object_id=row.id,
        object_name=row.name,
        fields=fields,
    )


class AccountKeyService:
    def __init__(self, db: Database, box: SecretBox) -> None:
        self._db = db
        self._box = box

    @property
    def box(self) -> SecretBox:
        """The key ring the secrets are encrypted with."""
        return self._box

    def create(self, data: AccountKeyCreate) -> AccountKeyPublic:
        name = clean_name(data.name, field="name", what="account key")
        if not data.password:
            raise ValidationError("the password is empty", field="password")
        sender = _check_sender(data.sender)
        with self._db.session() as session:
            self._check_unique(session, name)
            row = AccountKeyRow(
                name=name,
                name_key=name_key(name),
                kind=KIND,
                description=data.description.strip(),
                username=data.username.strip(),
                sender=sender,
                password_encrypted="",
            )
            session.add(row)
            session.flush()
            row.password_encrypted = self._box.encrypt(data.password.reveal(), context=_context(row.id))
            _record(session, audit.AuditAction.CREATE, row)
            return self._public(session, row)

    def update(self, ref: str, data: AccountKeyUpdate) -> AccountKeyPublic:
        with self._db.session() as session:
            row = find(session, AccountKeyRow, ref, what="account key")
            before = _audited(row)
            if data.name is not None:
                name = clean_name(data.name, field="name", what="account key")
                if name_key(name) != row.name_key:
                    self._check_unique(session, name)
                row.name, row.name_key = name, name_key(name)
            if data.username is not None:
                row.username = data.username.strip()
            if data.password:
                row.password_encrypted = self._box.encrypt(data.password.reveal(), context=_context(row.id))
            if data.sender is not None:
                row.sender = _check_sender(data.sender)
            if data.description is not None:
                row.description = data.description.strip()
            row.updated_at = utcnow()
            # The password's name only, when a new one was given: never a value, not even encrypted.
            fields = audit.changed(before, _audited(row)) + (["password"] if data.password else [])
            _record(session, audit.AuditAction.UPDATE, row, fields)
            return self._public(session, row)

    def get(self, ref: str) -> AccountKeyPublic:
        with self._db.session() as session:
            return self._public(session, find(session, AccountKeyRow, ref, what="account key"))

    def list_all(self) -> list[AccountKeyPublic]:
        with self._db.session() as session:
            rows = session.scalars(select(AccountKeyRow).order_by(AccountKeyRow.name_key)).all()
            return [self._public(session, row) for row in rows]

    def delete(self, ref: str) -> None:
        with self._db.session() as session:
            row = find(session, AccountKeyRow, ref, what="account key")
            users = self._users(session, row.id)
            if users:
                raise ConflictError(
                    f"account key {row.name!r} is used by target{'s' if len(users) > 1 else ''} "
                    f"{', '.join(repr(u) for u in users)}",
                    hint="choose another account key for those targets first",
                )
            session.delete(row)
            _record(session, audit.AuditAction.DELETE, row)

    def login(self, ref: str) -> Login:
        """The decrypted credentials, for the transport only."""
        with self._db.session() as session:
            row = find(session, AccountKeyRow, ref, what="account key")
            return self.login_for_row(row)

    def login_for_row(self, row: AccountKeyRow) -> Login:
        from mailwright.transport.smtp import Login  # the SMTP client: loaded by what connects

        password = self._box.decrypt(row.password_encrypted, context=_context(row.id))
        return Login(key_name=row.name, username=row.username, password=password)

    def key_ids_in_use(self) -> dict[str, int]:
        """How many stored secrets each key id encrypted (`secret-key rotate` reports it)."""
        with self._db.session() as session:
            stored = session.scalars(select(AccountKeyRow.password_encrypted)).all()
        counts: dict[str, int] = {}
        for value in stored:
            kid = stored_key_id(value) or "unknown"
            counts[kid] = counts.get(kid, 0) + 1
        return counts

    def reencrypt_all(self) -> int:
        """Every stored secret decrypted and encrypted again under the current key, in one transaction.

        A failure (a secret that does not decrypt, a crash) rolls everything back: each
        secret stays under the key it had, which the key ring still holds.
        """
        with self._db.session() as session:
            rows = session.scalars(select(AccountKeyRow).order_by(AccountKeyRow.id).with_for_update()).all()
            for row in rows:
                password = self._box.decrypt(row.password_encrypted, context=_context(row.id))
                row.password_encrypted = self._box.encrypt(password.reveal(), context=_context(row.id))
            return len(rows)

    @staticmethod
    def _check_unique(session: Any, name: str) -> None:
        clash = session.scalars(select(AccountKeyRow).where(AccountKeyRow.name_key == name_key(name))).first()
        if clash is not None:
            raise ConflictError(
                f"an account key named {clash.name!r} already exists",
                field="name",
                hint="choose another name, or update the existing key",
            )

    @staticmethod
    def _users(session: Any, key_id: str) -> list[str]:
        names = session.scalars(
            select(TargetRow.display_name)
            .where(TargetRow.account_key_id == key_id)
            .order_by(TargetRow.name_key)
        ).all()
        return list(names)

    def _public(self, session: Any, row: AccountKeyRow) -> AccountKeyPublic:
        return AccountKeyPublic(
            id=row.id,
            name=row.name,
            description=row.description,
            username=row.username,
            sender=row.sender,
            used_by=self._users(session, row.id),
            created_at=row.created_at,
            updated_at=row.updated_at,
        )
