"""Every parameter bounded: out-of-range values are a 422 before any work, never a 500.

And the OpenAPI document says so: the API's operations only, each with its error
answers and the body they have.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from mailwright.config import Settings
from mailwright.services.app import Services
from mailwright.storage.tables import RunRow
from tests.integration.conftest import Targets
from tests.support.apiserver import APIServer
from tests.support.smtpserver import SMTPServerFactory


def runs_in_db(mw: Services) -> int:
    with mw.db.session() as session:
        return int(session.scalar(select(func.count()).select_from(RunRow)) or 0)


def assert_refused(answer: httpx.Response, field: str) -> dict[str, Any]:
    assert answer.status_code == 422, answer.text
    error: dict[str, Any] = answer.json()["error"]
    assert error["code"] == "validation_error"
    assert error["field"] == field, error
    return error


@pytest.mark.parametrize("timeout", ["nan", "NaN", "inf", "-inf", "-1", "0", "600.5", "1e309", "soon"])
def test_send_email_checks_its_timeout_before_storing_or_sending(
    api: httpx.Client,
    mw: Services,
    targets: Targets,
    smtp_server_factory: SMTPServerFactory,
    timeout: str,
) -> None:
    server = smtp_server_factory()
    target = targets.target(server, security="none")
    body = {"target": target.id, "from": "ops@example.org", "to": ["bob@example.net"], "subject": "Hi"}
    answer = api.post("/api/v1/send-email", params={"timeout": timeout}, json=body)
    assert_refused(answer, "query.timeout")
    assert runs_in_db(mw) == 0  # nothing stored, so nothing sent
    assert server.messages == [] and server.connections == 0


def test_send_email_accepts_its_bounds(
    api: httpx.Client, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory()
    target = targets.target(server, security="none")
    body = {"target": target.id, "from": "ops@example.org", "to": ["bob@example.net"], "subject": "Hi"}
    assert api.post("/api/v1/send-email", params={"timeout": "600"}, json=body).status_code == 200
    assert api.post("/api/v1/send-email", params={"wait": "no"}, json=body).status_code == 202
    assert len(server.wait_for(2)) == 2


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"offset": "99999999999999999999"}, "query.offset"),
        ({"offset": "-1"}, "query.offset"),
        ({"offset": "1000000001"}, "query.offset"),
        ({"limit": "0"}, "query.limit"),
        ({"limit": "1001"}, "query.limit"),
        ({"limit": "99999999999999999999"}, "query.limit"),
        ({"status": "bogus"}, "query.status"),
    ],
)
def test_steps_paging_is_bounded(api: httpx.Client, params: dict[str, str], field: str) -> None:
    assert_refused(api.get("/api/v1/runs/00000000-0000-4000-8000-000000000000/steps", params=params), field)


def test_steps_paging_in_bounds_answers(api: httpx.Client) -> None:
    missing = api.get(
        "/api/v1/runs/00000000-0000-4000-8000-000000000000/steps",
        params={"offset": "1000000000", "limit": "1000", "status": "unknown"},
    )
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("method", "path", "params", "field"),
    [
        ("GET", "/api/v1/runs", {"limit": "0"}, "query.limit"),
        ("GET", "/api/v1/runs", {"limit": "18446744073709551617"}, "query.limit"),
        ("GET", "/api/v1/runs", {"status": "done"}, "query.status"),
        ("GET", "/api/v1/runs", {"workflow": ""}, "query.workflow"),
        ("GET", "/api/v1/triggers", {"workflow": "a\x00b"}, "query.workflow"),
        ("GET", "/api/v1/workflows/w/triggers/messages", {"limit": "5000"}, "query.limit"),
        ("GET", "/api/v1/workflows/w/triggers/messages", {"index": "-1"}, "query.index"),
        ("GET", "/api/v1/workflows/w/triggers/messages", {"index": "1e3"}, "query.index"),
        ("GET", "/api/v1/workflows/w/export", {"format": "xml"}, "query.format"),
        ("POST", "/api/v1/workflows/w/schedules/99999999999999999999/enable", {}, "path.index"),
        ("POST", "/api/v1/workflows/w/triggers/-1/disable", {}, "path.index"),
        ("GET", "/api/v1/targets/a%00b", {}, "path.ref"),
        ("GET", f"/api/v1/account-keys/{'k' * 256}", {}, "path.ref"),
        ("GET", "/api/v1/runs/%0A", {}, "path.run_id"),
    ],
)
def test_query_and_path_parameters_are_bounded(
    api: httpx.Client, method: str, path: str, params: dict[str, str], field: str
) -> None:
    assert_refused(api.request(method, path, params=params), field)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/v1/send-email/batch", {"target": "t", "messages": [{}], "timeout": 0}, "timeout"),
        ("/api/v1/send-email/batch", {"target": "t", "messages": [{}], "concurrency": 10**20}, "concurrency"),
        ("/api/v1/send-email/batch", {"target": "", "messages": [{}]}, "target"),
        ("/api/v1/workflows/w/start", {"timeout": 601}, "timeout"),
        ("/api/v1/workflows/w/start", {"target": ""}, "target"),
        ("/api/v1/send-email", {"target": "", "to": ["a@example.net"]}, "target"),
    ],
)
def test_body_numbers_and_names_are_bounded(
    api: httpx.Client, path: str, body: dict[str, Any], field: str
) -> None:
    assert_refused(api.post(path, json=body), field)


@pytest.mark.parametrize("content", [b"{not json", b"\xff)G\x06"])
def test_a_body_that_is_not_json_is_a_422_with_the_error_body(api: httpx.Client, content: bytes) -> None:
    answer = api.post("/api/v1/account-keys", content=content, headers={"Content-Type": "application/json"})
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["code"] == "validation_error"
    assert "JSON" in answer.json()["error"]["message"] or "body" in answer.json()["error"]["message"]


def test_unknown_api_paths_and_methods_answer_with_the_error_body(api: httpx.Client) -> None:
    missing = api.get("/api/v1/no-such-thing")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert "/api/openapi.json" in missing.json()["error"]["hint"]
    wrong_method = api.put("/api/v1/targets")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["code"] == "method_not_allowed"
    page = api.get("/no-such-page")  # not the API: the web UI's page, never JSON
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert "Page not found" in page.text


# --- the document -----------------------------------------------------------------------------


def test_openapi_describes_the_api_only_with_its_errors(api: httpx.Client) -> None:
    document = api.get("/api/openapi.json").json()
    paths: dict[str, dict[str, Any]] = document["paths"]
    assert all(path.startswith("/api/v1/") for path in paths), [p for p in paths if "/api/" not in p]
    assert not any("trigger" in path and not path.startswith("/api/") for path in paths)
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    operations = [(path, method, op) for path, ops in paths.items() for method, op in ops.items()]
    assert len(operations) >= 34
    for path, method, op in operations:
        where = f"{method.upper()} {path}"
        responses = op["responses"]
        assert "401" in responses, where
        if "{" in path:
            assert "404" in responses and "422" in responses, where
        for status, answer in responses.items():
            if status.startswith(("4", "5")):
                assert answer["content"]["application/json"]["schema"] == error_ref, (where, status)
    send = paths["/api/v1/send-email"]["post"]
    assert {"200", "202", "401", "404", "422", "5XX"} <= set(send["responses"])
    (key,) = [p for p in send["parameters"] if p["name"] == "Idempotency-Key"]
    assert key["in"] == "header" and key["schema"]["maxLength"] == 255
    timeout = next(p for p in send["parameters"] if p["name"] == "timeout")["schema"]
    assert timeout["exclusiveMinimum"] == 0 and timeout["maximum"] == 600
    steps = paths["/api/v1/runs/{run_id}/steps"]["get"]["parameters"]
    assert next(p for p in steps if p["name"] == "offset")["schema"]["maximum"] == 1_000_000_000
    # Names that the services would refuse empty are described so.
    for model, name in (("AccountKeyCreate", "name"), ("TargetCreate", "display_name")):
        assert schemas[model]["properties"][name]["minLength"] == 1
        assert schemas[model]["properties"][name]["maxLength"] == 200
    assert schemas["SendEmailRequest"]["properties"]["target"]["minLength"] == 1


@pytest.mark.parametrize("name", ["", "   ", "tab\there"])
def test_names_the_document_refuses_are_refused(api: httpx.Client, name: str) -> None:
    answer = api.post("/api/v1/account-keys", json={"name": name, "username": "u", "password": "p"})
    assert_refused(answer, "name")


NUL_BODIES = [
    ("/api/v1/account-keys", {"name": "k", "username": "u", "password": "p", "description": "a\x00b"}),
    ("/api/v1/targets", {"display_name": "t", "server": "127.0.0.1", "port": 25, "description": "\x00"}),
    ("/api/v1/send-email/batch", {"target": "x\x00", "messages": [{}]}),
    ("/api/v1/workflows/w/start", {"inputs": {"to": "\x00"}}),
]


@pytest.mark.parametrize(("path", "body"), NUL_BODIES)
def test_a_nul_character_in_a_body_is_refused(api: httpx.Client, path: str, body: dict[str, Any]) -> None:
    error = assert_refused(api.post(path, json=body), "body")
    assert "NUL" in error["message"]


def test_an_escaped_backslash_before_u0000_is_text_not_nul(api: httpx.Client) -> None:
    body = {"name": "k", "username": "u", "password": "p", "description": "C:\\u0000"}
    created = api.post("/api/v1/account-keys", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["description"] == "C:\\u0000"


@pytest.mark.postgres
def test_a_nul_character_is_a_422_on_postgresql_too(pg_url: str, tmp_path: Path) -> None:
    # PostgreSQL refuses NUL in text: without the check these were 500s.
    services = Services(Settings(home=tmp_path / "home", database_url=pg_url))
    token = services.tokens.create("tests").token
    try:
        with (
            APIServer(services) as server,
            httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}) as client,
        ):
            for path, body in NUL_BODIES:
                assert_refused(client.post(path, json=body), "body")
            assert_refused(client.get("/api/v1/targets/a%00b"), "path.ref")
    finally:
        services.close()
