"""Web sign-in: the admin password (scrypt-hashed), browser sessions and their CSRF tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select

from mailwright.domain.roles import Role
from mailwright.errors import AuthorizationError, ValidationError
from mailwright.services.tokens import TokenPublic, TokenService
from mailwright.storage.db import Database
from mailwright.storage.tables import AppSettingRow, WebSessionRow, utcnow

_PASSWORD_KEY = "admin_password"
SESSION_LIFETIME = timedelta(hours=12)
MIN_PASSWORD = 10
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def _hash_password(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class WebSession:
    id: str
    csrf_token: str
    # Signed in with the admin password (an admin, token_name None) or an API token (its role).
    role: Role = Role.ADMIN
    token_name: str | None = None


@dataclass(frozen=True, slots=True)
class NewSession:
    cookie: str  # goes to the browser once; only its hash is stored
    session: WebSession


class WebAuthService:
    def __init__(self, db: Database, tokens: TokenService) -> None:
        self._db = db
        self._tokens = tokens

    def has_password(self) -> bool:
        with self._db.session() as session:
            return session.get(AppSettingRow, _PASSWORD_KEY) is not None

    def set_password(self, password: str, confirm: str) -> None:
        if len(password) < MIN_PASSWORD:
            raise ValidationError(f"the password needs at least {MIN_PASSWORD} characters", field="password")
        if password != confirm:
            raise ValidationError("the two passwords differ", field="confirm")
        salt = secrets.token_bytes(16)
        value = (
            "scrypt$"
            + base64.b64encode(salt).decode()
            + "$"
            + base64.b64encode(_hash_password(password, salt)).decode()
        )
        with self._db.session() as session:
            row = session.get(AppSettingRow, _PASSWORD_KEY)
            if row is None:
                session.add(AppSettingRow(key=_PASSWORD_KEY, value=value))
            else:
                row.value, row.updated_at = value, utcnow()
            # A new password signs every browser out.
            session.execute(delete(WebSessionRow))

    def check_password(self, password: str) -> bool:
        with self._db.session() as session:
            row = session.get(AppSettingRow, _PASSWORD_KEY)
        if row is None:
            return False
        _scheme, salt, digest = row.value.split("$")
        return hmac.compare_digest(_hash_password(password, base64.b64decode(salt)), base64.b64decode(digest))

    def _token(self, token: str) -> TokenPublic | None:
        try:
            return self._tokens.verify(token.strip())
        except AuthorizationError:
            return None

    def check_token(self, token: str) -> bool:
        """An admin token (setting the admin password makes its holder the web admin)."""
        found = self._token(token)
        return found is not None and found.role is Role.ADMIN

    def sign_in(self, secret: str) -> NewSession:
        """A session for the admin password (an admin), or for an API token (with the token's role)."""
        if self.has_password() and self.check_password(secret):
            return self.open_session()
        token = self._token(secret)
        if token is None:
            raise AuthorizationError(
                "wrong password or token", hint="the admin token is printed on first start"
            )
        return self.open_session(role=token.role, token_name=token.name)

    def open_session(self, *, role: Role = Role.ADMIN, token_name: str | None = None) -> NewSession:
        cookie = secrets.token_urlsafe(32)
        row = WebSessionRow(
            token_hash=_sha(cookie),
            csrf_token=secrets.token_urlsafe(32),
            expires_at=utcnow() + SESSION_LIFETIME,
            role=role.value,
            token_name=token_name,
        )
        with self._db.session() as session:
            session.execute(delete(WebSessionRow).where(WebSessionRow.expires_at < utcnow()))
            session.add(row)
            session.flush()
            return NewSession(cookie=cookie, session=_public(row))

    def session_for(self, cookie: str | None) -> WebSession | None:
        if not cookie:
            return None
        with self._db.session() as session:
            row = session.scalars(
                select(WebSessionRow).where(WebSessionRow.token_hash == _sha(cookie))
            ).first()
            if row is None or row.expires_at < utcnow():
                return None
            row.last_seen_at = utcnow()
            return _public(row)

    def sign_out(self, session_id: str) -> None:
        with self._db.session() as session:
            session.execute(delete(WebSessionRow).where(WebSessionRow.id == session_id))


def _public(row: WebSessionRow) -> WebSession:
    return WebSession(id=row.id, csrf_token=row.csrf_token, role=Role(row.role), token_name=row.token_name)
