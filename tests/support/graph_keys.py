"""Real "OAuth2 Microsoft Graph Credentials" keys for the Graph tests, their tokens from the stand-ins.

`keyed[name] = kind` stores a Graph key (client credentials with a client secret) whose
app is registered on the OAuth2 token stand-in (tests/support/oauth_server.py, over
https, trusted through the key's CA file); the Graph stand-in (tests/support/graph_server.py)
takes a token the token server issued and grants it the roles of its app's `kind`:
"good" has every role, "send-only" Mail.Send, "read-only" User.Read.All and Mail.Read,
"mail-read" Mail.Read; an "expired" app's tokens Graph refuses (401), as an expired one.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mailwright.oauth.tokens import forget
from mailwright.services.account_keys import AccountKeyCreate
from mailwright.services.app import Services
from tests.support.graph_server import ALL_ROLES
from tests.support.oauth_server import OAuthClient, OAuthTestServer
from tests.support.tlsfiles import TLSFiles

APP_SECRET = "graph-app-client-secret"
ROLES: dict[str, frozenset[str]] = {
    "good": frozenset(ALL_ROLES),
    "send-only": frozenset({"Mail.Send"}),
    "read-only": frozenset({"User.Read.All", "Mail.Read"}),
    "mail-read": frozenset({"Mail.Read"}),
}
KINDS = (*ROLES, "expired")


class GraphKeys:
    def __init__(self, mw: Services, oauth: OAuthTestServer, tls_files: TLSFiles) -> None:
        self.mw, self.oauth, self.tls_files = mw, oauth, tls_files
        for kind in KINDS:
            oauth.register(OAuthClient(f"{kind}-app", secret=APP_SECRET))

    def __setitem__(self, name: str, kind: str) -> None:
        assert kind in KINDS, kind
        self.mw.account_keys.create(
            AccountKeyCreate.model_validate(
                {
                    "name": name,
                    "type": "graph",
                    "tenant_id": "contoso-tenant",
                    "client_id": f"{kind}-app",
                    "client_secret": APP_SECRET,
                    "login_url": self.oauth.base_url,
                    "ca_file": str(self.tls_files.ca_path),
                }
            )
        )

    def roles(self, token: str) -> frozenset[str] | None:
        """The Graph stand-in's validator: the roles of the app the token server issued `token` to."""
        info = self.oauth.introspect(token)
        if not info.get("active"):
            return None
        return ROLES.get(str(info["client_id"]).removesuffix("-app"))


@pytest.fixture
def graph_oauth(tls_files: TLSFiles) -> Iterator[OAuthTestServer]:
    with OAuthTestServer(ssl_context=tls_files.server_context()) as server:
        yield server
    forget()


@pytest.fixture
def keyed(mw: Services, graph_oauth: OAuthTestServer, tls_files: TLSFiles) -> GraphKeys:
    return GraphKeys(mw, graph_oauth, tls_files)
