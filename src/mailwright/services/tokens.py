"""API tokens: random bearer tokens, stored as SHA-256 hashes, shown once, each with a role."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import Protocol

from pydantic import BaseModel
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session

from mailwright.domain.roles import Role
from mailwright.errors import AuthorizationError, ConflictError
from mailwright.services import audit
from mailwright.services.common import clean_name, find
from mailwright.storage.db import Database
from mailwright.storage.tables import ApiTokenRow, name_key, utcnow

PREFIX = "mw_"
_BY_HASH = select(
    ApiTokenRow.id,
    ApiTokenRow.name,
    ApiTokenRow.prefix,
    ApiTokenRow.role,
    ApiTokenRow.created_at,
    ApiTokenRow.last_used_at,
    ApiTokenRow.revoked_at,
).where(ApiTokenRow.token_hash == bindparam("hash"))
_TOUCH = (
    update(ApiTokenRow)
    .where(ApiTokenRow.id == bindparam("token_id"))
    .values(last_used_at=bindparam("now"))
    .execution_options(synchronize_session=False)
)
LAST_USED_PRECISION = timedelta(minutes=1)  # how stale `last_used_at` may be


class TokenPublic(BaseModel):
    id: str
    name: str
    prefix: str
    role: Role
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class NewToken(BaseModel):
    """Returned once, at creation: the only time the token itself is shown."""

    token: str
    info: TokenPublic


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenService:
    def __init__(self, db: Database) -> None:
        self._db = db

    def create(self, name: str, *, role: Role = Role.ADMIN) -> NewToken:
        """A new token. The faces always pass `role` (`tokens create` defaults to operator);
        the default here is what every token was before roles existed."""
        name = clean_name(name, field="name", what="token")
        token = PREFIX + secrets.token_urlsafe(32)
        with self._db.session() as session:
            clash = session.scalars(select(ApiTokenRow).where(ApiTokenRow.name_key == name_key(name))).first()
            if clash is not None:
                raise ConflictError(
                    f"a token named {clash.name!r} already exists", hint="choose another name"
                )
            row = ApiTokenRow(
                name=name,
                name_key=name_key(name),
                token_hash=_hash(token),
                prefix=token[:10],
                role=role.value,
            )
            session.add(row)
            session.flush()
            _record(session, audit.AuditAction.CREATE, row)
            return NewToken(token=token, info=_public(row))

    def ensure_admin(self) -> NewToken | None:
        """On first start: an 'admin' token when none exists yet."""
        with self._db.session() as session:
            count = session.scalar(select(func.count()).select_from(ApiTokenRow))
        return self.create("admin", role=Role.ADMIN) if not count else None

    def list_all(self) -> list[TokenPublic]:
        with self._db.session() as session:
            rows = session.scalars(select(ApiTokenRow).order_by(ApiTokenRow.created_at)).all()
            return [_public(r) for r in rows]

    def revoke(self, ref: str) -> TokenPublic:
        with self._db.session() as session:
            row = find(session, ApiTokenRow, ref, what="token")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
                _record(session, audit.AuditAction.REVOKE, row)
            return _public(row)

    def verify(self, token: str) -> TokenPublic:
        """The token's public record, if it is known and not revoked (every API request asks).

        Core statements, built once: through the ORM this cost a tenth of a send's time.
        """
        with self._db.engine.connect() as connection:
            row = connection.execute(_BY_HASH, {"hash": _hash(token)}).first()
        if row is None or row.revoked_at is not None:
            raise AuthorizationError(
                "the API token is unknown or revoked",
                hint="create one with `mailwright tokens create NAME`",
            )
        last_used_at, now = row.last_used_at, utcnow()
        # To the minute is what "last used" tells; a write per request would cost a disk sync.
        if last_used_at is None or now - last_used_at >= LAST_USED_PRECISION:
            with self._db.engine.begin() as connection:
                connection.execute(_TOUCH, {"token_id": row.id, "now": now})
            last_used_at = now
        return _public(row, last_used_at=last_used_at)


class _TokenFields(Protocol):
    """What a token's public record is made of: its ORM row, or a Core row of the same columns."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def prefix(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def last_used_at(self) -> datetime | None: ...
    @property
    def revoked_at(self) -> datetime | None: ...


def _record(
    session: Session, action: audit.AuditAction, row: ApiTokenRow, fields: list[str] | None = None
) -> None:
    audit.record(
        session,
        action=action,
        object_type=audit.ObjectType.TOKEN,
        object_id=row.id,
        object_name=row.name,
        fields=fields,
    )


def _public(row: _TokenFields, *, last_used_at: datetime | None = None) -> TokenPublic:
    """A token's public record, from its ORM row or a Core row of the same columns."""
    return TokenPublic(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        role=Role(row.role),
        created_at=row.created_at,
        last_used_at=last_used_at or row.last_used_at,
        revoked_at=row.revoked_at,
    )
