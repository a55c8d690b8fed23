"""Microsoft Graph credentials: msal's client-credentials grant against the stand-in over https.

With a client secret and with a certificate (the stand-in verifies the client assertion
against the registered certificate), msal's cache in the key's store, forced refresh,
and the errors a wrong secret, a wrong tenant or an unreachable login URL give.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import trustme

from mailwright.errors import CertificateUntrustedError, TargetAuthError, TargetDeferredError, ValidationError
from mailwright.oauth.microsoft import graph_tokens, load_certificate
from mailwright.oauth.presets import MICROSOFT_CLOUDS, graph_scopes
from mailwright.oauth.tokens import MemoryTokenStore, forget
from mailwright.secrets import Secret
from tests.support.oauth_server import OAuthClient, OAuthTestServer
from tests.support.tlsfiles import TLSFiles

TENANT = "11111111-2222-3333-4444-555555555555"
SECRET = "gr4ph~Secret.Value_123"


@pytest.fixture
def server(tls_files: TLSFiles) -> Iterator[OAuthTestServer]:
    with OAuthTestServer(ssl_context=tls_files.server_context()) as srv:
        srv.register(OAuthClient("graph-app", secret=SECRET))
        yield srv
    forget()


@pytest.fixture(scope="module")
def client_cert() -> tuple[str, str]:
    """(PEM with key and certificate, certificate alone) for an RSA client certificate."""
    issued = trustme.CA(key_type=trustme.KeyType.RSA).issue_cert(
        "mailwright-app", key_type=trustme.KeyType.RSA
    )
    cert = issued.cert_chain_pems[0].bytes().decode()
    return issued.private_key_pem.bytes().decode() + cert, cert


def tokens_for(
    server: OAuthTestServer,
    tls_files: TLSFiles,
    *,
    secret: str | None = SECRET,
    certificate: str | None = None,
    tenant: str = TENANT,
    store: MemoryTokenStore | None = None,
) -> object:
    return graph_tokens(
        "graph-key",
        tenant,
        "graph-app",
        Secret(secret) if secret else None,
        Secret(certificate) if certificate else None,
        server.base_url,
        None,
        store,
        verify=tls_files.client_context(),
        timeout=10,
    )


async def test_client_secret(server: OAuthTestServer, tls_files: TLSFiles) -> None:
    store = MemoryTokenStore()
    tokens = graph_tokens(
        "graph-key", TENANT, "graph-app", Secret(SECRET), None, server.base_url, None, store,
        verify=tls_files.client_context(), timeout=10,
    )  # fmt: skip
    token = await tokens.access_token()
    info = server.introspect(token.reveal())
    assert info["active"] and info["scope"] == "https://graph.microsoft.com/.default"
    assert info["client_id"] == "graph-app"
    assert server.requests[0]["grant_type"] == "client_credentials"
    assert await tokens.access_token() == token
    assert server.token_requests["client_credentials"] == 1
    # msal's serialized cache is in the store with the token
    doc = json.loads(store.blob or "")
    assert "AccessToken" in json.loads(doc["backend"])

    forced = await tokens.access_token(refresh=True)
    assert forced != token and server.token_requests["client_credentials"] == 2


async def test_certificate_client_assertion(
    server: OAuthTestServer, tls_files: TLSFiles, client_cert: tuple[str, str]
) -> None:
    pem, cert = client_cert
    server.register(OAuthClient("graph-app", certificate_pem=cert.encode()))
    tokens = graph_tokens(
        "graph-cert", TENANT, "graph-app", None, Secret(pem), server.base_url, ["https://graph.microsoft.us/.default"],
        None, verify=tls_files.client_context(), timeout=10,
    )  # fmt: skip
    token = await tokens.access_token()
    assert server.introspect(token.reveal())["active"]
    sent = server.requests[-1]
    assert sent["client_assertion_type"].endswith("jwt-bearer") and "client_secret" not in sent
    assert sent["scope"] == "https://graph.microsoft.us/.default"


def test_load_certificate_checks_the_pair(client_cert: tuple[str, str]) -> None:
    pem, cert = client_cert
    loaded = load_certificate(pem)
    assert len(loaded.thumbprint_sha1) == 40 and loaded.thumbprint_sha1.isupper()
    assert "PRIVATE KEY" not in repr(loaded)
    with pytest.raises(ValidationError, match="no private key"):
        load_certificate(cert)
    other = trustme.CA(key_type=trustme.KeyType.RSA).issue_cert("x", key_type=trustme.KeyType.RSA)
    with pytest.raises(ValidationError, match="matches its private key"):
        load_certificate(other.private_key_pem.bytes().decode() + cert)
    with pytest.raises(ValidationError, match="needs either a client secret or a certificate"):
        graph_tokens("k", TENANT, "c", None, None, "https://login.microsoftonline.com", None, None)


async def test_wrong_secret_names_the_fix(server: OAuthTestServer, tls_files: TLSFiles) -> None:
    tokens = graph_tokens(
        "graph-key", TENANT, "graph-app", Secret("not-the-secret"), None, server.base_url, None, None,
        verify=tls_files.client_context(), timeout=10,
    )  # fmt: skip
    with pytest.raises(TargetAuthError) as caught:
        await tokens.access_token()
    text = str(caught.value)
    assert "invalid_client" in text and "AADSTS7000215" in text and "client secret" in text
    assert "not-the-secret" not in text and not caught.value.transient


async def test_unknown_tenant(tls_files: TLSFiles) -> None:
    # a login URL that answers 404 to discovery is what an unknown tenant looks like to msal
    with OAuthTestServer(ssl_context=tls_files.server_context()) as srv:
        tokens = graph_tokens(
            "graph-key", "no-such-tenant", "graph-app", Secret(SECRET), None, srv.base_url + "/x", None, None,
            verify=tls_files.client_context(), timeout=10,
        )  # fmt: skip
        with pytest.raises(TargetAuthError, match="tenant"):
            await tokens.access_token()
    forget()


async def test_token_endpoint_5xx_is_deferred(server: OAuthTestServer, tls_files: TLSFiles) -> None:
    server.fail_next.append((503, 3))
    tokens = graph_tokens(
        "graph-key", TENANT, "graph-app", Secret(SECRET), None, server.base_url, None, None,
        verify=tls_files.client_context(), timeout=10,
    )  # fmt: skip
    with pytest.raises(TargetDeferredError) as caught:
        await tokens.access_token()
    assert caught.value.transient and server.token_endpoint(TENANT) in caught.value.message


async def test_untrusted_login_url_certificate(server: OAuthTestServer, tls_files: TLSFiles) -> None:
    tokens = graph_tokens(
        "graph-key", TENANT, "graph-app", Secret(SECRET), None, server.base_url, None, None,
        verify=tls_files.untrusting_client_context(), timeout=10,
    )  # fmt: skip
    with pytest.raises(CertificateUntrustedError) as caught:
        await tokens.access_token()
    assert server.base_url in caught.value.message and not caught.value.transient


def test_clouds() -> None:
    assert MICROSOFT_CLOUDS["usgov-dod"].graph_url == "https://dod-graph.microsoft.us"
    assert MICROSOFT_CLOUDS["china"].login_url == "https://login.chinacloudapi.cn"
    assert graph_scopes("https://graph.microsoft.us/") == ["https://graph.microsoft.us/.default"]


async def test_no_secret_in_logs(
    server: OAuthTestServer, tls_files: TLSFiles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tokens = graph_tokens(
        "graph-key", TENANT, "graph-app", Secret(SECRET), None, server.base_url, None, None,
        verify=tls_files.client_context(), timeout=10,
    )  # fmt: skip
    token = await tokens.access_token()
    await tokens.access_token(refresh=True)
    for secret in [SECRET, token.reveal(), *server.access_tokens()]:
        assert secret not in caplog.text
    assert SECRET not in repr(tokens)


async def test_concurrent_sends_share_one_token_request(server: OAuthTestServer, tls_files: TLSFiles) -> None:
    import asyncio

    tokens = graph_tokens(
        "graph-key", TENANT, "graph-app", Secret(SECRET), None, server.base_url, None, None,
        verify=tls_files.client_context(), timeout=10,
    )  # fmt: skip
    got = await asyncio.gather(*(tokens.access_token() for _ in range(20)))
    assert len({t.reveal() for t in got}) == 1
    assert server.token_requests["client_credentials"] == 1
