"""OAuth2 token machinery for account keys: Microsoft Graph credentials and XOAUTH2 keys.

This package sits beside `transport`: it imports only config/logs/secrets/errors below it,
and what it gives the layers above is a `transport.base.TokenSource` (`tokens.OAuthTokens`)
to put in `Login.tokens`. Importing `mailwright.oauth` itself costs nothing; msal and
Authlib load with the submodules that use them.

The calls the account-key types make (all `Secret` arguments stay masked everywhere)::

    from mailwright.oauth.microsoft import graph_tokens, load_certificate
    graph_tokens(key_name, tenant_id, client_id, client_secret: Secret | None,
                 certificate_pem: Secret | None, login_url, scopes: Sequence[str] | None,
                 store: TokenCacheStore | None, *, graph_url=..., verify=True, timeout=30.0)
        -> OAuthTokens                      # client credentials with msal (secret or certificate)
    load_certificate(pem: Secret | str, passphrase: Secret | None = None)
        -> CertificateCredential            # check a --certificate FILE; .thumbprint_sha1 as Entra shows it

    from mailwright.oauth.microsoft import authorize_microsoft, device_authorize_microsoft
    authorize_microsoft(key_name, tenant, client_id, scopes, *, login_url=..., show=print,
                        timeout=300.0, verify=True) -> Grant    # msal, PKCE, loopback (blocking)
    device_authorize_microsoft(key_name, tenant, client_id, scopes, *, login_url=..., show=print,
                               timeout=900.0, verify=True) -> Grant  # msal device code (blocking)

    from mailwright.oauth.generic import refresh_tokens, authorize, device_authorize
    refresh_tokens(key_name, token_endpoint, client_id, client_secret: Secret | None,
                   scopes, refresh_token: Secret, store, *, verify=True, timeout=30.0)
        -> OAuthTokens                      # XOAUTH2: refresh-token grant with Authlib
    authorize(key_name, authorization_endpoint, token_endpoint, client_id, client_secret,
              scopes, *, show=print, timeout=300.0, verify=True, extra_params=None) -> Grant
        # authorization code + PKCE (S256) via a loopback redirect on 127.0.0.1 (blocking)
    device_authorize(key_name, device_endpoint, token_endpoint, client_id, client_secret,
                     scopes, *, show=print, timeout=900.0, verify=True) -> Grant
        # RFC 8628 device code (blocking); Grant.refresh_token goes into the key

    from mailwright.oauth.tokens import OAuthTokens, TokenCacheStore, MemoryTokenStore, Grant, forget
    Grant(refresh_token: Secret, access_token: AccessToken, scope: str)   # what authorizing gives
    await tokens.access_token(refresh=False) -> Secret   # the TokenSource protocol
    forget(key_name)                                       # after a key is changed or deleted

    from mailwright.oauth.presets import GOOGLE, MICROSOFT, microsoft(tenant, login_url),
        MICROSOFT_CLOUDS["global"|"usgov"|"usgov-dod"|"china"] (.login_url, .graph_url), graph_scopes(url)

`TokenCacheStore` is sync (`load() -> str | None`, `save(blob: str) -> None`), called on
the event loop's thread; the blob holds the access token (and msal's cache, or a rotated
refresh token), so the services must encrypt it. Errors: `tokens.ReauthorizeKeyError`
(a `TargetAuthError`, code `reauthorize_key`) for `invalid_grant`, never retried; other
refusals `TargetAuthError`; unreachable endpoints and 5xx answers transient
(`TargetConnectError`, `TargetTimeoutError`, `TargetDeferredError` with `retry_after`).
See `tokens` for when tokens are refreshed.
"""
