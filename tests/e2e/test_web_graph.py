"""Microsoft Graph in Chromium: a Graph key on the Account Keys page, a Graph target with the
Add New dialog offering only the key types it accepts, and its connection test.

The token server and Graph are the stand-ins (tests/support/oauth_server.py and
tests/support/graph_server.py, written from Microsoft's published contracts).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from mailwright.oauth.tokens import forget
from tests.e2e.test_web_ui import assert_no_secret
from tests.support.graph_keys import APP_SECRET, ROLES
from tests.support.graph_server import GraphServer
from tests.support.oauth_server import OAuthClient, OAuthTestServer
from tests.support.tlsfiles import TLSFiles
from tests.support.webapp import WebApp, first_login, shot

MAILBOX = "alice@contoso.example"


@pytest.fixture
def stand_ins(tls_files: TLSFiles) -> Iterator[tuple[OAuthTestServer, GraphServer]]:
    with OAuthTestServer(ssl_context=tls_files.server_context()) as oauth:
        oauth.register(OAuthClient("contoso-app", secret=APP_SECRET))

        def roles(token: str) -> frozenset[str] | None:
            return ROLES["good"] if oauth.introspect(token).get("active") else None

        with GraphServer(tokens=roles, users=[MAILBOX]) as graph:
            yield oauth, graph
    forget()


def test_a_graph_key_on_the_account_keys_page(page: Page, web: WebApp) -> None:
    first_login(page, web)
    page.goto("/account-keys/new")
    form = page.locator("#key-form")
    expect(form.get_by_label("Mailbox Password")).to_be_visible()  # Email Credentials first
    expect(form.get_by_label("Tenant ID")).to_be_hidden()
    form.get_by_label("Key Type").select_option("graph")
    expect(form.get_by_label("Mailbox Password")).to_be_hidden()
    form.get_by_label(re.compile(r"^Name")).fill("contoso-graph")
    form.get_by_label("Tenant ID").fill("contoso.onmicrosoft.com")
    form.get_by_label("Client ID").fill("contoso-app")
    form.get_by_role("button", name="Submit").click()
    expect(page.get_by_role("alert")).to_contain_text("client secret or a certificate")
    form = page.locator("#key-form")
    expect(form.get_by_label("Key Type")).to_have_value("graph")  # the choice is kept
    expect(form.get_by_label("Tenant ID")).to_have_value("contoso.onmicrosoft.com")
    form.get_by_label("Secret Key").fill(APP_SECRET)
    shot(page, "new-graph-key")
    form.get_by_role("button", name="Submit").click()
    row = page.get_by_role("row", name="contoso-graph")
    expect(row).to_contain_text("OAuth2 Microsoft Graph Credentials")
    expect(row).to_contain_text("client secret ********")
    assert_no_secret(page, APP_SECRET)
    assert web.services.account_keys.get("contoso-graph").type == "graph"


def test_a_graph_target_with_its_key_from_the_add_new_dialog(
    page: Page, web: WebApp, tls_files: TLSFiles, stand_ins: tuple[OAuthTestServer, GraphServer]
) -> None:
    oauth, graph = stand_ins
    first_login(page, web)
    page.goto("/targets/new")
    form = page.locator("#target-form")
    form.get_by_label("Target Type").select_option("graph")
    expect(form.get_by_label("Protocol")).to_have_value("HTTPS")
    expect(form.get_by_label("SMTP Server")).to_be_hidden()
    form.get_by_label("Display Name").fill("Contoso mail")
    form.get_by_label("Mailbox").fill(MAILBOX)

    page.get_by_role("button", name="Add New").click()
    dialog = page.get_by_role("dialog")
    kinds = dialog.get_by_label("Key Type")
    expect(kinds).to_have_value("graph")  # the only type a Graph target takes
    expect(kinds.locator("option:not([disabled])")).to_have_count(1)
    expect(dialog.get_by_label("Mailbox Password")).to_be_hidden()
    dialog.get_by_label("Name", exact=True).fill("contoso-graph")
    dialog.get_by_label("Tenant ID").fill("contoso.onmicrosoft.com")
    dialog.get_by_label("Client ID").fill("contoso-app")
    dialog.get_by_label("Secret Key").fill(APP_SECRET)
    dialog.get_by_label("CA file (PEM path on the server)").fill(str(tls_files.ca_path))
    shot(page, "add-new-graph-key-dialog")
    dialog.get_by_role("button", name="Save key").click()
    expect(dialog).to_be_hidden()
    expect(form.get_by_label("Default Account Keys")).to_have_value(
        web.services.account_keys.get("contoso-graph").id
    )

    page.get_by_text("Advanced").click()
    form.get_by_label("Graph URL").fill(graph.base_url)
    form.get_by_label("Login URL").fill(oauth.base_url)
    form.get_by_role("button", name="Submit").click()
    expect(page.get_by_role("heading", name="Contoso mail")).to_be_visible()
    page.get_by_role("button", name="Test connection").click()
    report = page.locator("section.report")
    expect(report).to_contain_text("OK")
    expect(report).to_contain_text("Mail.Send")
    shot(page, "graph-target-test-connection")
    assert_no_secret(page, APP_SECRET)
    for token in oauth.access_tokens():
        assert_no_secret(page, token)


def test_an_smtp_target_offers_password_and_oauth2_keys_but_not_graph(page: Page, web: WebApp) -> None:
    first_login(page, web)
    page.goto("/targets/new")
    page.get_by_role("button", name="Add New").click()
    kinds = page.get_by_role("dialog").get_by_label("Key Type")
    expect(kinds).to_have_value("email_credentials")
    enabled = kinds.locator("option:not([disabled])")
    expect(enabled).to_have_text(["Email Credentials", "OAuth2 (XOAUTH2)"])
