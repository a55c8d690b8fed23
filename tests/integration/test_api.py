"""The REST API over real HTTP: tokens, account keys, targets, test, send-email."""

from __future__ import annotations

import base64
import email
import logging
from email import policy

import httpx
import pytest

from mailwright.services.app import Services
from tests.support.apiserver import APIServer
from tests.support.smtpserver import Faults, SMTPServerFactory
from tests.support.tlsfiles import TLSFiles

PASSWORD = "Api-Secret-Pa55word"


def test_requests_need_a_valid_token(mw: Services) -> None:
    with APIServer(mw) as server:
        bare = httpx.get(f"{server.base_url}/api/v1/targets")
        assert bare.status_code == 401
        assert bare.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer" in bare.json()["error"]["message"]
        wrong = httpx.get(f"{server.base_url}/api/v1/targets", headers={"Authorization": "Bearer mw_nope"})
        assert wrong.status_code == 401
        new = mw.tokens.create("short-lived")
        ok = httpx.get(f"{server.base_url}/api/v1/targets", headers={"Authorization": f"Bearer {new.token}"})
        assert ok.status_code == 200
        mw.tokens.revoke("short-lived")
        revoked = httpx.get(
            f"{server.base_url}/api/v1/targets", headers={"Authorization": f"Bearer {new.token}"}
        )
        assert revoked.status_code == 401
        assert httpx.get(f"{server.base_url}/api/openapi.json").status_code == 200


def test_openapi_lists_the_routes(api: httpx.Client) -> None:
    paths = api.get("/api/openapi.json").json()["paths"]
    for path in (
        "/api/v1/account-keys",
        "/api/v1/targets",
        "/api/v1/targets/{ref}/test",
        "/api/v1/send-email",
    ):
        assert path in paths


