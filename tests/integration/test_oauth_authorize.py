"""Obtaining a refresh token: authorization code with PKCE through the loopback redirect, and
the device code flow, against the token server stand-in (the "browser" is httpx)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from mailwright.errors import TargetAuthError, TargetTimeoutError
from mailwright.oauth.generic import authorize, device_authorize, refresh_tokens
from mailwright.oauth.microsoft import authorize_microsoft, device_authorize_microsoft
from mailwright.oauth.tokens import forget
from mailwright.secrets import Secret
from tests.support.oauth_server import OAuthClient, OAuthTestServer
from tests.support.tlsfiles import TLSFiles

SCOPES = ["https://outlook.office.com/IMAP.AccessAsUser.All", "offline_access"]


@pytest.fixture
def server() -> Iterator[OAuthTestServer]:
    with OAuthTestServer() as srv:
        srv.register(OAuthClient("desktop-app"))  # a public client: PKCE, no secret
        srv.register(OAuthClient("web-app", secret="w3b-secret"))
        yield srv
    forget()


def url_in(text: str) -> str:
    found = re.search(r"https?://\S+", text)
    assert found, text
    return found.group(0)


def browser(shown: list[str]) -> None:
    """The user's browser: open the URL, follow the redirect back to the loopback listener."""
    resp = httpx.get(url_in(shown[-1]), follow_redirects=True, timeout=10)
    assert resp.status_code == 200 and "authorization received" in resp.text


async def test_pkce_loopback_gives_a_working_refresh_token(server: OAuthTestServer) -> None:
    shown: list[str] = []

    def show(text: str) -> None:
        shown.append(text)
        browser(shown)

    grant = authorize(
        "ms-key", server.authorization_endpoint(), server.token_endpoint(), "desktop-app", None, SCOPES,
        show=show, timeout=10,
    )  # fmt: skip
    query = parse_qs(urlsplit(url_in(shown[0])).query)
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) == 43
    assert query["redirect_uri"][0].startswith("http://127.0.0.1:")
    sent = server.requests[-1]
    assert sent["grant_type"] == "authorization_code" and len(sent["code_verifier"]) >= 43
    assert server.introspect(grant.access_token.value.reveal())["active"]
    assert grant.refresh_token.reveal() not in repr(grant)
    # the refresh token works for the key's TokenSource
    tokens = refresh_tokens(
        "ms-key", server.token_endpoint(), "desktop-app", None, SCOPES, grant.refresh_token, None
    )
    assert server.introspect((await tokens.access_token()).reveal())["active"]


def test_confidential_client_and_extra_params(server: OAuthTestServer) -> None:
    shown: list[str] = []

    def show(text: str) -> None:
        shown.append(text)
        browser(shown)

    authorize(
        "g-key", server.authorization_endpoint(), server.token_endpoint(), "web-app", Secret("w3b-secret"),
        SCOPES,
        show=show, timeout=10, extra_params={"access_type": "offline", "prompt": "consent"},
    )  # fmt: skip
    query = parse_qs(urlsplit(url_in(shown[0])).query)
    assert query["access_type"] == ["offline"] and query["prompt"] == ["consent"]
    assert server.requests[-1]["client_secret"] == "w3b-secret"


def test_authorization_error_and_timeout(server: OAuthTestServer) -> None:
    def deny(text: str) -> None:
        query = parse_qs(urlsplit(url_in(text)).query)
        back = f"{query['redirect_uri'][0]}?error=access_denied&error_description=the+user+said+no"
        httpx.get(f"{back}&state={query['state'][0]}", timeout=10)

    with pytest.raises(TargetAuthError, match="access_denied: the user said no"):
        authorize(
            "k", server.authorization_endpoint(), server.token_endpoint(), "desktop-app", None, SCOPES,
            show=deny, timeout=10,
        )  # fmt: skip
    with pytest.raises(TargetTimeoutError, match="no authorization came back"):
        authorize(
            "k", server.authorization_endpoint(), server.token_endpoint(), "desktop-app", None, SCOPES,
            show=lambda _t: None, timeout=0.2,
        )  # fmt: skip


