"""XOAUTH2 keys' access tokens: the refresh-token grant (Authlib) against the token server stand-in.

Caching, refresh ahead of expiry, one refresh for many concurrent callers, the store round
trip, invalid_grant, transient failures, and no token or secret in reprs, logs or errors.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from mailwright.errors import TargetAuthError, TargetConnectError, TargetDeferredError
from mailwright.oauth import tokens as tokens_module
from mailwright.oauth.generic import refresh_tokens
from mailwright.oauth.tokens import MemoryTokenStore, OAuthTokens, ReauthorizeKeyError, forget, refresh_margin
from mailwright.secrets import Secret
from mailwright.transport.base import Login, TokenSource
from tests.support.oauth_server import OAuthClient, OAuthTestServer
from tests.support.tlsfiles import TLSFiles

SCOPES = ["https://outlook.office.com/SMTP.Send", "offline_access"]
CLIENT_SECRET = "cl13nt-s3cret-value"


@pytest.fixture
def server() -> Iterator[OAuthTestServer]:
    with OAuthTestServer() as srv:
        srv.register(OAuthClient("xo-client", secret=CLIENT_SECRET))
        yield srv
    forget()


def source(server: OAuthTestServer, refresh_token: str, store: MemoryTokenStore | None = None) -> OAuthTokens:
    return refresh_tokens(
        "gmail-key",
        server.token_endpoint("tenant1"),
        "xo-client",
        Secret(CLIENT_SECRET),
        SCOPES,
        Secret(refresh_token),
        store,
    )


async def test_refresh_token_grant_gives_a_valid_access_token(server: OAuthTestServer) -> None:
    rt = server.issue_refresh_token("xo-client", " ".join(SCOPES))
    tokens = source(server, rt)
    token = await tokens.access_token()
    info = server.introspect(token.reveal())
    assert info["active"] is True and info["username"] == server.authorize_as
    assert await tokens.access_token() == token  # cached: no second request
    assert server.token_requests["refresh_token"] == 1
    assert server.requests[0]["client_secret"] == CLIENT_SECRET  # client_secret_post
    assert server.requests[0]["scope"] == " ".join(SCOPES)


async def test_concurrent_callers_share_one_refresh(server: OAuthTestServer) -> None:
    rt = server.issue_refresh_token("xo-client", " ".join(SCOPES))
    tokens = source(server, rt)
    got = await asyncio.gather(*(tokens.access_token() for _ in range(25)))
    assert len({t.reveal() for t in got}) == 1
    assert server.token_requests["refresh_token"] == 1
    # a second source for the same key (another run) shares the key's state
    assert await source(server, rt).access_token() == got[0]
    assert server.token_requests["refresh_token"] == 1
    # 25 callers whose token was refused: one forced refresh between them
    forced = await asyncio.gather(*(tokens.access_token(refresh=True) for _ in range(25)))
    assert len({t.reveal() for t in forced}) == 1 and forced[0] != got[0]
    assert server.token_requests["refresh_token"] == 2


async def test_single_flight_across_event_loops(server: OAuthTestServer) -> None:
    rt = server.issue_refresh_token("xo-client", " ".join(SCOPES))
    tokens = source(server, rt)

    def in_own_loop() -> str:
        return asyncio.run(tokens.access_token()).reveal()

    others = asyncio.gather(*(asyncio.to_thread(in_own_loop) for _ in range(4)))
    mine, theirs = await asyncio.gather(tokens.access_token(), others)
    assert set(theirs) == {mine.reveal()}
    assert server.token_requests["refresh_token"] == 1


async def test_refreshed_ahead_of_expiry(server: OAuthTestServer, monkeypatch: pytest.MonkeyPatch) -> None:
    server.token_lifetime = 1200
    assert refresh_margin(1200) == 300 and refresh_margin(3600) == 300 and refresh_margin(60) == 15
    clock = SimpleNamespace(now=time.time())
    monkeypatch.setattr(tokens_module, "time", SimpleNamespace(time=lambda: clock.now))
    tokens = source(server, server.issue_refresh_token("xo-client", " ".join(SCOPES)))
    first = await tokens.access_token()
    clock.now += 1200 - 300 - 5  # 5 s before the refresh margin: still the same token
    assert await tokens.access_token() == first
    assert server.token_requests["refresh_token"] == 1
    clock.now += 10  # inside the last 5 minutes, not yet expired: refreshed ahead
    second = await tokens.access_token()
    assert second != first
    assert server.token_requests["refresh_token"] == 2


async def test_rotated_refresh_token_and_cache_survive_a_restart(server: OAuthTestServer) -> None:
    server.rotate_refresh_tokens = True
    original = server.issue_refresh_token("xo-client", " ".join(SCOPES))
    store = MemoryTokenStore()
    first = await source(server, original, store).access_token()
    assert store.saves == 1 and store.blob is not None
    doc = json.loads(store.blob)
    assert doc["access_token"] == first.reveal() and doc["backend"]["refresh_token"] != original

    forget("gmail-key")  # as after a restart: nothing in memory
    again = source(server, original, store)
    assert await again.access_token() == first  # from the store, no token request
    assert server.token_requests["refresh_token"] == 1

    forget("gmail-key")
    await source(server, original, store).access_token(refresh=True)
    # the original refresh token was rotated away (revoked): the stored one was used
    assert server.token_requests["refresh_token"] == 2
    assert server.requests[-1]["refresh_token"] == doc["backend"]["refresh_token"]


async def test_a_reconfigured_key_ignores_the_old_cache(server: OAuthTestServer) -> None:
    store = MemoryTokenStore()
    await source(server, server.issue_refresh_token("xo-client", "a"), store).access_token()
    forget()
    await source(server, server.issue_refresh_token("xo-client", "a"), store).access_token()
    assert server.token_requests["refresh_token"] == 2


async def test_revoked_refresh_token_says_reauthorize_and_is_not_retried(server: OAuthTestServer) -> None:
    rt = server.issue_refresh_token("xo-client", " ".join(SCOPES))
    server.revoke(rt)
    tokens = source(server, rt)
    with pytest.raises(ReauthorizeKeyError) as caught:
        await tokens.access_token()
    err = caught.value
    assert "re-authorize this key: mailwright account-keys authorize gmail-key" in str(err)
    assert "invalid_grant" in err.message and server.token_endpoint("tenant1") in err.message
    assert err.transient is False and err.details()["code"] == "reauthorize_key"
    assert server.token_requests["refresh_token"] == 1  # one request, no retry loop


async def test_wrong_client_secret_names_what_to_check(server: OAuthTestServer) -> None:
    rt = server.issue_refresh_token("xo-client", " ".join(SCOPES))
    tokens = refresh_tokens(
        "k2", server.token_endpoint(), "xo-client", Secret("wrong-secret"), SCOPES, Secret(rt), None
    )
    with pytest.raises(TargetAuthError) as caught:
        await tokens.access_token()
    assert not isinstance(caught.value, ReauthorizeKeyError)
    assert "invalid_client" in str(caught.value) and "client secret" in str(caught.value)


async def test_server_errors_are_transient_and_name_the_endpoint(server: OAuthTestServer) -> None:
    rt = server.issue_refresh_token("xo-client", " ".join(SCOPES))
    server.fail_next.append((503, 7))
    tokens = source(server, rt)
    with pytest.raises(TargetDeferredError) as caught:
        await tokens.access_token()
    assert caught.value.transient and caught.value.retry_after == 7
    assert server.token_endpoint("tenant1") in caught.value.message
    assert await tokens.access_token()  # the next attempt works


async def test_unreachable_endpoint_is_transient() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/t/oauth2/v2.0/token"
    tokens = refresh_tokens("k3", url, "c", None, SCOPES, Secret("rt-xyz-abc"), None, timeout=5)
    with pytest.raises(TargetConnectError) as caught:
        await tokens.access_token()
    assert caught.value.transient and url in caught.value.message
    forget()


async def test_no_token_or_secret_in_reprs_logs_or_errors(
    server: OAuthTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rt = server.issue_refresh_token("xo-client", " ".join(SCOPES))
    store = MemoryTokenStore()
    tokens = source(server, rt, store)
    token = await tokens.access_token()
    await tokens.access_token(refresh=True)
    server.revoke_all_refresh_tokens()
    with pytest.raises(ReauthorizeKeyError) as caught:
        await tokens.access_token(refresh=True)
    texts = [
        repr(tokens),
        repr(store),
        repr(token),
        str(token),
        str(caught.value),
        json.dumps(caught.value.details()),
    ]
    texts.append(caplog.text)
    secrets = [rt, CLIENT_SECRET, token.reveal(), *server.access_tokens()]
    secrets += [t for t, info in server.tokens.items() if info.kind == "refresh"]
    for text in texts:
        for secret in secrets:
            assert secret not in text


async def test_unreadable_store_costs_one_request(server: OAuthTestServer) -> None:
    class Broken(MemoryTokenStore):
        def load(self) -> str | None:
            raise RuntimeError("cannot decrypt")

    store = Broken()
    tokens = source(server, server.issue_refresh_token("xo-client", "a"), store)
    assert await tokens.access_token()
    assert store.saves == 1


def test_introspection_endpoint(server: OAuthTestServer) -> None:
    import httpx

    token = server.issue_access_token("xo-client", "s", "bob@example.test")
    posted = httpx.post(server.introspection_url, data={"token": token}).json()
    assert posted["active"] and posted["email"] == "bob@example.test"
    bearer = httpx.get(server.introspection_url, headers={"Authorization": f"Bearer {token}"}).json()
    assert bearer["username"] == "bob@example.test"
    assert httpx.get(server.introspection_url, params={"token": "nope"}).json() == {"active": False}


async def test_over_https_as_a_login_token_source(tls_files: TLSFiles) -> None:
    with OAuthTestServer(ssl_context=tls_files.server_context()) as srv:
        srv.register(OAuthClient("xo-client", secret=CLIENT_SECRET))
        rt = srv.issue_refresh_token("xo-client", "https://mail.google.com/")
        tokens: TokenSource = refresh_tokens(
            "gmail-key", srv.token_endpoint(), "xo-client", Secret(CLIENT_SECRET), ["https://mail.google.com/"],
            Secret(rt), None, verify=tls_files.client_context(),
        )  # fmt: skip
        login = Login("gmail-key", "user@example.test", Secret(""), tokens=tokens)
        assert login.tokens is not None
        token = await login.tokens.access_token()
        assert srv.introspect(token.reveal())["scope"] == "https://mail.google.com/"
    forget()
