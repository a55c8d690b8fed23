"""The web UI's target form over real HTTP, without a browser: sending limits and pool settings."""

from __future__ import annotations

import html
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from mailwright.services.app import Services
from tests.support.apiserver import APIServer


@dataclass
class Browserless:
    client: httpx.Client
    csrf_token: str

    def post(self, path: str, **fields: str) -> httpx.Response:
        return self.client.post(path, data={"csrf_token": self.csrf_token, **fields})


@pytest.fixture
def web(mw: Services) -> Iterator[Browserless]:
    """The web UI served on loopback with a signed-in session (its cookie and CSRF token)."""
    signed_in = mw.web_auth.open_session()
    with (
        APIServer(mw) as server,
        httpx.Client(
            base_url=server.base_url, headers={"Cookie": f"mw_session={signed_in.cookie}"}, timeout=30
        ) as client,
    ):
        yield Browserless(client, signed_in.session.csrf_token)


SMTP = {
    "target_type": "smtp",
    "display_name": "Relay",
    "no_account_keys": "true",
    "server": "smtp.example.test",
    "port": "587",
    "security": "starttls",
    "rate_per_second": "",
    "rate_per_minute": "",
    "rate_per_day": "500",
    "max_connections": "4",
    "max_messages_per_connection": "100",
    "idle_timeout": "30",
}


def error_text(response: httpx.Response, field: str) -> str:
    assert response.status_code == 422, response.text
    start = response.text.index(f'id="e-{field}"')
    return html.unescape(response.text[start : response.text.index("</p>", start)])


def test_new_form_shows_the_limits_with_the_pool_defaults(web: Browserless) -> None:
    page = web.client.get("/targets/new")
    assert page.status_code == 200
    assert "Sending limits and connections" in page.text
    for name in ("rate_per_second", "rate_per_minute", "rate_per_day", "max_messages_per_connection"):
        assert f'<label for="f-{name}">' in page.text
    assert 'id="f-max_connections" name="max_connections" type="number" value="8"' in page.text
    assert 'id="f-rate_per_day" name="rate_per_day" type="number" value=""' in page.text


def test_create_edit_and_clear_limits(web: Browserless, mw: Services) -> None:
    created = web.post("/targets/new", **SMTP)
    assert created.status_code == 303, created.text
    target = mw.targets.get("Relay")
    assert (target.rate_per_minute, target.rate_per_day, target.max_connections) == (None, 500, 4)
    detail = web.client.get(f"/targets/{target.id}").text
    assert "500 messages per day" in detail
    assert "up to 4 connections, 100 messages each, closed after 30 s idle" in detail

    edit = web.client.get(f"/targets/{target.id}/edit").text
    assert 'name="rate_per_day" type="number" value="500"' in edit
    assert 'name="rate_per_minute" type="number" value=""' in edit
    # A blank rate clears the limit; a blank pool setting keeps the stored one.
    saved = web.post(
        f"/targets/{target.id}/edit",
        **{**SMTP, "rate_per_day": "", "rate_per_minute": "30", "max_connections": ""},
    )
    assert saved.status_code == 303, saved.text
    target = mw.targets.get("Relay")
    assert (target.rate_per_minute, target.rate_per_day, target.max_connections) == (30, None, 4)
    web.post(f"/targets/{target.id}/edit", **{**SMTP, "rate_per_day": "", "rate_per_minute": ""})
    assert "no limit" in web.client.get(f"/targets/{target.id}").text
    assert mw.targets.get("Relay").rate_per_minute is None


def test_the_end_of_data_timeout_defaults_to_ten_minutes_and_can_be_set(
    web: Browserless, mw: Services
) -> None:
    assert (
        'id="f-data_timeout" name="data_timeout" type="number" value="600"'
        in web.client.get("/targets/new").text
    )
    assert web.post("/targets/new", **SMTP).status_code == 303
    target = mw.targets.get("Relay")
    assert target.data_timeout == 600
    assert web.post(f"/targets/{target.id}/edit", **{**SMTP, "data_timeout": "120"}).status_code == 303
    assert mw.targets.get("Relay").data_timeout == 120
    assert (
        'name="data_timeout" type="number" value="120"' in web.client.get(f"/targets/{target.id}/edit").text
    )


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("max_connections", "0", "Max connections must be 1 or more."),
        ("max_connections", "999", "Max connections must be 256 or less."),
        ("max_connections", "many", "Max connections must be a whole number, not 'many'"),
        ("rate_per_minute", "-1", "Rate per minute must be 0 or more."),
        ("rate_per_second", "2.5", "Rate per second must be a whole number"),
        ("rate_per_second", "100001", "Rate per second must be 100000 or less."),
        ("max_messages_per_connection", "0", "Max messages per connection must be 1 or more."),
        ("idle_timeout", "soon", "Idle timeout must be a number, not 'soon'"),
        ("idle_timeout", "0", "Idle timeout must be more than 0."),
        ("data_timeout", "0", "End-of-data timeout must be more than 0."),
        ("data_timeout", "7200", "End-of-data timeout must be 3600 or less."),
    ],
)
def test_bad_limits_are_field_errors_on_create_and_edit(
    web: Browserless, mw: Services, field: str, value: str, expected: str
) -> None:
    assert expected in error_text(web.post("/targets/new", **{**SMTP, field: value}), field)
    assert web.post("/targets/new", **SMTP).status_code == 303
    ref = mw.targets.get("Relay").id
    assert expected in error_text(web.post(f"/targets/{ref}/edit", **{**SMTP, field: value}), field)
    assert mw.targets.get("Relay").max_connections == 4  # nothing saved


def test_mailbox_targets_ignore_the_smtp_limits(web: Browserless, mw: Services) -> None:
    form = {**SMTP, "target_type": "imap", "port": "993", "security": "ssl", "max_connections": "many"}
    assert web.post("/targets/new", **form).status_code == 303
    target = mw.targets.get("Relay")
    assert (target.type, target.max_connections, target.rate_per_day) == ("imap", None, None)
    detail = web.client.get(f"/targets/{target.id}").text
    assert "Rate limits" not in detail and "Connection pool" not in detail
    assert web.post(f"/targets/{target.id}/edit", **form).status_code == 303


def test_pages_and_the_api_carry_the_security_headers(web: Browserless) -> None:
    from mailwright.web.app import PAGE_CSP, SECURITY_HEADERS

    page = web.client.get("/targets")
    api = web.client.get("/api/v1/targets")  # the page's cookie is no API token: 401
    assert page.status_code == 200 and api.status_code == 401
    for response in (page, api):
        assert all(response.headers[name] == value for name, value in SECURITY_HEADERS.items())
    assert page.headers["Content-Security-Policy"] == PAGE_CSP
    assert "Content-Security-Policy" not in api.headers  # JSON needs no page policy
