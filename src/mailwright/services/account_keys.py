"""Account keys: stored apart from targets, reused by many; each of a registered type (keys/)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from mailwright.domain.validation import validate_model
from mailwright.errors import ConflictError, ValidationError
from mailwright.plugins import AccountKeyType, KeyMaterial, account_key_type
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


class _KeyFields(BaseModel):
    """What every key has; the fields of its type (GET /api/v1/account-key-types) come as further fields."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "description": "Also the fields of the key's type (tenant_id, client_id, client_secret… for "
            "Graph keys): GET /api/v1/account-key-types lists the types and their fields."
        },
    )

    username: str | None = Field(default=None, max_length=320, description="mailbox username")
    password: Secret | None = Field(default=None, description="mailbox password or app password (write-only)")
    sender: str | None = Field(default=None, description="default From address")

    def type_values(self) -> dict[str, Any]:
        """The type's fields given (None: not given), secrets still wrapped."""
        given = {"username": self.username, "password": self.password, "sender": self.sender}
        given.update(self.model_extra or {})
        return {k: v for k, v in given.items() if v is not None}


class AccountKeyCreate(_KeyFields):
    name: str = Field(description="unique name, e.g. 'alice-gmail'", json_schema_extra=NAME_SCHEMA)
    type: str = Field(default=KIND, description="email_credentials (default), graph, oauth2, or a plugin's")
    description: str = ""


class AccountKeyUpdate(_KeyFields):
    name: str | None = Field(default=None, json_schema_extra=NAME_SCHEMA)
    description: str | None = None


class AccountKeyPublic(BaseModel):
    """An account key as the API and CLI show it: every secret is always ********."""

    id: str
    name: str
    type: str = KIND
    type_label: str = "Email Credentials"
    description: str
    username: str
    password: str | None = MASK
    sender: str | None
    settings: dict[str, Any] = Field(default_factory=dict, description="the type's plain fields")
    secrets: dict[str, str] = Field(
        default_factory=dict, description="the type's secrets that are set, each shown as ********"
    )
    authorized: bool | None = Field(
        default=None, description="OAuth2 keys: whether a refresh token is stored (authorize it once)"
    )
    used_by: list[str]
    created_at: datetime
    updated_at: datetime


def _context(row_id: str, what: str = "password") -> str:
    # Binds the ciphertext to its row and column: copied elsewhere, it does not decrypt.
    return f"account-key:{row_id}:{what}"


def _audited(row: AccountKeyRow) -> dict[str, Any]:
    """The fields the audit log compares: never a secret (an update names the ones given)."""
    return {
        "name": row.name,
        "username": row.username,
        "sender": row.sender,
        "description": row.description,
        **{f"settings.{k}": v for k, v in (row.settings or {}).items()},
    }


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


def _check_fields(kind: AccountKeyType, values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Secret]]:
    """The type's plain fields (JSON values) and its secrets, validated together."""
    model = validate_model(kind.fields_model, values)
    secret_names = set(kind.secret_fields())
    dumped = model.model_dump(mode="json", exclude=secret_names)
    secrets: dict[str, Secret] = {}
    for name in secret_names:
        value = getattr(model, name)
        if value:
            secrets[name] = value if isinstance(value, Secret) else Secret(str(value))
    if kind.prompt_secret and not secrets.get(kind.prompt_secret):
        raise ValidationError(f"the {kind.prompt_secret} is empty", field=kind.prompt_secret)
    return dumped, secrets


def _forget_tokens(key_name: str) -> None:
    """This process's tokens of a changed or deleted key go (other processes see the new fingerprint)."""
    from mailwright.oauth.tokens import forget

    forget(key_name)


class _TokenStore:
    """An OAuth2 key's token cache in its row, encrypted; each save in its own transaction."""

    def __init__(self, db: Database, box: SecretBox, key_id: str) -> None:
        self._db, self._box, self._key_id = db, box, key_id

    def load(self) -> str | None:
        with self._db.session() as session:
            stored = session.scalar(
                select(AccountKeyRow.token_cache_encrypted).where(AccountKeyRow.id == self._key_id)
            )
        if not stored:
            return None
        return self._box.decrypt(stored, context=_context(self._key_id, "token-cache")).reveal()

    def save(self, blob: str) -> None:
        encrypted = self._box.encrypt(blob, context=_context(self._key_id, "token-cache"))
        with self._db.session() as session:
            row = session.get(AccountKeyRow, self._key_id)
            if row is not None:
                row.token_cache_encrypted = encrypted


