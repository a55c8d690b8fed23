"""Web sign-in: the admin password (scrypt-hashed), browser sessions and their CSRF tokens.

A session ends when what opened it no longer stands: one opened with an API token when
that token is revoked, one opened with the password when the password changes (checked
on every request, beside the deletion of every session by `set_password`).

Failed log-ins are throttled per account and per client address (`LoginThrottle`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import math
import secrets
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from mailwright.domain.roles import Role
from mailwright.errors import AuthorizationError, LoginThrottledError, ValidationError, WrongLoginError
from mailwright.services.ratelimit import Clock, SystemClock
from mailwright.services.tokens import TokenPublic, TokenService
from mailwright.storage.db import Database
from mailwright.storage.tables import ApiTokenRow, AppSettingRow, WebSessionRow, name_key, utcnow

log = logging.getLogger(__name__)

_PASSWORD_KEY = "admin_password"
SESSION_LIFETIME = timedelta(hours=12)
MIN_PASSWORD = 10
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
ACCOUNT = "admin"  # the one web account: the admin password, or an API token


def _hash_password(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _seconds(count: int) -> str:
    return "1 second" if count == 1 else f"{count} seconds"


@dataclass(slots=True)
class _Failures:
    count: int = 0
    last: float = 0.0
    locked_until: float = 0.0


class LoginThrottle:
    """Failed log-ins per account and per client address, kept in this process's memory.

    Every attempt counts as a failure until the secret proves right (so parallel guesses
    are counted too). After `free` failures in a row a key is locked for 1 s, then 2, 4,
    8 … up to `MAX_LOCK`; an attempt while locked is refused at once (429, Retry-After)
    and costs no password hashing. A failure whose lock is at most `SLOW_MAX` is answered
    after that lock has passed (the attempt is slowed); a longer one is a 429 at once. A
    right secret clears both keys; a key idle for `FORGET_AFTER` starts again from zero.
    An address is locked sooner than the account, so one address guessing does not lock
    the admin out everywhere, while guesses spread over many addresses still slow down.
    """

    FREE_PER_ADDRESS = 5
    FREE_PER_ACCOUNT = 10
    SLOW_MAX = 8.0
    MAX_LOCK = 900.0
    FORGET_AFTER = 3600.0
    MAX_KEYS = 10_000

    def __init__(
        self, *, clock: Clock | None = None, sleep: Callable[[float], Awaitable[None]] | None = None
    ) -> None:
        self._clock = clock or SystemClock()
        self._sleep = sleep or asyncio.sleep
        self._keys: dict[str, _Failures] = {}
        self._lock = threading.Lock()

    def _lock_for(self, count: int, free: int) -> float:
        return 0.0 if count < free else min(2.0 ** (count - free), self.MAX_LOCK)

    def admit(self, *, account: str, address: str) -> float:
        """Count an attempt, or raise LoginThrottledError. Returns the lock a failure now leaves."""
        keys = ((f"account:{account}", self.FREE_PER_ACCOUNT), (f"address:{address}", self.FREE_PER_ADDRESS))
        with self._lock:
            now = self._clock.monotonic()
            for key, _free in keys:
                entry = self._keys.get(key)
                if entry is not None and entry.locked_until > now:
                    wait = math.ceil(entry.locked_until - now)
                    which = "this address" if key.startswith("address:") else "this account"
                    raise LoginThrottledError(
                        f"too many failed log-ins from {which}; try again in {_seconds(wait)}",
                        retry_after=wait,
                        hint="wait, then log in with the right password or token",
                    )
            self._prune(now)
            lock = 0.0
            for key, free in keys:
                entry = self._keys.setdefault(key, _Failures())
                if now - entry.last > self.FORGET_AFTER:
                    entry.count = 0
                entry.count += 1
                entry.last = now
                key_lock = self._lock_for(entry.count, free)
                entry.locked_until = now + key_lock
                lock = max(lock, key_lock)
            return lock

    def failures(self, *, address: str) -> int:
        with self._lock:
            entry = self._keys.get(f"address:{address}")
            return entry.count if entry is not None else 0

    def succeeded(self, *, account: str, address: str) -> None:
        with self._lock:
            self._keys.pop(f"account:{account}", None)
            self._keys.pop(f"address:{address}", None)

    def _prune(self, now: float) -> None:
        if len(self._keys) < self.MAX_KEYS:
            return
        for key in [k for k, e in self._keys.items() if e.locked_until <= now and now - e.last > 60]:
            del self._keys[key]
        if len(self._keys) >= self.MAX_KEYS:  # still full: forget the oldest half
            for key in sorted(self._keys, key=lambda k: self._keys[k].last)[: self.MAX_KEYS // 2]:
                del self._keys[key]

    async def pause(self, seconds: float) -> None:
        """Hold a failed attempt's answer back (without holding a thread)."""
        if seconds > 0:
            await self._sleep(seconds)


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
    def __init__(self, db: Database, tokens: TokenService, *, throttle: LoginThrottle | None = None) -> None:
        self._db = db
        self._tokens = tokens
        # Failed log-ins, in this process's memory (see LoginThrottle).
        self.throttle = throttle or LoginThrottle()

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

    def sign_in(self, secret: str, *, address: str) -> NewSession:
        """A session for the admin password (an admin), or for an API token (with the token's role).

        Throttled per account and per client `address`: LoginThrottledError while locked
        (the secret is not even checked), WrongLoginError for a wrong secret, which carries
        how long to hold the answer back.
        """
        lock = self.throttle.admit(account=ACCOUNT, address=address)
        if self.has_password() and self.check_password(secret):
            opened = self.open_session()
        elif (token := self._token(secret)) is not None:
            opened = self.open_session(role=token.role, token_name=token.name)
        else:
            # The address, never the secret: a mistyped password is often nearly the real one.
            log.warning(
                "web log-in failed for %s from %s (%d failed in a row from this address)",
                ACCOUNT,
                address,
                self.throttle.failures(address=address),
            )
            if lock > LoginThrottle.SLOW_MAX:
                wait = math.ceil(lock)
                raise LoginThrottledError(
                    f"too many failed log-ins; try again in {_seconds(wait)}",
                    retry_after=wait,
                    hint="wait, then log in with the right password or token",
                )
            raise WrongLoginError(
                "wrong password or token", slow_down=lock, hint="the admin token is printed on first start"
            )
        self.throttle.succeeded(account=ACCOUNT, address=address)
        return opened

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
            if not _still_stands(session, row):
                session.delete(row)  # its token was revoked or the password changed: it ends here
                return None
            row.last_seen_at = utcnow()
            return _public(row)

    def sign_out(self, session_id: str) -> None:
        with self._db.session() as session:
            session.execute(delete(WebSessionRow).where(WebSessionRow.id == session_id))


def _public(row: WebSessionRow) -> WebSession:
    return WebSession(id=row.id, csrf_token=row.csrf_token, role=Role(row.role), token_name=row.token_name)


def _still_stands(session: Session, row: WebSessionRow) -> bool:
    """Whether what opened the session still stands: its API token, or the password then set."""
    if row.token_name is not None:
        token = session.scalars(
            select(ApiTokenRow).where(ApiTokenRow.name_key == name_key(row.token_name))
        ).first()
        return token is not None and token.revoked_at is None
    password = session.get(AppSettingRow, _PASSWORD_KEY)
    # Opened with a password set (or changed) later: that password is not the one it was opened with.
    return password is None or row.created_at >= password.updated_at
