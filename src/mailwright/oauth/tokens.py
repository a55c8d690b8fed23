"""Access tokens of OAuth2 account keys: cached, refreshed ahead of expiry, one refresh at a time.

`OAuthTokens` is the `TokenSource` every transport receives in `Login.tokens`. It keeps
the current access token in memory and, through a `TokenCacheStore`, in the key's store
(the services encrypt what is saved), so a restarted process does not ask for a new one.

When it refreshes: a token is used until less than a quarter of its lifetime, capped at
5 minutes, is left (a one-hour token is refreshed in its last 5 minutes, as msal does);
`access_token(refresh=True)`, after a server refused the token, forces a refresh.

One refresh at a time per key in the process: the state of a key (its token, a lock)
is shared by every `OAuthTokens` built for the same key configuration, concurrent
callers in an event loop await the same refresh task, and the blocking token request
(in a worker thread) holds the key's lock, so callers in other loops or threads wait for
it and then take the token it got.

Failures: a refresh token the server refuses (`invalid_grant`) is `ReauthorizeKeyError`
("re-authorize this key: mailwright account-keys authorize NAME"), never retried; a
refused client (`invalid_client`…) is a `TargetAuthError` naming what to check; an
unreachable endpoint or a 5xx answer is transient (`TargetConnectError`,
`TargetTimeoutError`, `TargetDeferredError` with `retry_after`), naming the endpoint.
Tokens and secrets appear in no repr, log line or error text.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from mailwright.errors import (
    CertificateUntrustedError,
    TargetAuthError,
    TargetConnectError,
    TargetDeferredError,
    TargetError,
    TargetTimeoutError,
)
from mailwright.secrets import Secret, redact

log = logging.getLogger(__name__)

#: The most a token is refreshed ahead of its expiry.
REFRESH_AHEAD_MAX = 300.0
_BLOB_VERSION = 1


def refresh_margin(lifetime: float) -> float:
    """Seconds before expiry at which a token of this lifetime is refreshed."""
    return min(REFRESH_AHEAD_MAX, max(lifetime, 0.0) / 4)


class TokenCacheStore(Protocol):
    """Where a key's tokens persist between processes (encrypted by whoever implements it)."""

    def load(self) -> str | None: ...

    def save(self, blob: str) -> None: ...


class MemoryTokenStore:
    """A `TokenCacheStore` in memory (tests, one-shot CLI commands)."""

    def __init__(self, blob: str | None = None) -> None:
        self.blob = blob
        self.saves = 0

    def load(self) -> str | None:
        return self.blob

    def save(self, blob: str) -> None:
        self.blob = blob
        self.saves += 1

    def __repr__(self) -> str:
        return f"MemoryTokenStore(saves={self.saves})"