class AccountKeyService:
    def __init__(self, db: Database, box: SecretBox) -> None:
        self._db = db
        self._box = box

    @property
    def box(self) -> SecretBox:
        """The key ring the secrets are encrypted with."""
        return self._box

    def create(self, data: AccountKeyCreate) -> AccountKeyPublic:
        kind = account_key_type(data.type)
        name = clean_name(data.name, field="name", what="account key")
        plain, secrets = _check_fields(kind, data.type_values())
        with self._db.session() as session:
            self._check_unique(session, name)
            row = AccountKeyRow(
                name=name,
                name_key=name_key(name),
                kind=kind.name,
                description=data.description.strip(),
                username="",
                password_encrypted="",
                settings={},
                secrets_encrypted="",
            )
            session.add(row)
            session.flush()
            self._store(row, kind, plain, secrets)
            _record(session, audit.AuditAction.CREATE, row)
            return self._public(session, row)

    def update(self, ref: str, data: AccountKeyUpdate) -> AccountKeyPublic:
        with self._db.session() as session:
            row = find(session, AccountKeyRow, ref, what="account key")
            kind = account_key_type(row.kind)
            before = _audited(row)
            if data.name is not None:
                name = clean_name(data.name, field="name", what="account key")
                if name_key(name) != row.name_key:
                    self._check_unique(session, name)
                row.name, row.name_key = name, name_key(name)
            given = data.type_values()
            new_secrets = [k for k in kind.secret_fields() if given.get(k)]
            # A blank secret keeps the stored one; an empty plain value ("" sender) clears it.
            merged: dict[str, Any] = {**self._plain(row), **self._secrets(row)}
            merged.update({k: v for k, v in given.items() if k not in kind.secret_fields() or v})
            plain, secrets = _check_fields(kind, merged)
            self._store(row, kind, plain, secrets)
            if data.description is not None:
                row.description = data.description.strip()
            row.updated_at = utcnow()
            # The secrets' names only, when new ones were given: never a value, not even encrypted.
            fields = audit.changed(before, _audited(row)) + new_secrets
            _record(session, audit.AuditAction.UPDATE, row, fields)
            _forget_tokens(before["name"])
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
            _forget_tokens(row.name)

    def login(self, ref: str, hints: dict[str, Any] | None = None) -> Login:
        """The decrypted credentials, for the transport only."""
        with self._db.session() as session:
            row = find(session, AccountKeyRow, ref, what="account key")
            return self.login_for_row(row, hints)

    def login_for_row(self, row: AccountKeyRow, hints: dict[str, Any] | None = None) -> Login:
        return account_key_type(row.kind).login(self._material(row, hints))

    def kind_of(self, ref: str) -> AccountKeyType:
        with self._db.session() as session:
            return account_key_type(find(session, AccountKeyRow, ref, what="account key").kind)

    async def authorize(self, ref: str, *, device: bool, show: Callable[[str], None]) -> AccountKeyPublic:
        """Run the key type's consent flow once and store the refresh token it gives."""
        with self._db.session() as session:
            row = find(session, AccountKeyRow, ref, what="account key")
            kind = account_key_type(row.kind)
            material = self._material(row)
        if kind.authorize is None:
            raise ValidationError(
                f"account key {material.name!r} is {kind.label}: it needs no authorization",
                field="account_key",
                hint="authorize OAuth2 (XOAUTH2) keys; the others log in with what they hold",
            )
        new = await kind.authorize(material, device=device, show=show)
        with self._db.session() as session:
            row = find(session, AccountKeyRow, material.key_id, what="account key")
            secrets = {**self._secrets(row), **{k: Secret(v) for k, v in new.items()}}
            self._store(row, kind, self._plain(row), secrets)
            row.token_cache_encrypted = None  # tokens of the old grant go with it
            row.updated_at = utcnow()
            _record(session, audit.AuditAction.UPDATE, row, sorted(new))
            _forget_tokens(row.name)
            return self._public(session, row)

    def key_ids_in_use(self) -> dict[str, int]:
        """How many stored secrets each key id encrypted (`secret-key rotate` reports it)."""
        with self._db.session() as session:
            rows = session.execute(
                select(
                    AccountKeyRow.password_encrypted,
                    AccountKeyRow.secrets_encrypted,
                    AccountKeyRow.token_cache_encrypted,
                )
            ).all()
        counts: dict[str, int] = {}
        for value in (v for row in rows for v in row if v):
            kid = stored_key_id(value) or "unknown"
            counts[kid] = counts.get(kid, 0) + 1
        return counts

    def reencrypt_all(self) -> int:
        """Every stored secret decrypted and encrypted again under the current key, in one transaction.

        A failure (a secret that does not decrypt, a crash) rolls everything back: each
        secret stays under the key it had, which the key ring still holds.
        """
        columns = (("password_encrypted", "password"), ("secrets_encrypted", "secrets"))
        with self._db.session() as session:
            rows = session.scalars(select(AccountKeyRow).order_by(AccountKeyRow.id).with_for_update()).all()
            for row in rows:
                for column, what in (*columns, ("token_cache_encrypted", "token-cache")):
                    stored = getattr(row, column)
                    if stored:
                        plain = self._box.decrypt(stored, context=_context(row.id, what))
                        setattr(
                            row, column, self._box.encrypt(plain.reveal(), context=_context(row.id, what))
                        )
            return len(rows)

    # --- the row's fields -----------------------------------------------------------------

    def _material(self, row: AccountKeyRow, hints: dict[str, Any] | None = None) -> KeyMaterial:
        return KeyMaterial(
            key_id=row.id,
            name=row.name,
            settings=self._plain(row),
            secrets=self._secrets(row),
            token_store=_TokenStore(self._db, self._box, row.id),
            hints=hints or {},
        )

    @staticmethod
    def _plain(row: AccountKeyRow) -> dict[str, Any]:
        if row.kind == KIND:  # Email Credentials keep their fields in their own columns
            return {"username": row.username, "sender": row.sender, **(row.settings or {})}
        return dict(row.settings or {})

    def _secrets(self, row: AccountKeyRow) -> dict[str, Secret]:
        out: dict[str, Secret] = {}
        if row.password_encrypted:
            out["password"] = self._box.decrypt(row.password_encrypted, context=_context(row.id))
        if row.secrets_encrypted:
            blob = self._box.decrypt(row.secrets_encrypted, context=_context(row.id, "secrets")).reveal()
            out.update({k: Secret(v) for k, v in json.loads(blob).items()})
        return out

    def _store(
        self, row: AccountKeyRow, kind: AccountKeyType, plain: dict[str, Any], secrets: dict[str, Secret]
    ) -> None:
        row.username = kind.username(plain)
        row.sender = plain.get("sender")
        password = secrets.get("password") if kind.name == KIND else None
        row.password_encrypted = (
            self._box.encrypt(password.reveal(), context=_context(row.id)) if password else ""
        )
        others = {k: v.reveal() for k, v in secrets.items() if not (k == "password" and kind.name == KIND)}
        row.secrets_encrypted = (
            self._box.encrypt(json.dumps(others), context=_context(row.id, "secrets")) if others else ""
        )
        kept = {"username", "sender"} if kind.name == KIND else set()
        row.settings = {k: v for k, v in plain.items() if k not in kept}

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
        kind = account_key_type(row.kind)
        plain = self._plain(row)
        stored = self._stored_secret_names(row)
        return AccountKeyPublic(
            id=row.id,
            name=row.name,
            type=kind.name,
            type_label=kind.label,
            description=row.description,
            username=row.username,
            password=MASK if "password" in stored else None,
            sender=row.sender,
            settings={k: v for k, v in plain.items() if k not in {"username", "sender"}},
            secrets=dict.fromkeys(stored, MASK),
            authorized=("refresh_token" in stored) if kind.authorize is not None else None,
            used_by=self._users(session, row.id),
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    def _stored_secret_names(self, row: AccountKeyRow) -> list[str]:
        # Which secrets are set, without showing them: decrypting tells the names.
        return sorted(self._secrets(row))
