"""OAuth2 for XOAUTH2 keys (Google, Microsoft, any RFC 6749 token endpoint), with Authlib over httpx.

* `refresh_tokens(...)`: the key's `TokenSource`, a refresh-token grant against the token
  endpoint (a rotated refresh token is kept in the key's token store).
* `authorize(...)`: the authorization-code grant with PKCE (S256) through a loopback
  redirect (127.0.0.1, a random port): prints the URL to open, waits for the browser to
  come back, and returns the refresh token (`Grant`).
* `device_authorize(...)`: the device authorization grant (RFC 8628) where the provider
  offers one: prints the code and the page to enter it on, polls at the server's interval.

Authlib does the protocol (request bodies, client authentication, PKCE challenge, state);
this module adds the loopback listener, the device polling loop Authlib has no client for,
and Mailwright's errors.
"""

from __future__ import annotations

import ssl
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import authlib.deprecate  # noqa: F401 - first, so its "always" filter is in place before ours
import httpx

from mailwright.errors import TargetAuthError, TargetTimeoutError, ValidationError
from mailwright.oauth.loopback import Loopback
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

with warnings.catch_warnings():
    # Authlib prefers the httpx2 package and warns when it falls back to httpx, which is ours.
    warnings.simplefilter("ignore", DeprecationWarning)
    from authlib.integrations.httpx_client import OAuth2Client, OAuthError

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
Verify = ssl.SSLContext | bool


def _client(
    client_id: str,
    client_secret: Secret | None,
    scopes: Sequence[str],
    *,
    verify: Verify,
    timeout: float,
    redirect_uri: str | None = None,
) -> Any:
    return OAuth2Client(
        client_id=client_id,
        client_secret=client_secret.reveal() if client_secret else None,
        token_endpoint_auth_method="client_secret_post" if client_secret else "none",
        scope=" ".join(scopes),
        redirect_uri=redirect_uri,
        code_challenge_method="S256",
        verify=verify,
        timeout=timeout,
        trust_env=False,
    )


def _token_call(key_name: str, endpoint: str, call: Callable[[], Any]) -> dict[str, Any]:
    """Run one Authlib token request, its failures as Mailwright errors."""
    try:
        token = call()
    except OAuthError as exc:
        raise refused(key_name, endpoint, str(exc.error or "error"), exc.description) from None
    except httpx.HTTPStatusError as exc:
        raise server_failed(
            key_name, endpoint, exc.response.status_code, exc.response.headers.get("Retry-After")
        ) from None
    except httpx.TransportError as exc:
        raise unreachable(key_name, endpoint, exc) from None
    if not isinstance(token, dict) or not token.get("access_token"):
        raise TargetAuthError(
            f"account key {key_name!r}: {endpoint} answered without an access token",
            hint="check that the token endpoint is an OAuth2 token endpoint",
        )
    return dict(token)


class RefreshTokenBackend:
    """The refresh-token grant (RFC 6749 section 6), a `TokenBackend`."""

    def __init__(
        self,
        key_name: str,
        token_endpoint: str,
        client_id: str,
        client_secret: Secret | None,
        scopes: Sequence[str],
        refresh_token: Secret,
        *,
        verify: Verify = True,
        timeout: float = 30.0,
    ) -> None:
        self.key_name = key_name
        self.endpoint = token_endpoint
        self._client_id = client_id
        self._client_secret = client_secret
        self._scopes = list(scopes)
        self._refresh_token = refresh_token
        self._rotated: Secret | None = None  # the provider's newer refresh token, if it rotates them
        self._verify = verify
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"RefreshTokenBackend(key={self.key_name!r}, endpoint={self.endpoint!r})"

    def fetch(self, *, force: bool) -> AccessToken:
        refresh_token = self._rotated or self._refresh_token
        with _client(
            self._client_id, self._client_secret, self._scopes, verify=self._verify, timeout=self._timeout
        ) as client:
            token = _token_call(
                self.key_name,
                self.endpoint,
                lambda: client.refresh_token(self.endpoint, refresh_token=refresh_token.reveal()),
            )
        new_refresh = token.get("refresh_token")
        if new_refresh and new_refresh != refresh_token.reveal():
            self._rotated = Secret(str(new_refresh))
        return AccessToken.from_response(str(token["access_token"]), token.get("expires_in"))

    def state(self) -> Any:
        return {"refresh_token": self._rotated.reveal()} if self._rotated else {}

    def restore(self, state: Any) -> None:
        if isinstance(state, dict) and isinstance(state.get("refresh_token"), str):
            self._rotated = Secret(state["refresh_token"])


def refresh_tokens(
    key_name: str,
    token_endpoint: str,
    client_id: str,
    client_secret: Secret | None,
    scopes: Sequence[str],
    refresh_token: Secret,
    store: TokenCacheStore | None,
    *,
    verify: Verify = True,
    timeout: float = 30.0,
) -> OAuthTokens:
    """The `TokenSource` of an XOAUTH2 key: access tokens from its refresh token."""
    if not refresh_token:
        raise ValidationError(
            f"account key {key_name!r} has no refresh token yet",
            hint=f"authorize it first: mailwright account-keys authorize {key_name}",
        )
    fp = fingerprint("refresh", token_endpoint, client_id, client_secret or "", sorted(scopes), refresh_token)
    return OAuthTokens(
        key_name,
        fp,
        lambda: RefreshTokenBackend(
            key_name,
            token_endpoint,
            client_id,
            client_secret,
            scopes,
            refresh_token,
            verify=verify,
            timeout=timeout,
        ),
        store,
    )


