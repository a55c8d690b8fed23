"""The web UI's forms over real HTTP, without a browser: every error at once, in the UI's words.

The browser side (the summary taking the focus, the Add New dialog, suggestions) is in
tests/e2e/test_web_forms.py.
"""

from __future__ import annotations

import html
import re
import socket
from types import SimpleNamespace
from typing import cast

import httpx
import pytest

from mailwright.services.app import Services
from mailwright.transport.base import Endpoint
from mailwright.transport.smtp import SMTP as SMTP_INFO
from mailwright.transport.translate import network_failure
from tests.integration.test_web_targets import SMTP, Browserless, error_text


def summary_links(response: httpx.Response) -> dict[str, str]:
    """The error summary's links: field anchor → text."""
    start = response.text.index('id="error-summary"')
    block = response.text[start : response.text.index("</div>", start)]
    return {m[0]: html.unescape(m[1]) for m in re.findall(r'<a href="#([\w-]+)">([^<]*)</a>', block)}


def test_every_error_of_the_target_form_at_once_with_a_summary(web: Browserless) -> None:
    form = {**SMTP, "display_name": "", "port": "99999", "max_connections": "0", "no_account_keys": "false"}
    response = web.post("/targets/new", **form)
    assert response.status_code == 422
    assert "Display Name" in error_text(response, "display_name")
    assert error_text(response, "port").endswith("Port must be 65535 or less.")
    assert "Max connections must be 1 or more." in error_text(response, "max_connections")
    account = error_text(response, "account_key")
    assert "Add New" in account and "--" not in account
    links = summary_links(response)
    assert list(links) == ["f-display_name", "f-port", "f-max_connections", "f-account_key"]
    assert "There are 4 problems" in response.text
    assert "input should be" not in response.text and "port: " not in response.text


def test_every_error_of_the_edit_form_at_once(web: Browserless, mw: Services) -> None:
    assert web.post("/targets/new", **SMTP).status_code == 303
    ref = mw.targets.get("Relay").id
    response = web.post(
        f"/targets/{ref}/edit", **{**SMTP, "display_name": " ", "port": "0", "idle_timeout": "x"}
    )
    assert set(summary_links(response)) == {"f-display_name", "f-port", "f-idle_timeout"}
    assert "Port must be 1 or more." in error_text(response, "port")
    assert mw.targets.get("Relay").port == 587  # nothing saved


def test_an_impossible_security_for_the_port_is_refused_and_explained(web: Browserless) -> None:
    response = web.post("/targets/new", **{**SMTP, "port": "465", "security": "starttls"})
    assert response.status_code == 422
    assert "465" in summary_links(response)["f-security"] or "465" in response.text


def test_every_error_of_the_account_key_form_and_the_add_new_dialog(web: Browserless) -> None:
    response = web.post("/account-keys/new", key_type="email_credentials", name="", username="", password="")
    assert response.status_code == 422
    links = summary_links(response)
    assert {"f-name", "f-password"} <= set(links), links
    assert links["f-name"] == "Name is required."
    dialog = web.client.post(
        "/account-keys/new.json",
        data={"key_type": "email_credentials", "name": "", "username": "", "password": ""},
        headers={"X-CSRF-Token": web.csrf_token},
    )
    assert dialog.status_code == 422
    errors = dialog.json()["errors"]
    assert {"name", "password"} <= set(errors), errors
    assert all(not re.match(r"^[a-z_]+: ", text) for text in errors.values())


def test_the_add_new_dialog_marks_its_required_fields(web: Browserless) -> None:
    page = web.client.get("/targets/new").text
    dialog = page[page.index('id="new-key-dialog"') :]
    assert re.search(r'<label for="k-name">Name <span class="req" aria-hidden="true">\*</span>', dialog)
    assert "Fields marked" in dialog


def test_the_send_form_shows_every_error_at_once(web: Browserless, mw: Services) -> None:
    assert web.post("/targets/new", **SMTP).status_code == 303
    target = mw.targets.get("Relay").id
    response = web.post(
        "/send/message",
        target=target,
        to="not an address",
        reply_to="also not one",
        importance="urgent",
        headers="this line has no colon",
        body="Hello",
    )
    assert response.status_code == 422
    links = summary_links(response)
    assert {"f-to", "f-reply_to", "f-importance", "f-headers"} <= set(links), links
    assert "Importance must be one of" in links["f-importance"]


def test_no_cli_wording_on_the_not_found_page(web: Browserless) -> None:
    response = web.client.get("/targets/no-such-target")
    assert response.status_code == 404
    assert "text/html" in response.headers["content-type"]
    assert "mailwright targets list" not in response.text and "`" not in response.text
    assert "No target named" in html.unescape(response.text)


@pytest.mark.parametrize(
    ("path", "back"),
    [
        ("/targets/{ref}/test", "/targets/{ref}"),
        ("/send/message", "/send"),
        ("/account-keys/new.json", "/account-keys"),
    ],
)
def test_a_form_address_opened_directly_shows_a_page(
    web: Browserless, mw: Services, path: str, back: str
) -> None:
    assert web.post("/targets/new", **SMTP).status_code == 303
    ref = mw.targets.get("Relay").id
    response = web.client.get(path.format(ref=ref))
    assert response.status_code == 405
    assert "text/html" in response.headers["content-type"]
    assert "This address takes a form" in response.text
    assert f'href="{back.format(ref=ref)}"' in response.text
    assert "Method Not Allowed" not in response.text


def test_unknown_pages_are_pages_and_the_api_still_answers_json(web: Browserless) -> None:
    page = web.client.get("/no/such/page")
    assert page.status_code == 404 and "Page not found" in page.text
    api = web.client.get("/api/v1/no-such-thing")
    assert api.status_code == 404 and api.headers["content-type"].startswith("application/json")
    api_method = web.client.delete("/api/v1/send-email")
    assert api_method.status_code == 405 and api_method.headers["content-type"].startswith("application/json")


def test_the_cannot_resolve_hint_mentions_dns_and_network_access() -> None:
    ep = cast(Endpoint, SimpleNamespace(host="smtp.nowhere.invalid", port=587, target_name="Relay"))
    error = network_failure(ep, SMTP_INFO, socket.gaierror(-2, "Name or service not known"), during=None)
    assert error.hint is not None and "DNS" in error.hint and "network access" in error.hint


def test_a_duplicate_workflow_is_explained_without_cli_options(web: Browserless) -> None:
    assert web.post("/targets/new", **SMTP).status_code == 303
    document = (
        "name: Nightly\ntarget: Relay\nsteps:\n  - id: s\n    activity: send_email\n"
        "    with: {from: a@example.org, to: [b@example.org], subject: Hi, body: Hi}\n"
    )
    first = web.post("/workflows/new", document=document)
    assert first.status_code == 303, html.unescape(first.text)[-2000:]
    again = web.post("/workflows/new", document=document)
    assert again.status_code == 422
    text = html.unescape(again.text)
    assert "A workflow named 'Nightly' already exists" in text
    assert "--replace" not in text and "(--" not in text
