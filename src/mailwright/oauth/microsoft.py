"""Microsoft identity platform tokens with msal (Microsoft Graph keys; Microsoft XOAUTH2 keys).

* `graph_tokens(...)`: the `TokenSource` of an "OAuth2 Microsoft Graph Credentials" key,
  the client-credentials grant against `{login_url}/{tenant}/oauth2/v2.0/token` with a
  client secret or a certificate (client assertion signed with its private key, the
  certificate's SHA-256 thumbprint in the JWT header).
* `load_certificate(pem)`: splits and checks a PEM holding the private key and the
  certificate, and gives the thumbprints Entra ID shows.
* `device_authorize_microsoft(...)` / `authorize_microsoft(...)`: device code and
  authorization code with PKCE (loopback redirect) with msal, for Microsoft XOAUTH2 keys:
  they return the refresh token the key keeps.

msal's own token cache (`SerializableTokenCache`) is serialized into the key's token
store with the access token. msal talks through an httpx client (`_MsalHttp`), so a
custom login URL (a national cloud not known to msal, or the tests' stand-in) is trusted
with the same `ssl.SSLContext` rules as the rest of Mailwright; msal's authority
validation and instance discovery are turned off only for hosts it does not know.
"""

from __future__ import annotations

import ssl
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailwright.errors import TargetAuthError, TargetError, TargetTimeoutError, ValidationError
from mailwright.oauth.loopback import Loopback
from mailwright.oauth.presets import MICROSOFT_CLOUDS, graph_scopes
from mailwright.oauth.tokens import (
    AccessToken,
    Grant,
    OAuthTokens,
    TokenCacheStore,
    fingerprint,
    grant_from,
    refused,
    server_failed,
    unreachable,
)
from mailwright.secrets import Secret

Verify = ssl.SSLContext | bool

# msal skips authority validation for these hosts on its own (msal.authority.WELL_KNOWN_AUTHORITY_HOSTS)
_KNOWN_LOGIN_HOSTS = frozenset({cloud.login_url.split("//", 1)[1] for cloud in MICROSOFT_CLOUDS.values()}) | {
    "login.microsoft.com",
    "login.windows.net",
    "login.partner.microsoftonline.cn",
}


# -- certificates -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CertificateCredential:
    """A certificate for the client-assertion flow: PEM key and certificate, and thumbprints."""

    private_key_pem: Secret
    certificate_pem: str
    thumbprint_sha1: str  # hex, upper case: as Entra ID lists it under Certificates & secrets
    thumbprint_sha256: str
    not_after: str

    def __repr__(self) -> str:
        return f"CertificateCredential(thumbprint_sha1={self.thumbprint_sha1!r})"