def test_account_key_lifecycle_never_returns_the_password(api: httpx.Client) -> None:
    created = api.post(
        "/api/v1/account-keys",
        json={
            "name": "alice",
            "username": "alice@example.org",
            "password": PASSWORD,
            "sender": "alice@example.org",
        },
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["password"] == "********"
    assert PASSWORD not in created.text
    duplicate = api.post("/api/v1/account-keys", json={"name": "ALICE", "username": "x", "password": "y"})
    assert duplicate.status_code == 409
    assert "already exists" in duplicate.json()["error"]["message"]
    listed = api.get("/api/v1/account-keys")
    assert PASSWORD not in listed.text and listed.json()[0]["name"] == "alice"
    updated = api.patch("/api/v1/account-keys/alice", json={"description": "main mailbox"})
    assert updated.json()["description"] == "main mailbox"
    assert api.get(f"/api/v1/account-keys/{body['id']}").json()["name"] == "alice"
    assert api.delete("/api/v1/account-keys/alice").status_code == 204
    assert api.get("/api/v1/account-keys/alice").status_code == 404


def test_validation_errors_are_readable_and_never_echo_input(api: httpx.Client) -> None:
    bad = api.post("/api/v1/account-keys", json={"name": "k", "username": "u", "password": 12345678987})
    assert bad.status_code == 422
    assert "12345678987" not in bad.text
    assert bad.json()["error"]["field"] == "password"
    port = api.post(
        "/api/v1/targets",
        json={"display_name": "x", "server": "h.example", "port": 70000, "no_account_keys": True},
    )
    assert port.status_code == 422
    assert port.json()["error"]["field"] == "port"
    mode = api.post(
        "/api/v1/targets",
        json={
            "display_name": "x",
            "server": "h.example",
            "port": 465,
            "security": "starttls",
            "no_account_keys": True,
        },
    )
    assert mode.status_code == 422
    assert mode.json()["error"]["message"].startswith("port 465 expects implicit TLS")
    assert mode.json()["error"]["hint"]


def test_targets_crud_with_preset_and_key_in_use(api: httpx.Client) -> None:
    api.post(
        "/api/v1/account-keys", json={"name": "gmail-key", "username": "me@gmail.com", "password": PASSWORD}
    )
    created = api.post(
        "/api/v1/targets", json={"display_name": "Gmail", "preset": "gmail", "account_key": "gmail-key"}
    )
    assert created.status_code == 201, created.text
    target = created.json()
    assert (target["server"], target["port"], target["security"], target["protocol"]) == (
        "smtp.gmail.com",
        465,
        "ssl",
        "SMTP",
    )
    assert target["account_key"] == "gmail-key" and target["no_account_keys"] is False
    clash = api.post(
        "/api/v1/targets", json={"display_name": "gmail", "preset": "gmail", "no_account_keys": True}
    )
    assert clash.status_code == 409
    in_use = api.delete("/api/v1/account-keys/gmail-key")
    assert in_use.status_code == 409
    assert "'Gmail'" in in_use.json()["error"]["message"]
    refused = api.patch("/api/v1/targets/GMAIL", json={"port": 587})
    assert refused.status_code == 422  # ssl on 587 is impossible; never silently downgraded
    assert "port 587 speaks plain SMTP first" in refused.json()["error"]["message"]
    moved = api.patch("/api/v1/targets/GMAIL", json={"port": 587, "security": "starttls"})
    assert (moved.json()["port"], moved.json()["security"]) == (587, "starttls")
    relay = api.patch("/api/v1/targets/Gmail", json={"no_account_keys": True})
    assert relay.json()["account_key"] is None and relay.json()["no_account_keys"] is True
    types = api.get("/api/v1/target-types").json()
    smtp = next(t for t in types if t["name"] == "smtp")
    assert {p["key"] for p in smtp["presets"]} >= {"gmail", "outlook", "yahoo", "icloud", "fastmail", "zoho"}
    assert {t["name"] for t in types} == {"smtp", "imap", "pop3", "graph"}
    assert api.delete("/api/v1/targets/gmail").status_code == 204
    assert api.get("/api/v1/targets").json() == []


def test_test_endpoint_and_send_email(
    api: httpx.Client, smtp_server_factory: SMTPServerFactory, tls_files: TLSFiles
) -> None:
    server = smtp_server_factory(tls="starttls", users={"alice@example.org": PASSWORD})
    api.post(
        "/api/v1/account-keys", json={"name": "alice", "username": "alice@example.org", "password": PASSWORD}
    )
    api.post(
        "/api/v1/targets",
        json={
            "display_name": "Relay",
            "server": "127.0.0.1",
            "port": server.port,
            "security": "starttls",
            "ca_file": str(tls_files.ca_path),
            "account_key": "alice",
        },
    )
    report = api.post("/api/v1/targets/relay/test").json()
    assert report["ok"] is True and report["capabilities"]["starttls"] is True
    attachment = base64.b64encode(b"%PDF-1.7 fake").decode()
    sent = api.post(
        "/api/v1/send-email",
        json={
            "target": "Relay",
            "to": ["bob@example.net"],
            "cc": "carol@example.net",
            "bcc": ["hidden@example.net"],
            "reply_to": "help@example.org",
            "subject": "Quarterly report",
            "body": "See attached.",
            "html": "<p>See <b>attached</b>.</p>",
            "attachments": [
                {"filename": "report.pdf", "content_type": "application/pdf", "content": attachment}
            ],
            "headers": {"X-Ticket": "42"},
            "in_reply_to": "<thread@example.org>",
            "importance": "high",
        },
    )
    assert sent.status_code == 200, sent.text
    result = sent.json()
    assert result["status"] == "sent" and result["account_key"] == "alice" and result["target"] == "Relay"
    assert {r["address"] for r in result["recipients"]} == {
        "bob@example.net",
        "carol@example.net",
        "hidden@example.net",
    }
    (received,) = server.wait_for(1)
    parsed = email.message_from_bytes(received.content, policy=policy.default)
    assert parsed["X-Ticket"] == "42" and parsed["Importance"] == "High"
    assert parsed["In-Reply-To"] == "<thread@example.org>"
    assert parsed["Bcc"] is None and b"hidden@" not in received.content
    (pdf,) = list(parsed.iter_attachments())
    assert pdf.get_content() == b"%PDF-1.7 fake"


def test_send_failures_map_to_http_statuses(
    api: httpx.Client, smtp_server_factory: SMTPServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = smtp_server_factory(
        faults=Faults(refuse_recipients={"nobody@example.net": (550, "5.1.1 unknown")})
    )
    api.post(
        "/api/v1/targets",
        json={
            "display_name": "Open",
            "server": "127.0.0.1",
            "port": server.port,
            "security": "none",
            "no_account_keys": True,
        },
    )
    base = {"target": "Open", "from": "ops@example.org", "subject": "s", "body": "b"}
    refused = api.post("/api/v1/send-email", json={**base, "to": ["bob@example.net", "nobody@example.net"]})
    assert refused.status_code == 502
    error = refused.json()["error"]
    assert error["code"] == "recipients_refused"
    assert {r["address"]: r["status"] for r in error["recipients"]} == {
        "bob@example.net": "accepted",
        "nobody@example.net": "refused",
    }
    partial = api.post(
        "/api/v1/send-email",
        json={**base, "to": ["bob@example.net", "nobody@example.net"], "continue_if_one_address_valid": True},
    )
    assert partial.status_code == 200 and partial.json()["status"] == "partial"
    bad = api.post("/api/v1/send-email", json={**base, "to": ["not an address"]})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "to"
    injected = api.post(
        "/api/v1/send-email", json={**base, "to": ["bob@example.net"], "subject": "x\r\nBcc: e@x.org"}
    )
    assert injected.status_code == 422
    missing = api.post("/api/v1/send-email", json={**base, "target": "nope", "to": ["bob@example.net"]})
    assert missing.status_code == 404
    assert len(server.messages) == 1


def test_wrong_password_over_the_api_never_leaks(
    api: httpx.Client,
    smtp_server_factory: SMTPServerFactory,
    tls_files: TLSFiles,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = smtp_server_factory(tls="ssl", users={"alice@example.org": "correct-horse"})
    api.post(
        "/api/v1/account-keys", json={"name": "alice", "username": "alice@example.org", "password": PASSWORD}
    )
    api.post(
        "/api/v1/targets",
        json={
            "display_name": "Sub",
            "server": "127.0.0.1",
            "port": server.port,
            "security": "ssl",
            "ca_file": str(tls_files.ca_path),
            "account_key": "alice",
        },
    )
    with caplog.at_level(logging.DEBUG):
        sent = api.post("/api/v1/send-email", json={"target": "Sub", "to": "bob@example.net", "subject": "s"})
        tested = api.post("/api/v1/targets/Sub/test")
    assert sent.status_code == 502 and sent.json()["error"]["code"] == "auth_error"
    assert tested.json()["ok"] is False
    encoded = base64.b64encode(f"\0alice@example.org\0{PASSWORD}".encode()).decode()
    for text in (sent.text, tested.text, caplog.text):
        assert PASSWORD not in text
        assert encoded not in text


def test_a_body_that_is_not_json_and_an_unexpected_error_both_answer_the_error_body(
    api: httpx.Client, mw: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = api.post("/api/v1/send-email", content=b'{"to": [', headers={"Content-Type": "application/json"})
    assert broken.status_code == 422 and broken.json()["error"]["field"] == "body"

    def fails(**_: object) -> None:
        raise RuntimeError("a bug, with a secret: hunter2")

    monkeypatch.setattr(mw.runs, "list_runs", fails)
    answer = api.get("/api/v1/runs")
    assert answer.status_code == 500
    assert answer.json()["error"]["code"] == "internal_error"
    assert "hunter2" not in answer.text  # the details stay in the log


def test_a_send_the_server_keeps_deferring_answers_503_not_502(
    api: httpx.Client, smtp_server_factory: SMTPServerFactory
) -> None:
    # 4xx at the end of DATA, every attempt: retried, then reported as deferred (try later), not
    # as a failure of the target (502).
    server = smtp_server_factory(faults=Faults(reply={"data": (451, "4.3.0 try again later")}))
    api.post(
        "/api/v1/targets",
        json={
            "display_name": "Busy",
            "server": "127.0.0.1",
            "port": server.port,
            "security": "none",
            "no_account_keys": True,
        },
    )
    message = {"target": "Busy", "from": "ops@example.org", "to": ["bob@example.net"], "body": "b"}
    answer = api.post("/api/v1/send-email", params={"timeout": 120}, json=message)
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "deferred"
    assert answer.json()["error"]["smtp_code"] == 451 and answer.json()["run_id"]
