"""The Microsoft Graph Endpoint target through the services, a send_email step and the CLI.

Each target logs in with a real OAuth2 Microsoft Graph Credentials key whose tokens come
from the token stand-in (tests/support/graph_keys.py): everything from the stored key and
target to the JSON Graph receives is the real path.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
import yaml

from mailwright.services.app import Services
from mailwright.services.targets import TargetCreate
from tests.integration.test_graph_send import MAILBOX
from tests.support.apiserver import APIServer
from tests.support.cli import CLI, assert_ok
from tests.support.graph_keys import APP_SECRET, GraphKeys, graph_oauth, keyed
from tests.support.graph_server import ALL_ROLES, GraphServer

__all__ = ["graph_oauth", "keyed"]  # the fixtures, used here by name


@pytest.fixture
def graph(keyed: GraphKeys) -> Iterator[GraphServer]:
    with GraphServer(tokens=keyed.roles, users=[MAILBOX]) as server:
        yield server


def graph_target(
    mw: Services, server: GraphServer, keyed: GraphKeys, *, token: str, name: str = "Contoso"
) -> None:
    key = f"{name}-key"
    keyed[key] = token  # a real Graph key; its app's tokens get the roles of `token`
    mw.targets.create(
        TargetCreate.model_validate(
            {
                "display_name": name,
                "type": "graph",
                "mailbox": MAILBOX,
                "graph_url": server.base_url,
                "account_key": key,
                "command_timeout": 20,
            }
        )
    )


async def test_a_send_email_step_sends_through_graph(
    mw: Services, graph: GraphServer, keyed: GraphKeys
) -> None:
    graph_target(mw, graph, keyed, token="good")
    document = {
        "name": "Greet through Graph",
        "target": "Contoso",
        "steps": [
            {
                "id": "greet",
                "activity": "send_email",
                "with": {
                    "from": MAILBOX,
                    "to": ["bob@example.org"],
                    "bcc": ["audit@example.org"],
                    "subject": "Hi {{ 'Bob' }}",
                    "html": "<p>Hello</p>",
                    "importance": "high",
                    "headers": {"X-Ticket": "42"},
                },
            }
        ],
    }
    workflow = mw.workflows.create(yaml.safe_dump(document, sort_keys=False))
    run = mw.runs.start_workflow(workflow.id)
    status = await mw.executor(worker_id="t", lease=timedelta(seconds=5), with_files=False).execute(run.id)
    steps = mw.runs.get(run.id).steps
    assert status == "succeeded", [(s.step, s.status, s.error) for s in steps]
    output = steps[0].output
    assert output is not None and output["status"] == "sent" and output["server_reply"]["code"] == 202
    assert [r["address"] for r in output["recipients"]] == ["bob@example.org", "audit@example.org"]
    (sent,) = graph.sent
    message = sent["message"]
    assert message["subject"] == "Hi Bob" and message["internetMessageId"] == output["message_id"]
    assert message["bccRecipients"] == [{"emailAddress": {"address": "audit@example.org"}}]
    assert message["internetMessageHeaders"] == [{"name": "X-Ticket", "value": "42"}]
    assert message["importance"] == "high" and message["body"]["contentType"] == "html"


async def test_a_throttled_step_is_deferred_not_failed(
    mw: Services, graph: GraphServer, keyed: GraphKeys
) -> None:
    graph_target(mw, graph, keyed, token="good")
    document = {
        "name": "Throttled",
        "target": "Contoso",
        "steps": [{"id": "s", "activity": "send_email", "with": {"from": MAILBOX, "to": ["b@example.org"]}}],
    }
    workflow = mw.workflows.create(yaml.safe_dump(document, sort_keys=False))
    graph.throttle(status=429, retry_after="2")
    run = mw.runs.start_workflow(workflow.id)
    started = time.monotonic()
    status = await mw.executor(worker_id="t", lease=timedelta(seconds=5), with_files=False).execute(run.id)
    # Deferred, not failed: the engine tried again no sooner than Graph asked, and Graph took it.
    assert status == "succeeded" and len(graph.sent) == 1
    assert len(graph.requests_to("POST", "/sendMail")) == 2
    assert time.monotonic() - started >= 2.0

    graph.throttle(status=429, retry_after="30")  # longer than a worker waits holding the run
    later = mw.runs.start_workflow(workflow.id)
    status = await mw.executor(worker_id="t", lease=timedelta(seconds=5), with_files=False).execute(later.id)
    assert status == "queued" and len(graph.sent) == 1  # released, to be taken again in 30 s
    assert len(graph.requests_to("POST", "/sendMail")) == 3


async def test_the_connection_test_reports_token_mailbox_and_permissions(
    mw: Services, graph: GraphServer, keyed: GraphKeys
) -> None:
    graph_target(mw, graph, keyed, token="good")
    report = await mw.targets.test("Contoso")
    assert report.ok, report.error
    assert [s.name for s in report.steps] == ["token", "mailbox", "Mail.Send", "Mail.Read", "Mail.ReadWrite"]
    assert report.authenticated_as == MAILBOX and report.protocol == "HTTPS"
    assert report.capabilities["permissions"] == dict.fromkeys(ALL_ROLES, True)
    assert not graph.sent  # the Mail.Send check sends nothing

    graph_target(mw, graph, keyed, token="send-only", name="Sender only")
    partial = await mw.targets.test("Sender only")
    assert partial.ok and partial.capabilities["permissions"]["Mail.ReadWrite"] is False
    assert any("Mail.ReadWrite is not granted" in w and "admin consent" in w for w in partial.warnings)
    assert any("User.Read.All" in w for w in partial.warnings)

    graph_target(mw, graph, keyed, token="read-only", name="Reader")
    refused = await mw.targets.test("Reader")
    assert not refused.ok and refused.error is not None
    assert refused.error["permission"] == "Mail.Send" and "admin consent" in refused.error["hint"]
    assert [s.ok for s in refused.steps] == [True, True, False]

    graph_target(mw, graph, keyed, token="expired", name="Expired")
    expired = await mw.targets.test("Expired")
    assert not expired.ok and expired.error is not None and expired.error["code"] == "auth_error"
    shown = str(expired.as_dict())
    assert keyed.oauth.access_tokens() and all(t not in shown for t in keyed.oauth.access_tokens())


async def test_a_mailbox_that_does_not_exist_fails_the_test(
    mw: Services, graph: GraphServer, keyed: GraphKeys
) -> None:
    keyed["k"] = "good"
    mw.targets.create(
        TargetCreate.model_validate(
            {"display_name": "Nobody", "type": "graph", "mailbox": "nobody@contoso.example",
             "graph_url": graph.base_url, "account_key": "k"}
        )
    )  # fmt: skip
    report = await mw.targets.test("Nobody")
    assert not report.ok and report.error is not None and report.error["code"] == "graph_not_found"
    assert "nobody@contoso.example" in report.error["message"]


def test_the_cli_offers_the_graph_options_and_creates_a_target(cli: CLI, graph: GraphServer) -> None:
    helped = assert_ok(cli("targets", "create", "--help")).stdout
    for option in ("--mailbox", "--cloud", "--graph-url", "--login-url", "--skip-sent-items"):
        assert option in helped
    created = assert_ok(
        cli(
            "targets", "create", "--type", "graph", "--name", "Contoso", "--mailbox", MAILBOX,
            "--cloud", "usgov-dod", "--graph-url", graph.base_url, "--skip-sent-items", "--no-account-keys",
            "--json",
        )
    ).json()  # fmt: skip
    assert (created["type"], created["type_label"], created["protocol"]) == (
        "graph",
        "Microsoft Graph Endpoint",
        "HTTPS",
    )
    assert created["cloud"] == "usgov-dod" and created["save_to_sent_items"] is False
    shown = assert_ok(cli("targets", "show", "Contoso")).stdout
    assert MAILBOX in shown and "US Government L5 (DoD)" in shown
    tested = cli("targets", "test", "Contoso")
    assert "no OAuth2 account key" in tested.output
    updated = assert_ok(
        cli("targets", "update", "Contoso", "--save-to-sent-items", "--cloud", "global", "--json")
    ).json()
    assert updated["save_to_sent_items"] is True and updated["cloud"] == "global"
    assert updated["graph_url"] == graph.base_url  # kept


def test_the_rest_api_creates_a_graph_target(api: httpx.Client, graph: GraphServer) -> None:
    types = {t["name"]: t for t in api.get("/api/v1/target-types").json()}
    assert types["graph"]["label"] == "Microsoft Graph Endpoint"
    created = api.post(
        "/api/v1/targets",
        json={"display_name": "Contoso", "type": "graph", "mailbox": MAILBOX, "no_account_keys": True},
    )
    assert created.status_code == 201, created.text
    assert created.json()["cloud"] == "global" and created.json()["login_url"] is None
    refused = api.post(
        "/api/v1/targets",
        json={
            "display_name": "Plain",
            "type": "graph",
            "mailbox": MAILBOX,
            "graph_url": "http://graph.example",
        },
    )
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "graph_url"


def test_the_web_form_offers_and_saves_the_graph_fields(mw: Services, graph: GraphServer) -> None:
    signed_in = mw.web_auth.open_session()
    with (
        APIServer(mw) as server,
        httpx.Client(
            base_url=server.base_url, headers={"Cookie": f"mw_session={signed_in.cookie}"}, timeout=30
        ) as client,
    ):
        page = client.get("/targets/new").text
        assert "Microsoft Graph Endpoint" in page
        for name in ("mailbox", "cloud", "graph_url", "login_url", "skip_sent_items"):
            assert f'id="f-{name}"' in page, name
        assert "US Government L5 (DoD)" in page
        created = client.post(
            "/targets/new",
            data={
                "csrf_token": signed_in.session.csrf_token,
                "target_type": "graph",
                "display_name": "Contoso web",
                "no_account_keys": "true",
                "mailbox": MAILBOX,
                "cloud": "usgov",
                "graph_url": graph.base_url,
                "skip_sent_items": "true",
            },
        )
        assert created.status_code == 303, created.text
        target = mw.targets.get("Contoso web")
        assert (target.type, target.mailbox, target.cloud, target.save_to_sent_items) == (
            "graph",
            MAILBOX,
            "usgov",
            False,
        )
        detail = client.get(f"/targets/{target.id}").text
        assert MAILBOX in detail and "US Government L4" in detail


def test_the_rest_api_creates_a_graph_key_and_target_tests_and_sends(
    api: httpx.Client, graph: GraphServer, keyed: GraphKeys
) -> None:
    key = api.post(
        "/api/v1/account-keys",
        json={
            "name": "contoso-api",
            "type": "graph",
            "tenant_id": "contoso-tenant",
            "client_id": "good-app",
            "client_secret": APP_SECRET,
            "login_url": keyed.oauth.base_url,
            "ca_file": str(keyed.tls_files.ca_path),
        },
    )
    assert key.status_code == 201, key.text
    assert APP_SECRET not in key.text
    target = api.post(
        "/api/v1/targets",
        json={"display_name": "Contoso API", "type": "graph", "mailbox": MAILBOX, "graph_url": graph.base_url,
              "account_key": "contoso-api"},
    )  # fmt: skip
    assert target.status_code == 201, target.text
    tested = api.post("/api/v1/targets/Contoso API/test")
    assert tested.status_code == 200 and tested.json()["ok"] is True, tested.text
    sent = api.post(
        "/api/v1/send-email",
        json={"target": "Contoso API", "to": ["bob@example.org"], "subject": "From the API", "body": "Hello"},
    )
    assert sent.status_code == 200, sent.text
    assert sent.json()["status"] == "sent"
    assert [s["message"]["subject"] if "message" in s else s["subject"] for s in graph.sent] == [
        "From the API"
    ]
    for token in keyed.oauth.access_tokens():
        assert token not in tested.text and token not in sent.text


async def test_a_throttled_batch_waits_as_graph_asks_and_fails_nothing(
    mw: Services, graph: GraphServer, keyed: GraphKeys
) -> None:
    graph_target(mw, graph, keyed, token="good")
    messages = [
        {"from": MAILBOX, "to": [f"r{n}@example.org"], "subject": f"m{n}", "body": "b"} for n in range(3)
    ]
    created = mw.batches.create(
        ((f"line {n}", json.dumps(m)) for n, m in enumerate(messages, start=1)), target="Contoso"
    )
    graph.throttle(times=3, status=429, retry_after="1")  # short: waited in place, attempts kept
    started = time.monotonic()
    executor = mw.executor(worker_id="t", lease=timedelta(seconds=30), with_files=False)
    assert await executor.execute(created.run_id) == "succeeded"
    assert time.monotonic() - started >= 1.0 and len(graph.sent) == 3  # sent concurrently, each paused 1 s
    assert len(graph.requests_to("POST", "/sendMail")) == 6
    results = mw.batches.results(created.run_id)
    assert all(r["status"] == "sent" for r in results), results

    later = mw.batches.create(
        ((f"line {n}", json.dumps(m)) for n, m in enumerate(messages, start=1)), target="Contoso"
    )
    graph.throttle(times=1, status=429, retry_after="600")  # long: the run is deferred, nothing failed
    assert await executor.execute(later.run_id) == "queued"
    steps = mw.batches.results(later.run_id)
    assert [s["status"] for s in steps].count("failed") == 0
    assert any(s["status"] == "deferred" and "asked to wait 600 s" in str(s) for s in steps), steps
    statuses = [s["status"] for s in steps]
    assert statuses.count("deferred") == 1  # the throttled one; the others were sent or wait their turn
    run = mw.runs.get(later.run_id)
    assert run.status == "queued" and len(graph.sent) == 3 + statuses.count("sent")