def test_wrong_state_is_refused(server: OAuthTestServer) -> None:
    def forged(text: str) -> None:
        query = parse_qs(urlsplit(url_in(text)).query)
        httpx.get(f"{query['redirect_uri'][0]}?code=abc&state=forged", timeout=10)

    with pytest.raises(TargetAuthError, match="state"):
        authorize(
            "k", server.authorization_endpoint(), server.token_endpoint(), "desktop-app", None, SCOPES,
            show=forged, timeout=10,
        )  # fmt: skip


def test_device_code(server: OAuthTestServer) -> None:
    shown: list[str] = []

    def show(text: str) -> None:
        shown.append(text)
        server.approve_device(text.rsplit(" ", 1)[-1])  # the user enters the code

    grant = device_authorize(
        "dev-key", server.device_endpoint(), server.token_endpoint(), "desktop-app", None, SCOPES,
        show=show, timeout=10,
    )  # fmt: skip
    assert "deviceauth" in shown[0]
    assert server.introspect(grant.access_token.value.reveal())["active"]
    assert server.token_requests["urn:ietf:params:oauth:grant-type:device_code"] == 1


def test_device_code_polls_until_approved(server: OAuthTestServer) -> None:
    codes: list[str] = []
    original = server.handle_token

    def approve_on_second_poll(form: dict[str, str], headers: dict[str, str], url: str) -> object:
        if server.token_requests["urn:ietf:params:oauth:grant-type:device_code"] == 1:
            server.approve_device(codes[0])
        return original(form, headers, url)

    server.handle_token = approve_on_second_poll  # type: ignore[assignment, method-assign]
    grant = device_authorize(
        "dev-key", server.device_endpoint(), server.token_endpoint(), "desktop-app", None, SCOPES,
        show=lambda t: codes.append(t.rsplit(" ", 1)[-1]), timeout=10,
    )  # fmt: skip
    assert grant.refresh_token
    assert server.token_requests["urn:ietf:params:oauth:grant-type:device_code"] == 2


# -- the same with msal, for Microsoft keys (https: msal insists) -------------------------------


@pytest.fixture
def ms_server(tls_files: TLSFiles) -> Iterator[OAuthTestServer]:
    with OAuthTestServer(ssl_context=tls_files.server_context()) as srv:
        srv.register(OAuthClient("ms-desktop"))
        yield srv
    forget()


def test_msal_auth_code_with_pkce(ms_server: OAuthTestServer, tls_files: TLSFiles) -> None:
    shown: list[str] = []

    def show(text: str) -> None:
        shown.append(text)
        resp = httpx.get(url_in(text), follow_redirects=True, timeout=10, verify=tls_files.client_context())
        assert resp.status_code == 200 and "authorization received" in resp.text

    grant = authorize_microsoft(
        "ms-key", "contoso.onmicrosoft.com", "ms-desktop", SCOPES, login_url=ms_server.base_url, show=show,
        timeout=10, verify=tls_files.client_context(),
    )  # fmt: skip
    query = parse_qs(urlsplit(url_in(shown[0])).query)
    assert query["code_challenge_method"] == ["S256"]
    assert "offline_access" in query["scope"][0].split()
    assert ms_server.requests[-1]["code_verifier"]
    assert ms_server.introspect(grant.access_token.value.reveal())["active"]
    assert grant.refresh_token.reveal() in ms_server.tokens


def test_msal_device_code(ms_server: OAuthTestServer, tls_files: TLSFiles) -> None:
    shown: list[str] = []

    def show(text: str) -> None:
        shown.append(text)
        ms_server.approve_device(text.rstrip(".").rsplit(" ", 1)[-1])

    grant = device_authorize_microsoft(
        "ms-key", "contoso.onmicrosoft.com", "ms-desktop", SCOPES, login_url=ms_server.base_url, show=show,
        timeout=10, verify=tls_files.client_context(),
    )  # fmt: skip
    assert "enter the code" in shown[0]
    assert ms_server.introspect(grant.access_token.value.reveal())["active"]


def test_msal_device_code_times_out(ms_server: OAuthTestServer, tls_files: TLSFiles) -> None:
    with pytest.raises(TargetTimeoutError, match="not entered"):
        device_authorize_microsoft(
            "ms-key", "contoso.onmicrosoft.com", "ms-desktop", SCOPES, login_url=ms_server.base_url,
            show=lambda _t: None, timeout=0.5, verify=tls_files.client_context(),
        )  # fmt: skip