@dataclass(frozen=True, slots=True)
class AccessToken:
    """An access token and when it expires (`time.time()` seconds)."""

    value: Secret
    expires_at: float
    lifetime: float

    @classmethod
    def from_response(cls, token: str, expires_in: Any) -> AccessToken:
        try:
            lifetime = float(expires_in)
        except (TypeError, ValueError):
            lifetime = 3600.0  # RFC 6749 makes expires_in optional; an hour is the usual
        return cls(Secret(token), time.time() + lifetime, lifetime)

    def fresh(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return now < self.expires_at - refresh_margin(self.lifetime)

    def __repr__(self) -> str:
        return f"AccessToken(expires_at={self.expires_at:.0f})"


@dataclass(frozen=True, slots=True)
class Grant:
    """What an authorization obtained: keep `refresh_token` in the account key."""

    refresh_token: Secret
    access_token: AccessToken
    scope: str

    def __repr__(self) -> str:
        return f"Grant(scope={self.scope!r})"


class TokenBackend(Protocol):
    """One way to obtain access tokens (msal client credentials, a refresh-token grant…).

    `fetch` blocks (it runs in a worker thread) and raises only Mailwright errors.
    `state`/`restore` carry what must survive a restart besides the access token (msal's
    serialized cache, a rotated refresh token), as JSON-able data.
    """

    endpoint: str

    def fetch(self, *, force: bool) -> AccessToken: ...

    def state(self) -> Any: ...

    def restore(self, state: Any) -> None: ...


@dataclass(eq=False)
class _KeyState:
    key_name: str
    fingerprint: str
    backend: TokenBackend
    token: AccessToken | None = None
    generation: int = 0
    restored: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    inflight: dict[asyncio.AbstractEventLoop, asyncio.Task[AccessToken]] = field(default_factory=dict)

    def fetch_locked(self, seen_generation: int, force: bool) -> tuple[AccessToken, bool]:
        """In a worker thread: the token another caller just got, or a new one (True)."""
        with self.lock:
            token = self.token
            if token is not None and self.generation != seen_generation and token.fresh():
                return token, False
            token = self.backend.fetch(force=force)
            self.token = token
            self.generation += 1
            self.restored = True  # a stored token would be older than this one
            return token, True

    def blob(self) -> str:
        token = self.token
        doc: dict[str, Any] = {"v": _BLOB_VERSION, "key": self.fingerprint, "backend": self.backend.state()}
        if token is not None:
            doc["access_token"] = token.value.reveal()
            doc["expires_at"] = token.expires_at
            doc["lifetime"] = token.lifetime
        return json.dumps(doc, separators=(",", ":"))

    def restore(self, blob: str | None) -> None:
        """Take the stored token and backend state, unless they belong to another configuration."""
        self.restored = True
        if not blob:
            return
        try:
            doc = json.loads(blob)
            if doc.get("v") != _BLOB_VERSION or doc.get("key") != self.fingerprint:
                return  # the key was changed or re-authorized since: start afresh
            self.backend.restore(doc.get("backend"))
            if "access_token" in doc and self.token is None:
                self.token = AccessToken(
                    Secret(str(doc["access_token"])), float(doc["expires_at"]), float(doc["lifetime"])
                )
        except (ValueError, TypeError, KeyError, AttributeError):
            log.warning(
                "account key %r: the stored token cache is unreadable; starting afresh", self.key_name
            )


_REGISTRY: dict[str, _KeyState] = {}
_REGISTRY_LOCK = threading.Lock()


def fingerprint(*parts: object) -> str:
    """A stable digest of a key's configuration (secrets included, revealed only to the hash)."""
    h = hashlib.sha256()
    for part in parts:
        text = part.reveal() if isinstance(part, Secret) else json.dumps(part, sort_keys=True, default=str)
        h.update(hashlib.sha256(text.encode()).digest())
    return h.hexdigest()


def forget(key_name: str | None = None) -> None:
    """Drop the in-memory tokens of one key (all keys with None): after a key is changed or
    deleted, and in tests that simulate a restart."""
    with _REGISTRY_LOCK:
        for fp in [fp for fp, st in _REGISTRY.items() if key_name is None or st.key_name == key_name]:
            del _REGISTRY[fp]


class OAuthTokens:
    """The `TokenSource` of one OAuth2 account key (see the module docstring)."""

    def __init__(
        self,
        key_name: str,
        key_fingerprint: str,
        backend: Callable[[], TokenBackend],
        store: TokenCacheStore | None = None,
    ) -> None:
        self.key_name = key_name
        self._store = store
        with _REGISTRY_LOCK:
            state = _REGISTRY.get(key_fingerprint)
            if state is None:
                state = _KeyState(key_name, key_fingerprint, backend())
                _REGISTRY[key_fingerprint] = state
        self._state = state

    def __repr__(self) -> str:
        return f"OAuthTokens(key={self.key_name!r})"

    @property
    def endpoint(self) -> str:
        return self._state.backend.endpoint

    async def access_token(self, *, refresh: bool = False) -> Secret:
        state = self._state
        if not state.restored and state.lock.acquire(blocking=False):
            try:  # first use in this process: the stored token, unless a fetch is already under way
                if not state.restored:
                    state.restore(self._load())
            finally:
                state.lock.release()
        token = state.token
        if not refresh and token is not None and token.fresh():
            return token.value
        loop = asyncio.get_running_loop()
        task = state.inflight.get(loop)
        if task is None:
            task = loop.create_task(self._refresh(state.generation, refresh))
            state.inflight[loop] = task
            task.add_done_callback(lambda t: _settle(state, loop, t))
        return (await asyncio.shield(task)).value

    def _load(self) -> str | None:
        if self._store is None:
            return None
        try:
            return self._store.load()
        except Exception as exc:  # an unreadable cache costs one token request, nothing more
            log.warning("account key %r: the token cache was not read (%s)", self.key_name, redact(str(exc)))
            return None

    async def _refresh(self, seen_generation: int, force: bool) -> AccessToken:
        state = self._state
        token, fetched = await asyncio.to_thread(state.fetch_locked, seen_generation, force)
        if fetched:
            log.info(
                "account key %r: new access token from %s, valid for %.0f s%s",
                self.key_name,
                state.backend.endpoint,
                token.lifetime,
                " (forced)" if force else "",
            )
        if fetched and self._store is not None:
            try:
                self._store.save(state.blob())
            except Exception as exc:  # the token works without its cache: say so, and go on
                log.warning(
                    "account key %r: the token cache was not saved (%s)", self.key_name, redact(str(exc))
                )
        return token


def _settle(state: _KeyState, loop: asyncio.AbstractEventLoop, task: asyncio.Task[AccessToken]) -> None:
    if state.inflight.get(loop) is task:
        del state.inflight[loop]
    if not task.cancelled():
        task.exception()  # retrieved: every waiter got it already, or none is left to


# -- errors shared by the backends ------------------------------------------------------


class ReauthorizeKeyError(TargetAuthError):
    """The refresh token was refused (revoked, expired, or consent withdrawn): never retried."""

    code = "reauthorize_key"

    def __init__(self, key_name: str, endpoint: str, reason: str) -> None:
        super().__init__(
            f"account key {key_name!r}: {endpoint} refused the refresh token ({reason}); "
            f"re-authorize this key: mailwright account-keys authorize {key_name}",
            hint="the refresh token was revoked, expired, or its consent was withdrawn; "
            "authorizing again gets a new one",
        )
        self.key_name = key_name


def refused(key_name: str, endpoint: str, error: str, description: str | None) -> TargetError:
    """The error for a token endpoint's OAuth2 error answer (RFC 6749 section 5.2)."""
    reason = error + (f": {_clean(description)}" if description else "")
    if error == "invalid_grant":
        return ReauthorizeKeyError(key_name, endpoint, reason)
    if error in ("temporarily_unavailable", "server_error"):
        return TargetDeferredError(
            f"account key {key_name!r}: {endpoint} is unavailable for now ({reason})",
            code=503,
            reply=reason,
            hint="the token endpoint will be asked again later",
        )
    hints = {
        "invalid_client": "check the key's client id and its client secret or certificate "
        "(a secret may have expired: create a new one in the app registration)",
        "unauthorized_client": "the application may not use this grant: check the app registration",
        "invalid_scope": "check the key's scopes against what the application was granted",
        "invalid_request": "check the key's tenant id, client id and token endpoint",
        "consent_required": "an administrator must consent to the application, then "
        f"mailwright account-keys authorize {key_name}",
    }
    return TargetAuthError(
        f"account key {key_name!r}: {endpoint} refused the token request ({reason})",
        hint=hints.get(error, "check the key's settings against the application registration"),
    )


def unreachable(key_name: str, endpoint: str, exc: BaseException) -> TargetError:
    """The transient error for a token endpoint that could not be reached in time (or, when its
    TLS certificate did not verify, a `CertificateUntrustedError`, not transient)."""
    detail = _clean(str(exc)) or type(exc).__name__
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLCertVerificationError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return CertificateUntrustedError(
            f"account key {key_name!r}: the certificate of {endpoint} is not trusted "
            f"({cause.verify_message})",
            verify_message=str(cause.verify_message),
            hint="check the login URL or token endpoint; a private CA must be trusted by this machine",
        )
    hint = "check the network and the key's login URL or token endpoint; it will be tried again"
    if isinstance(exc, TimeoutError) or "timeout" in type(exc).__name__.lower():
        return TargetTimeoutError(
            f"account key {key_name!r}: {endpoint} did not answer in time ({detail})", hint=hint
        )
    return TargetConnectError(
        f"account key {key_name!r}: {endpoint} could not be reached ({detail})", hint=hint
    )


def server_failed(key_name: str, endpoint: str, status: int, retry_after: str | None) -> TargetDeferredError:
    """The transient error for a token endpoint's 5xx (or 429) answer."""
    seconds: int | None = None
    if retry_after and retry_after.strip().isdigit():
        seconds = int(retry_after.strip())
    return TargetDeferredError(
        f"account key {key_name!r}: {endpoint} answered HTTP {status}",
        code=status,
        reply=f"HTTP {status}",
        retry_after=seconds,
        hint="the token endpoint is failing for now; it will be asked again later",
    )


def grant_from(key_name: str, endpoint: str, token: dict[str, Any], scopes: Sequence[str]) -> Grant:
    """The `Grant` of a token response that must carry a refresh token."""
    refresh = token.get("refresh_token")
    if not refresh or not token.get("access_token"):
        raise TargetError(
            f"account key {key_name!r}: {endpoint} issued no refresh token",
            hint="ask for offline access (Microsoft: the offline_access scope; Google: access_type=offline "
            "and prompt=consent)",
        )
    return Grant(
        Secret(str(refresh)),
        AccessToken.from_response(str(token["access_token"]), token.get("expires_in")),
        str(token.get("scope") or " ".join(scopes)),
    )


def _clean(text: str | None) -> str:
    """Server text for an error message: one line, bounded, revealed secrets masked."""
    if not text:
        return ""
    one_line = " ".join(text.split())
    return redact(one_line[:300])


__all__ = [
    "REFRESH_AHEAD_MAX",
    "AccessToken",
    "Grant",
    "MemoryTokenStore",
    "OAuthTokens",
    "ReauthorizeKeyError",
    "TokenBackend",
    "TokenCacheStore",
    "fingerprint",
    "forget",
    "grant_from",
    "refresh_margin",
    "refused",
    "server_failed",
    "unreachable",
]
