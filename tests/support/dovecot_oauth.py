"""A token-introspection server for Dovecot's ``oauth2`` passdb, and a token source that uses it.

Written for the tests from RFC 7662 (OAuth 2.0 Token Introspection) and Dovecot's
documentation of its oauth2 password database (``introspection_mode = post``):
Dovecot POSTs ``token=<access token>`` as a form to :attr:`TokenIntrospection.url`
and reads a JSON object back: ``active`` (the passdb is configured with
``active_attribute = active`` and ``active_value = true``), ``username`` (its
``username_attribute``, compared with the SASL user), ``scope`` and ``exp``.

Tokens are opaque random strings minted here (:meth:`TokenIntrospection.mint`); a
token is active until it expires or is revoked. Another validator can be plugged
in (``validator=``), e.g. the OAuth2 token server stand-in's ``introspect``, so
Dovecot checks tokens that server issued.

:class:`MintedTokens` is an account key's token source for the tests: it mints a
token on first use and whenever it is asked to refresh, and counts both.

The server runs in a thread on 127.0.0.1 and serves plain HTTP (Dovecot's auth
process connects from the same machine).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

from mailwright.secrets import Secret

__all__ = ["MintedTokens", "TokenIntrospection"]

Validator = Callable[[str], dict[str, Any]]


@dataclass
class _Grant:
    username: str
    scope: str
    expires: float
    revoked: bool = False


class TokenIntrospection:
    """An RFC 7662 introspection endpoint (``POST /introspect``) on 127.0.0.1, in a thread."""

    def __init__(self, *, validator: Validator | None = None, default_scope: str = "mail") -> None:
        self.default_scope = default_scope
        self._validator = validator
        self._grants: dict[str, _Grant] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.introspected: list[str] = []  # every token asked about, in order

    # --- lifecycle ----------------------------------------------------------

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("TokenIntrospection is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/introspect"

    def start(self) -> None:
        if self._server is not None:
            return
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True, name="introspection"
        )
        self._thread.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- tokens -------------------------------------------------------------

    def mint(
        self, username: str, *, lifetime: float = 3600.0, scope: str | None = None, length: int = 36
    ) -> str:
        """A new opaque access token for `username`, active for `lifetime` seconds, about
        `length` characters long (Microsoft's JWTs run to 2,000 and more)."""
        token = "mwt-" + secrets.token_urlsafe(max(16, length * 3 // 4))
        with self._lock:
            self._grants[token] = _Grant(
                username=username,
                scope=self.default_scope if scope is None else scope,
                expires=time.time() + lifetime,
            )
        return token

    def revoke(self, token: str) -> None:
        with self._lock:
            self._grants[token].revoked = True

    def expire(self, token: str) -> None:
        with self._lock:
            self._grants[token].expires = time.time() - 1

    def introspect(self, token: str) -> dict[str, Any]:
        """The RFC 7662 answer for `token`: ``{"active": false}`` unless it is known and current."""
        with self._lock:
            self.introspected.append(token)
            if self._validator is not None:
                return self._validator(token)
            grant = self._grants.get(token)
            if grant is None or grant.revoked or grant.expires <= time.time():
                return {"active": False}
            return {
                "active": True,
                "username": grant.username,
                "scope": grant.scope,
                "exp": int(grant.expires),
                "token_type": "Bearer",
            }


def _handler(owner: TokenIntrospection) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = urllib.parse.parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
            if self.path.split("?")[0] != "/introspect" or "token" not in form:
                self._answer(400, {"error": "invalid_request"})
                return
            self._answer(200, owner.introspect(form["token"][0]))

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet: tokens are in the requests

    return Handler


class MintedTokens:
    """An account key's token source for the tests (the `TokenSource` protocol of transport.base).

    The first call mints a token; `refresh=True` mints a new one. `stale=True` makes the
    first token one the server no longer accepts (expired), so the first login is refused
    and the transport must refresh once.
    """

    def __init__(
        self,
        server: TokenIntrospection,
        username: str,
        *,
        stale: bool = False,
        scope: str | None = None,
        token: str | None = None,
    ) -> None:
        self._server = server
        self._username = username
        self._stale = stale
        self._scope = scope
        self.current: str | None = token
        self.calls = 0
        self.refreshes = 0

    async def access_token(self, *, refresh: bool = False) -> Secret:
        self.calls += 1
        if refresh:
            self.refreshes += 1
        if self.current is None or refresh:
            self.current = self._server.mint(self._username, scope=self._scope)
            if self._stale and self.refreshes == 0:
                self._server.expire(self.current)
        return Secret(self.current)
