"""Web sign-in: the admin password (scrypt-hashed), browser sessions and their CSRF tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select

from mailwright.errors import AuthorizationError, ValidationError
from mailwright.services.tokens import TokenService
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

    def check_token(self, token: str) -> bool:
        try:
            self._tokens.verify(token.strip())
        except AuthorizationError:
            return False
        return True

    def sign_in(self, secret: str) -> NewSession:
        """A session for the admin password, or for an API token (the first-start token)."""
        ok = self.check_password(secret) if self.has_password() else False
        if not ok and not self.check_token(secret):
            raise AuthorizationError(
                "wrong password or token", hint="the admin token is printed on first start"
            )
        return self.open_session()

    def open_session(self) -> NewSession:
        cookie = secrets.token_urlsafe(32)
        row = WebSessionRow(
            token_hash=_sha(cookie),
            csrf_token=secrets.token_urlsafe(32),
            expires_at=utcnow() + SESSION_LIFETIME,
        )
        with self._db.session() as session:
            session.execute(delete(WebSessionRow).where(WebSessionRow.expires_at < utcnow()))
            session.add(row)
            session.flush()
            return NewSession(cookie=cookie, session=WebSession(id=row.id, csrf_token=row.csrf_token))

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
            return WebSession(id=row.id, csrf_token=row.csrf_token)

    def sign_out(self, session_id: str) -> None:
        with self._db.session() as session:
            session.execute(delete(WebSessionRow).where(WebSessionRow.id == session_id))