# -- authorization code with PKCE through a loopback redirect ----------------------------


def authorize(
    key_name: str,
    authorization_endpoint: str,
    token_endpoint: str,
    client_id: str,
    client_secret: Secret | None,
    scopes: Sequence[str],
    *,
    show: Callable[[str], None] = print,
    timeout: float = 300.0,
    verify: Verify = True,
    extra_params: dict[str, str] | None = None,
) -> Grant:
    """The authorization-code grant with PKCE (S256) through a loopback redirect.

    `show` gets the text to show the user (the URL to open). Blocks until the browser
    comes back to the loopback address, or `timeout` seconds. Google wants
    `extra_params={"access_type": "offline", "prompt": "consent"}` to issue a refresh token
    (`presets.GOOGLE.authorize_params`).
    """
    with (
        Loopback() as loopback,
        _client(
            client_id,
            client_secret,
            scopes,
            verify=verify,
            timeout=30.0,
            redirect_uri=loopback.redirect_uri,
        ) as client,
    ):
        verifier = _code_verifier()
        url, state = client.create_authorization_url(
            authorization_endpoint, code_verifier=verifier, **(extra_params or {})
        )
        show(f"Open this URL in a browser, sign in and consent:\n{url}")
        answer = loopback.wait(key_name, timeout)
        if answer.get("state") != state:
            raise TargetAuthError(
                f"account key {key_name!r}: the authorization answer does not match the request (state)",
                hint=f"run mailwright account-keys authorize {key_name} again, and open only the newest URL "
                "it shows",
            )
        if "error" in answer:
            raise refused(key_name, authorization_endpoint, answer["error"], answer.get("error_description"))
        token = _token_call(
            key_name,
            token_endpoint,
            lambda: client.fetch_token(
                token_endpoint,
                grant_type="authorization_code",
                code=answer["code"],
                code_verifier=verifier,
                redirect_uri=loopback.redirect_uri,
            ),
        )
    return grant_from(key_name, token_endpoint, token, scopes)


def device_authorize(
    key_name: str,
    device_endpoint: str,
    token_endpoint: str,
    client_id: str,
    client_secret: Secret | None,
    scopes: Sequence[str],
    *,
    show: Callable[[str], None] = print,
    timeout: float = 900.0,
    verify: Verify = True,
) -> Grant:
    """The device authorization grant (RFC 8628): shows a code and where to enter it, then polls."""
    with _client(client_id, client_secret, scopes, verify=verify, timeout=30.0) as client:
        form = {"client_id": client_id, "scope": " ".join(scopes)}
        if client_secret:
            form["client_secret"] = client_secret.reveal()
        try:
            resp = client.request("POST", device_endpoint, data=form, withhold_token=True)
        except httpx.TransportError as exc:
            raise unreachable(key_name, device_endpoint, exc) from None
        if resp.status_code >= 500:
            raise server_failed(key_name, device_endpoint, resp.status_code, resp.headers.get("Retry-After"))
        try:
            flow = resp.json()
        except ValueError:
            flow = {}
        if resp.status_code != 200 or "device_code" not in flow:
            raise refused(
                key_name,
                device_endpoint,
                str(flow.get("error", f"HTTP {resp.status_code}")),
                flow.get("error_description"),
            )
        where = (
            flow.get("verification_uri_complete")
            or flow.get("verification_uri")
            or flow.get("verification_url")
        )
        show(f"Open {where} and enter the code {flow.get('user_code')}")
        interval = float(flow.get("interval") or 5)
        deadline = time.monotonic() + min(timeout, float(flow.get("expires_in") or timeout))
        while True:
            try:
                token = client.fetch_token(
                    token_endpoint, grant_type=DEVICE_GRANT, device_code=flow["device_code"]
                )
            except OAuthError as exc:
                if exc.error == "authorization_pending":
                    pass
                elif exc.error == "slow_down":
                    interval += 5
                else:
                    raise refused(key_name, token_endpoint, str(exc.error), exc.description) from None
            except httpx.HTTPStatusError as exc:
                raise server_failed(
                    key_name,
                    token_endpoint,
                    exc.response.status_code,
                    exc.response.headers.get("Retry-After"),
                ) from None
            except httpx.TransportError as exc:
                raise unreachable(key_name, token_endpoint, exc) from None
            else:
                return grant_from(key_name, token_endpoint, dict(token), scopes)
            if time.monotonic() + interval > deadline:
                raise TargetTimeoutError(
                    f"account key {key_name!r}: the code was not entered in time",
                    hint=f"run mailwright account-keys authorize {key_name} again, and enter the code "
                    "before it expires",
                )
            time.sleep(interval)


def _code_verifier() -> str:
    from authlib.common.security import generate_token

    return str(generate_token(64))


__all__ = ["DEVICE_GRANT", "Grant", "RefreshTokenBackend", "authorize", "device_authorize", "refresh_tokens"]
