"""An OAuth2 token server stand-in for the tests (Microsoft identity platform shaped).

Microsoft's and Google's servers cannot be reached from the tests, so this server is
written from the published contracts, not from their code: RFC 6749 (token endpoint,
authorization code, refresh token, error responses), RFC 7636 (PKCE, S256 only),
RFC 8628 (device authorization grant), RFC 7523 / Microsoft's "certificate credentials"
page (client_assertion JWT signed with the registered certificate's key, ``x5t#S256``
or ``x5t`` header, ``aud`` = the token endpoint), and Microsoft's v2.0 endpoint layout:

* ``GET  /{tenant}/v2.0/.well-known/openid-configuration`` (the discovery document msal reads)
* ``POST /{tenant}/oauth2/v2.0/token`` (client_credentials with a secret or a
  client_assertion, refresh_token, authorization_code with PKCE, device_code)
* ``GET  /{tenant}/oauth2/v2.0/authorize`` (no login page: approves at once as
  ``authorize_as`` and redirects to the registered loopback redirect URI)
* ``POST /{tenant}/oauth2/v2.0/devicecode`` (approve with ``approve_device(user_code)``)
* ``POST /introspect`` (RFC 7662, form ``token=``), also ``GET /introspect?token=`` and
  ``GET /introspect`` with ``Authorization: Bearer`` (Dovecot's ``introspection_mode``
  post, get and auth); ``introspection_url`` is its address

Tests register clients, set the token lifetime, revoke refresh tokens (the next use
gets ``invalid_grant``), make the token endpoint fail with a status on demand, and
read ``token_requests`` (a count per grant type). Tokens are opaque random strings;
``introspect(token)`` answers like RFC 7662 (``active``, ``scope``, ``sub``,
``username``, ``client_id``, ``exp``) so the Graph stand-in and the Dovecot
introspection helper can reuse it. The server runs in a daemon thread on 127.0.0.1,
over http or, given a server ``ssl.SSLContext``, https (msal insists on https).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

__all__ = ["OAuthClient", "OAuthTestServer", "TokenInfo"]

_DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass
class OAuthClient:
    """A registered application: a secret, a certificate (PEM), or neither (a public client)."""

    client_id: str
    secret: str | None = None
    certificate_pem: bytes | None = None

    def thumbprints(self) -> set[str]:
        if self.certificate_pem is None:
            return set()
        cert = x509.load_pem_x509_certificate(self.certificate_pem)
        return {
            _b64url(cert.fingerprint(hashes.SHA256())),
            _b64url(cert.fingerprint(hashes.SHA1())),
        }


@dataclass
class TokenInfo:
    """What the server knows about a token it minted."""

    client_id: str
    scope: str
    subject: str
    expires_at: float
    kind: str  # access, refresh
    revoked: bool = False

    def active(self) -> bool:
        return not self.revoked and (self.kind == "refresh" or time.time() < self.expires_at)


@dataclass
class _Device:
    client_id: str
    scope: str
    user_code: str
    expires_at: float
    approved_as: str | None = None


@dataclass
class _Code:
    client_id: str
    scope: str
    redirect_uri: str
    challenge: str | None
    challenge_method: str | None
    subject: str
    used: bool = False


@dataclass
class OAuthTestServer:
    """The stand-in; use as a context manager or with ``start()`` / ``stop()``."""

    ssl_context: ssl.SSLContext | None = None
    token_lifetime: int = 3600
    authorize_as: str = "user@example.test"
    device_interval: int = 1
    rotate_refresh_tokens: bool = True
    clients: dict[str, OAuthClient] = field(default_factory=dict)
    tokens: dict[str, TokenInfo] = field(default_factory=dict)
    token_requests: Counter[str] = field(default_factory=Counter)
    #: token-endpoint failures to serve next: (status, Retry-After or None), first first
    fail_next: list[tuple[int, int | None]] = field(default_factory=list)
    #: every token request's form, in order (secrets included: for assertions only)
    requests: list[dict[str, str]] = field(default_factory=list)
    _devices: dict[str, _Device] = field(default_factory=dict)
    _codes: dict[str, _Code] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _httpd: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> Self:
        handler = type("Handler", (_Handler,), {"oauth": self})
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        httpd.daemon_threads = True
        if self.ssl_context is not None:
            httpd.socket = self.ssl_context.wrap_socket(httpd.socket, server_side=True)
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="oauth-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._httpd = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- addresses ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._httpd is not None, "start the server first"
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """The login URL (what a national-cloud authority host would be)."""
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def token_endpoint(self, tenant: str = "common") -> str:
        return f"{self.base_url}/{tenant}/oauth2/v2.0/token"

    def authorization_endpoint(self, tenant: str = "common") -> str:
        return f"{self.base_url}/{tenant}/oauth2/v2.0/authorize"

    @property
    def introspection_url(self) -> str:
        return f"{self.base_url}/introspect"

    def device_endpoint(self, tenant: str = "common") -> str:
        return f"{self.base_url}/{tenant}/oauth2/v2.0/devicecode"

    # -- test controls -----------------------------------------------------------------

    def register(self, client: OAuthClient) -> OAuthClient:
        self.clients[client.client_id] = client
        return client

    def issue_refresh_token(self, client_id: str, scope: str, subject: str | None = None) -> str:
        """A refresh token as if the user had authorized ``client_id`` earlier."""
        with self._lock:
            return self._mint(client_id, scope, subject or self.authorize_as, "refresh")

    def issue_access_token(self, client_id: str, scope: str, subject: str | None = None) -> str:
        """An access token minted directly (for servers that introspect tokens: Dovecot, Graph)."""
        with self._lock:
            return self._mint(client_id, scope, subject or self.authorize_as, "access")

    def revoke(self, token: str) -> None:
        """A refresh token's next use gets invalid_grant; an access token introspects as inactive."""
        with self._lock:
            self.tokens[token].revoked = True

    def revoke_all_refresh_tokens(self) -> None:
        with self._lock:
            for info in self.tokens.values():
                if info.kind == "refresh":
                    info.revoked = True

    def approve_device(self, user_code: str, subject: str | None = None) -> None:
        with self._lock:
            for device in self._devices.values():
                if device.user_code == user_code:
                    device.approved_as = subject or self.authorize_as
                    return
        raise KeyError(user_code)

    def introspect(self, token: str) -> dict[str, Any]:
        """RFC 7662 style: ``{"active": false}`` for unknown, expired or revoked tokens."""
        with self._lock:
            info = self.tokens.get(token)
            if info is None or info.kind != "access" or not info.active():
                return {"active": False}
            return {
                "active": True,
                "scope": info.scope,
                "sub": info.subject,
                "username": info.subject,
                "email": info.subject,  # Dovecot's default username_attribute
                "client_id": info.client_id,
                "exp": int(info.expires_at),
                "token_type": "Bearer",
            }

    def access_tokens(self) -> list[str]:
        with self._lock:
            return [t for t, info in self.tokens.items() if info.kind == "access"]

    # -- internals ---------------------------------------------------------------------

    def _mint(self, client_id: str, scope: str, subject: str, kind: str) -> str:
        token = ("at-" if kind == "access" else "rt-") + secrets.token_urlsafe(24)
        self.tokens[token] = TokenInfo(client_id, scope, subject, time.time() + self.token_lifetime, kind)
        return token

    def _token_response(self, client_id: str, scope: str, subject: str, *, refresh: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "scope": scope,
            "expires_in": self.token_lifetime,
            "ext_expires_in": self.token_lifetime,
            "access_token": self._mint(client_id, scope, subject, "access"),
        }
        if refresh:
            body["refresh_token"] = self._mint(client_id, scope, subject, "refresh")
        return body

    def openid_configuration(self, tenant: str) -> dict[str, Any]:
        return {
            "issuer": f"{self.base_url}/{tenant}/v2.0",
            "authorization_endpoint": self.authorization_endpoint(tenant),
            "token_endpoint": self.token_endpoint(tenant),
            "device_authorization_endpoint": self.device_endpoint(tenant),
            "response_types_supported": ["code"],
            "grant_types_supported": [
                "authorization_code",
                "refresh_token",
                "client_credentials",
                _DEVICE_GRANT,
            ],
            "code_challenge_methods_supported": ["S256"],
        }

    def _authenticate(self, form: dict[str, str], headers: dict[str, str], url: str) -> OAuthClient | str:
        """The client making a token request, or an error description."""
        client_id = form.get("client_id", "")
        secret = form.get("client_secret")
        auth = headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            raw = base64.b64decode(auth[6:]).decode()
            client_id, _, secret = raw.partition(":")
        client = self.clients.get(client_id)
        if client is None:
            return f"AADSTS700016: application {client_id!r} was not found in the directory"
        if form.get("client_assertion_type") == _ASSERTION_TYPE:
            return self._check_assertion(client, form.get("client_assertion", ""), url)
        if client.secret is not None:
            if secret is None:
                return "AADSTS7000218: the request body must contain client_assertion or client_secret"
            if not secrets.compare_digest(secret, client.secret):
                return f"AADSTS7000215: invalid client secret provided for {client_id!r}"
        elif client.certificate_pem is not None:
            return "AADSTS7000218: the request body must contain client_assertion"
        return client

    def _check_assertion(self, client: OAuthClient, assertion: str, url: str) -> OAuthClient | str:
        if client.certificate_pem is None:
            return "AADSTS700027: no certificate is registered for this application"
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError as exc:
            return f"AADSTS50027: invalid JWT ({exc})"
        thumb = str(header.get("x5t#S256") or header.get("x5t") or "").rstrip("=")
        if thumb not in client.thumbprints():
            return "AADSTS700027: the certificate with the assertion's thumbprint is not registered"
        public_key = x509.load_pem_x509_certificate(client.certificate_pem).public_key()
        pem = public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        try:
            claims = jwt.decode(assertion, pem, algorithms=["PS256", "RS256"], audience=url)
        except jwt.PyJWTError as exc:
            return f"AADSTS700027: the assertion did not verify ({exc})"
        if claims.get("iss") != client.client_id or claims.get("sub") != client.client_id:
            return "AADSTS700027: iss and sub must be the client id"
        return client

    def handle_token(
        self, form: dict[str, str], headers: dict[str, str], url: str
    ) -> tuple[int, dict[str, Any]]:
        grant = form.get("grant_type", "")
        with self._lock:
            self.token_requests[grant] += 1
            self.token_requests["total"] += 1
            self.requests.append(dict(form))
            if self.fail_next:
                status, retry_after = self.fail_next.pop(0)
                extra = {} if retry_after is None else {"retry_after": retry_after}
                return status, {"error": "temporarily_unavailable", **extra}
            client = self._authenticate(form, headers, url)
            if isinstance(client, str):
                return 401, {"error": "invalid_client", "error_description": client}
            scope = form.get("scope", "")
            if grant == "client_credentials":
                if client.secret is None and client.certificate_pem is None:
                    return 400, {"error": "unauthorized_client", "error_description": "a public client"}
                return 200, self._token_response(client.client_id, scope, client.client_id, refresh=False)
            if grant == "refresh_token":
                info = self.tokens.get(form.get("refresh_token", ""))
                if (
                    info is None
                    or info.kind != "refresh"
                    or info.revoked
                    or info.client_id != client.client_id
                ):
                    return 400, {
                        "error": "invalid_grant",
                        "error_description": "AADSTS70008: the refresh token has expired or was revoked",
                    }
                if self.rotate_refresh_tokens:
                    info.revoked = True
                scope = scope or info.scope
                return 200, self._token_response(
                    client.client_id, scope, info.subject, refresh=self.rotate_refresh_tokens
                )
            if grant == "authorization_code":
                return self._redeem_code(client, form)
            if grant == _DEVICE_GRANT:
                device = self._devices.get(form.get("device_code", ""))
                if device is None or device.client_id != client.client_id or time.time() > device.expires_at:
                    return 400, {
                        "error": "expired_token",
                        "error_description": "unknown or expired device code",
                    }
                if device.approved_as is None:
                    return 400, {"error": "authorization_pending", "error_description": "not yet"}
                del self._devices[form["device_code"]]
                return 200, self._token_response(
                    client.client_id, device.scope, device.approved_as, refresh=True
                )
            return 400, {"error": "unsupported_grant_type", "error_description": grant}

    def _redeem_code(self, client: OAuthClient, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        code = self._codes.get(form.get("code", ""))
        bad = {"error": "invalid_grant", "error_description": "AADSTS70000: the code is invalid or was used"}
        if code is None or code.used or code.client_id != client.client_id:
            return 400, bad
        code.used = True
        if form.get("redirect_uri") != code.redirect_uri:
            return 400, {"error": "invalid_grant", "error_description": "redirect_uri does not match"}
        if code.challenge is not None:
            verifier = form.get("code_verifier", "")
            digest = _b64url(hashlib.sha256(verifier.encode()).digest())
            if code.challenge_method != "S256" or not secrets.compare_digest(digest, code.challenge):
                return 400, {"error": "invalid_grant", "error_description": "AADSTS501481: PKCE check failed"}
        return 200, self._token_response(client.client_id, code.scope, code.subject, refresh=True)

    def handle_authorize(self, query: dict[str, str]) -> tuple[int, str]:
        """A 302 Location (approved at once as ``authorize_as``), or 400 with a reason."""
        with self._lock:
            client = self.clients.get(query.get("client_id", ""))
            redirect = query.get("redirect_uri", "")
            host = urlsplit(redirect).hostname
            if client is None:
                return 400, "unknown client_id"
            if host not in ("127.0.0.1", "localhost"):
                return 400, "redirect_uri must be a loopback address in the tests"
            if query.get("response_type") != "code":
                return 400, "response_type must be code"
            if query.get("code_challenge_method", "S256") != "S256" or not query.get("code_challenge"):
                return 400, "PKCE (S256) is required"
            code = secrets.token_urlsafe(16)
            self._codes[code] = _Code(
                client.client_id,
                query.get("scope", ""),
                redirect,
                query.get("code_challenge"),
                query.get("code_challenge_method", "S256"),
                self.authorize_as,
            )
            params = {"code": code}
            if "state" in query:
                params["state"] = query["state"]
            return 302, f"{redirect}{'&' if '?' in redirect else '?'}{urlencode(params)}"

    def handle_devicecode(self, form: dict[str, str], tenant: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            if form.get("client_id") not in self.clients:
                return 400, {"error": "invalid_client", "error_description": "unknown client_id"}
            device_code = secrets.token_urlsafe(24)
            user_code = secrets.token_hex(4).upper()
            self._devices[device_code] = _Device(
                form["client_id"], form.get("scope", ""), user_code, time.time() + 900
            )
            uri = f"{self.base_url}/{tenant}/oauth2/v2.0/deviceauth"
            return 200, {
                "device_code": device_code,
                "user_code": user_code,
                "verification_uri": uri,
                "expires_in": 900,
                "interval": self.device_interval,
                "message": f"To sign in, open {uri} and enter the code {user_code}.",
            }


class _Handler(BaseHTTPRequestHandler):
    oauth: OAuthTestServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: requests carry secrets

    def _send(self, status: int, body: dict[str, Any] | str, headers: dict[str, str] | None = None) -> None:
        data = (json.dumps(body) if isinstance(body, dict) else body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if isinstance(body, dict) else "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _form(self) -> dict[str, str]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode() if length else ""
        return {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}

    def _parts(self) -> tuple[list[str], dict[str, str]]:
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        return [p for p in split.path.split("/") if p], query

    def _introspection(self, form: dict[str, str]) -> None:
        auth = self.headers.get("Authorization", "")
        token = form.get("token") or (auth[7:] if auth.lower().startswith("bearer ") else "")
        self._send(200, self.oauth.introspect(token))

    def do_GET(self) -> None:
        parts, query = self._parts()
        if parts == ["introspect"]:
            self._introspection(query)
        elif len(parts) == 4 and parts[1:] == ["v2.0", ".well-known", "openid-configuration"]:
            self._send(200, self.oauth.openid_configuration(parts[0]))
        elif len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "authorize"]:
            status, where = self.oauth.handle_authorize(query)
            if status == 302:
                self._send(302, "", {"Location": where})
            else:
                self._send(status, {"error": "invalid_request", "error_description": where})
        else:
            self._send(404, {"error": "not_found"})

    def do_POST(self) -> None:
        parts, _ = self._parts()
        form = self._form()
        if parts == ["introspect"]:
            self._introspection(form)
        elif len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "token"]:
            url = f"{self.oauth.base_url}/{'/'.join(parts)}"
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, body = self.oauth.handle_token(form, headers, url)
            extra = {"Retry-After": str(body["retry_after"])} if "retry_after" in body else None
            self._send(status, body, extra)
        elif len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "devicecode"]:
            self._send(*self.oauth.handle_devicecode(form, parts[0]))
        else:
            self._send(404, {"error": "not_found"})


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")