def load_certificate(pem: Secret | str, passphrase: Secret | None = None) -> CertificateCredential:
    """Split a PEM holding the private key and the certificate (the key's `--certificate FILE`)
    and check that they belong together."""
    text = pem.reveal() if isinstance(pem, Secret) else pem
    data = text.encode()
    hint = (
        "give one PEM file with the private key and the certificate uploaded to the app registration "
        "(openssl pkcs12 -in cert.pfx -out cert.pem -nodes converts a .pfx)"
    )
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValidationError(
            "the certificate file holds no PEM certificate", field="certificate", hint=hint
        ) from None
    key_block = _pem_block(text, "PRIVATE KEY")
    if key_block is None:
        raise ValidationError("the certificate file holds no private key", field="certificate", hint=hint)
    try:
        key = serialization.load_pem_private_key(
            key_block.encode(), password=passphrase.reveal().encode() if passphrase else None
        )
    except (ValueError, TypeError) as exc:
        raise ValidationError(
            f"the private key cannot be read ({exc})",
            field="certificate",
            hint="an encrypted key needs its passphrase; or give the key unencrypted",
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValidationError(
            f"the private key is {type(key).__name__.removeprefix('_')}; Entra ID client assertions need RSA",
            field="certificate",
            hint=hint,
        )
    cert = next((c for c in certs if _same_key(c, key)), None)
    if cert is None:
        raise ValidationError(
            "no certificate in the file matches its private key", field="certificate", hint=hint
        )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return CertificateCredential(
        private_key_pem=Secret(key_pem),
        certificate_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
        thumbprint_sha1=cert.fingerprint(hashes.SHA1()).hex().upper(),  # noqa: S303 - Entra's display
        thumbprint_sha256=cert.fingerprint(hashes.SHA256()).hex().upper(),
        not_after=cert.not_valid_after_utc.isoformat(),
    )


def _pem_block(text: str, label_suffix: str) -> str | None:
    start = text.find("-----BEGIN ")
    while start != -1:
        line_end = text.find("-----", start + 11)
        label = text[start + 11 : line_end]
        end_marker = f"-----END {label}-----"
        end = text.find(end_marker, line_end)
        if end == -1:
            return None
        if label.endswith(label_suffix):
            return text[start : end + len(end_marker)]
        start = text.find("-----BEGIN ", end)
    return None


def _same_key(cert: x509.Certificate, key: rsa.RSAPrivateKey) -> bool:
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    return bool(cert.public_key().public_bytes(enc, fmt) == key.public_key().public_bytes(enc, fmt))


# -- msal over httpx --------------------------------------------------------------------


class _MsalHttp:
    """msal's HttpClient interface (`post`, `get`, `close`) over an httpx client."""

    def __init__(self, verify: Verify, timeout: float) -> None:
        self._client = httpx.Client(verify=verify, timeout=timeout, trust_env=False)

    @staticmethod
    def _headers(headers: dict[str, Any] | None) -> dict[str, str]:
        return {k: str(v) for k, v in (headers or {}).items() if v is not None}

    def post(
        self,
        url: str,
        params: dict[str, Any] | None = None,
        data: Any = None,
        headers: dict[str, Any] | None = None,
        **_: Any,
    ) -> httpx.Response:
        if isinstance(data, str | bytes):
            return self._client.post(url, params=params, content=data, headers=self._headers(headers))
        # msal may give bytes values (a signed client assertion); httpx would send their repr
        form = {
            k: v.decode() if isinstance(v, bytes) else v for k, v in (data or {}).items() if v is not None
        }
        return self._client.post(url, params=params, data=form, headers=self._headers(headers))

    def get(
        self, url: str, params: dict[str, Any] | None = None, headers: dict[str, Any] | None = None, **_: Any
    ) -> httpx.Response:
        return self._client.get(url, params=params, headers=self._headers(headers))

    def close(self) -> None:
        self._client.close()


def _authority_options(login_url: str) -> dict[str, Any]:
    host = (urlsplit(login_url).hostname or "").lower()
    if host in _KNOWN_LOGIN_HOSTS:
        return {}
    return {"validate_authority": False, "instance_discovery": False}


def _msal_call(key_name: str, endpoint: str, call: Callable[[], Any]) -> Any:
    """Run an msal call; its failures as Mailwright errors."""
    from msal.exceptions import MsalServiceError

    try:
        return call()
    except httpx.TransportError as exc:
        raise unreachable(key_name, endpoint, exc) from None
    except MsalServiceError as exc:  # msal's answer to a 5xx (or a throttled repeat of one)
        status = _status_of(str(exc))
        raise server_failed(key_name, endpoint, status, None) from None
    except ValueError as exc:  # tenant discovery: an unknown tenant or a wrong login URL
        raise TargetAuthError(
            f"account key {key_name!r}: {endpoint} does not know this tenant or is no Microsoft "
            "login endpoint",
            hint="check the key's tenant id (a GUID or contoso.onmicrosoft.com) and the login URL or cloud",
        ) from exc


def _status_of(text: str) -> int:
    digits = "".join(ch for ch in text.rsplit(":", 1)[-1] if ch.isdigit())
    return int(digits) if digits else 503


def _result(key_name: str, endpoint: str, result: Any) -> dict[str, Any]:
    if not isinstance(result, dict):
        raise TargetError(f"account key {key_name!r}: {endpoint} gave no answer", hint="try again later")
    if "access_token" not in result:
        raise refused(
            key_name, endpoint, str(result.get("error") or "error"), result.get("error_description")
        )
    return result


# -- client credentials (Graph keys) ----------------------------------------------------


class ClientCredentialsBackend:
    """The client-credentials grant with msal, a `TokenBackend`."""

    def __init__(
        self,
        key_name: str,
        tenant_id: str,
        client_id: str,
        client_secret: Secret | None,
        certificate: CertificateCredential | None,
        login_url: str,
        scopes: Sequence[str],
        *,
        verify: Verify = True,
        timeout: float = 30.0,
    ) -> None:
        import msal

        self.key_name = key_name
        self.authority = f"{login_url.rstrip('/')}/{tenant_id}"
        self.endpoint = f"{self.authority}/oauth2/v2.0/token"
        self._client_id = client_id
        self._secret = client_secret
        self._certificate = certificate
        self._scopes = list(scopes)
        self._verify = verify
        self._timeout = timeout
        self._cache = msal.SerializableTokenCache()
        self._app: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ClientCredentialsBackend(key={self.key_name!r}, authority={self.authority!r})"

    def _credential(self) -> Any:
        if self._certificate is not None:
            return {
                "private_key": self._certificate.private_key_pem.reveal(),
                "public_certificate": self._certificate.certificate_pem,
            }
        assert self._secret is not None
        return self._secret.reveal()

    def _application(self) -> Any:
        import msal

        if self._app is None:
            self._app = _msal_call(
                self.key_name,
                self.authority,
                lambda: msal.ConfidentialClientApplication(
                    self._client_id,
                    client_credential=self._credential(),
                    authority=self.authority,
                    token_cache=self._cache,
                    http_client=_MsalHttp(self._verify, self._timeout),
                    azure_region=False,
                    **_authority_options(self.authority),
                ),
            )
        return self._app

    def fetch(self, *, force: bool) -> AccessToken:
        with self._lock:
            app = self._application()
            if force:
                app.remove_tokens_for_client()
            result = _result(
                self.key_name,
                self.endpoint,
                _msal_call(
                    self.key_name, self.endpoint, lambda: app.acquire_token_for_client(scopes=self._scopes)
                ),
            )
            return AccessToken.from_response(str(result["access_token"]), result.get("expires_in"))

    def state(self) -> Any:
        with self._lock:
            return self._cache.serialize()

    def restore(self, state: Any) -> None:
        if isinstance(state, str) and state:
            with self._lock:
                self._cache.deserialize(state)


def graph_tokens(
    key_name: str,
    tenant_id: str,
    client_id: str,
    client_secret: Secret | None,
    certificate_pem: Secret | None,
    login_url: str,
    scopes: Sequence[str] | None,
    store: TokenCacheStore | None,
    *,
    graph_url: str = MICROSOFT_CLOUDS["global"].graph_url,
    verify: Verify = True,
    timeout: float = 30.0,
) -> OAuthTokens:
    """The `TokenSource` of an "OAuth2 Microsoft Graph Credentials" key (client credentials).

    Exactly one of `client_secret` and `certificate_pem` (one PEM: private key and
    certificate). `scopes` None means `{graph_url}/.default` (the application permissions
    granted to the app). `login_url` is the cloud's (`presets.MICROSOFT_CLOUDS[...]`) or an
    explicit override.
    """
    if bool(client_secret) == bool(certificate_pem):
        raise ValidationError(
            f"account key {key_name!r} needs either a client secret or a certificate",
            field="client_secret",
            hint="give --client-secret-stdin, --client-secret-env VAR, or --certificate FILE (one of them)",
        )
    certificate = load_certificate(certificate_pem) if certificate_pem else None
    scope_list = list(scopes) if scopes else graph_scopes(graph_url)
    fp = fingerprint(
        "graph", tenant_id, client_id, client_secret or "", certificate_pem or "", login_url, scope_list
    )
    return OAuthTokens(
        key_name,
        fp,
        lambda: ClientCredentialsBackend(
            key_name,
            tenant_id,
            client_id,
            client_secret,
            certificate,
            login_url,
            scope_list,
            verify=verify,
            timeout=timeout,
        ),
        store,
    )


# -- user flows for Microsoft XOAUTH2 keys (they return the refresh token to keep) -------------

_MSAL_RESERVED = frozenset({"openid", "profile", "offline_access"})  # msal adds these itself


def _public_app(key_name: str, tenant: str, client_id: str, login_url: str, verify: Verify) -> Any:
    import msal

    authority = f"{login_url.rstrip('/')}/{tenant}"
    return _msal_call(
        key_name,
        authority,
        lambda: msal.PublicClientApplication(
            client_id,
            authority=authority,
            http_client=_MsalHttp(verify, 30.0),
            **_authority_options(authority),
        ),
    )


def authorize_microsoft(
    key_name: str,
    tenant: str,
    client_id: str,
    scopes: Sequence[str],
    *,
    login_url: str = MICROSOFT_CLOUDS["global"].login_url,
    show: Callable[[str], None] = print,
    timeout: float = 300.0,
    verify: Verify = True,
) -> Grant:
    """Authorization code with PKCE through a loopback redirect, with msal (a public client:
    the app registration needs the loopback redirect URI `http://127.0.0.1` under "Mobile and
    desktop applications"; the port varies). Blocks until the browser comes back or `timeout`
    seconds."""
    wanted = [s for s in scopes if s not in _MSAL_RESERVED]
    app = _public_app(key_name, tenant, client_id, login_url, verify)
    endpoint = str(app.authority.token_endpoint)
    with Loopback() as loopback:
        with warnings.catch_warnings():
            # msal recommends response_mode=form_post; a loopback listener on this machine takes
            # the code from the query as RFC 8252 describes, and PKCE binds it to this process
            warnings.filterwarnings("ignore", "response_mode='form_post'", UserWarning)
            flow = app.initiate_auth_code_flow(wanted, redirect_uri=loopback.redirect_uri)
        show(f"Open this URL in a browser, sign in and consent:\n{flow['auth_uri']}")
        answer = loopback.wait(key_name, timeout)
        if "error" in answer:
            where = str(app.authority.authorization_endpoint)
            raise refused(key_name, where, answer["error"], answer.get("error_description"))
        if answer.get("state") != flow.get("state"):
            raise TargetAuthError(
                f"account key {key_name!r}: the authorization answer does not match the request (state)",
                hint=f"run mailwright account-keys authorize {key_name} again, and open only the newest URL",
            )
        result = _msal_call(key_name, endpoint, lambda: app.acquire_token_by_auth_code_flow(flow, answer))
    return grant_from(key_name, endpoint, _result(key_name, endpoint, result), wanted)


def device_authorize_microsoft(
    key_name: str,
    tenant: str,
    client_id: str,
    scopes: Sequence[str],
    *,
    login_url: str = MICROSOFT_CLOUDS["global"].login_url,
    show: Callable[[str], None] = print,
    timeout: float = 900.0,
    verify: Verify = True,
) -> Grant:
    """The device code flow with msal (the app registration must allow public client flows):
    shows msal's message (the code and where to enter it), then polls until it is entered."""
    wanted = [s for s in scopes if s not in _MSAL_RESERVED]
    app = _public_app(key_name, tenant, client_id, login_url, verify)
    endpoint = str(app.authority.token_endpoint)
    flow = _msal_call(key_name, endpoint, lambda: app.initiate_device_flow(scopes=wanted))
    if "user_code" not in flow:
        raise refused(key_name, endpoint, str(flow.get("error") or "error"), flow.get("error_description"))
    show(str(flow.get("message") or f"Open {flow.get('verification_uri')} and enter {flow['user_code']}"))
    deadline = time.monotonic() + timeout
    result = _msal_call(
        key_name,
        endpoint,
        lambda: app.acquire_token_by_device_flow(
            flow, exit_condition=lambda f: time.monotonic() > deadline or f.get("expires_at", 0) < time.time()
        ),
    )
    if isinstance(result, dict) and result.get("error") in ("authorization_pending", "slow_down"):
        raise TargetTimeoutError(
            f"account key {key_name!r}: the code was not entered within {timeout:.0f} s",
            hint=f"run mailwright account-keys authorize {key_name} again, and enter the code "
            "before it expires",
        )
    return grant_from(key_name, endpoint, _result(key_name, endpoint, result), wanted)


__all__ = [
    "CertificateCredential",
    "ClientCredentialsBackend",
    "authorize_microsoft",
    "device_authorize_microsoft",
    "graph_tokens",
    "load_certificate",
]
