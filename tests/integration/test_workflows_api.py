"""Workflows, runs and the run-backed send-email over real HTTP (uvicorn with its embedded worker)."""

from __future__ import annotations

import email
import time
from collections.abc import Callable, Iterator
from email import policy
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
import yaml

from mailwright.server import create_app
from mailwright.services.app import Services
from tests.integration.conftest import Targets
from tests.support.apiserver import APIServer
from tests.support.smtpserver import Faults, Received, SMTPServerFactory, SMTPTestServer

WORKFLOW = "Alert and follow-up"
RECIPIENT = "x@example.net"
SECOND = "second@example.net"
RUN_TIMEOUT = 20.0


def sample(target: str | None) -> dict[str, Any]:
    document: dict[str, Any] = {
        "name": WORKFLOW,
        "description": "an alert, then a follow-up threaded on it",
        "inputs": {
            "recipient": {"type": "string"},
            "level": {"type": "integer", "default": 2},
            "urgent": {"type": "boolean", "default": False},
        },
        "steps": [
            {
                "id": "alert",
                "activity": "send_email",
                "with": {
                    "from": "robot@example.org",
                    "to": ["{{ inputs.recipient }}"],
                    "subject": "Alert level {{ inputs.level }}{{ ' URGENT' if inputs.urgent else '' }}",
                    "body": "disk full",
                },
            },
            {
                "id": "followup",
                "activity": "send_email",
                "with": {
                    "from": "robot@example.org",
                    "to": [SECOND],
                    "subject": "Re: Alert",
                    "body": "escalated",
                    "in_reply_to": "{{ steps.alert.output.message_id }}",
                },
            },
        ],
    }
    if target is not None:
        document["target"] = target
    return document


def client_for(server: APIServer, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


@pytest.fixture
def idle_api(mw: Services) -> Iterator[httpx.Client]:
    """The API without its embedded worker: runs stay queued."""
    token = mw.tokens.create("idle").token
    with APIServer(mw, app=create_app(mw, run_worker=False)) as server, client_for(server, token) as client:
        yield client


def parse(received: Received) -> EmailMessage:
    message = email.message_from_bytes(received.content, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def relay(targets: Targets, server: SMTPTestServer, name: str = "Relay") -> str:
    return targets.target(server, security="none", display_name=name).display_name


def poll_run(
    api: httpx.Client, run_id: str, done: Callable[[dict[str, Any]], bool] | None = None
) -> dict[str, Any]:
    """GET /runs/{id} until `done` (default: finished), for at most RUN_TIMEOUT seconds."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        response = api.get(f"/api/v1/runs/{run_id}")
        assert response.status_code == 200, response.text
        run: dict[str, Any] = response.json()
        if (done or finished)(run):
            return run
        assert time.monotonic() < deadline, f"run {run_id} is still {run['status']}: {run}"
        time.sleep(0.05)


def finished(run: dict[str, Any]) -> bool:
    return run["status"] in ("succeeded", "failed", "cancelled")


def error_of(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    assert error["message"], response.text
    return error


# --------------------------------------------------------------------------------------
# workflows: create, validate, list, get, export, delete
# --------------------------------------------------------------------------------------


def test_create_from_yaml_text_and_from_a_json_object(
    api: httpx.Client, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    target = relay(targets, smtp_server_factory())
    document = sample(target)
    created = api.post("/api/v1/workflows", json={"document": yaml.safe_dump(document, sort_keys=False)})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["name"] == WORKFLOW and body["target"] == target and body["runs"] == 0
    assert body["steps"] == ["alert (send_email)", "followup (send_email)"]
    assert body["inputs"]["level"]["default"] == 2

    duplicate = api.post("/api/v1/workflows", json={"document": document})
    assert duplicate.status_code == 409 and "already exists" in error_of(duplicate)["message"]
    replaced = api.post(
        "/api/v1/workflows", json={"document": {**document, "description": "replaced"}, "replace": True}
    )
    assert replaced.status_code == 201, replaced.text
    assert replaced.json()["id"] == body["id"] and replaced.json()["description"] == "replaced"

    second = api.post("/api/v1/workflows", json={"document": {**document, "name": "From JSON"}})
    assert second.status_code == 201, second.text
    assert [w["name"] for w in api.get("/api/v1/workflows").json()] == [WORKFLOW, "From JSON"]
    by_name = api.get("/api/v1/workflows/from json")
    by_id = api.get(f"/api/v1/workflows/{second.json()['id']}")
    assert by_name.status_code == 200 and by_name.json() == by_id.json()
    assert (
        by_id.json()["document"]["steps"][1]["with"]["in_reply_to"] == "{{ steps.alert.output.message_id }}"
    )

    exported = api.get(f"/api/v1/workflows/{WORKFLOW}/export").json()
    # Last saved from a JSON object: exported as that JSON, unless another format is asked for.
    assert exported["format"] == "json" and exported["targets"] == [target]
    assert yaml.safe_load(exported["document"])["name"] == WORKFLOW
    as_json = api.get(f"/api/v1/workflows/{WORKFLOW}/export", params={"format": "json"}).json()
    assert as_json["format"] == "json" and '"in_reply_to"' in as_json["document"]

    assert api.delete("/api/v1/workflows/From JSON").status_code == 204
    assert api.get("/api/v1/workflows/From JSON").status_code == 404
    assert api.delete("/api/v1/workflows/From JSON").status_code == 404
    assert api.post("/api/v1/workflows", json={"document": document, "extra": 1}).status_code == 422


def test_export_gives_the_document_as_written(
    api: httpx.Client, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    # dump_document: "Keys that were not given are left out". An export is the portable
    # document its author wrote, not one with every default spelled out (max_items,
    # timeout, retries, schedules, triggers…), which would freeze today's defaults.
    document = sample(relay(targets, smtp_server_factory()))
    assert api.post("/api/v1/workflows", json={"document": document}).status_code == 201
    exported = api.get(f"/api/v1/workflows/{WORKFLOW}/export").json()
    assert yaml.safe_load(exported["document"]) == document


def test_validate_endpoint_answers_422_with_field_and_message(
    api: httpx.Client, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    target = relay(targets, smtp_server_factory())
    good = sample(target)
    ok = api.post("/api/v1/workflows/validate", json={"document": good})
    assert ok.status_code == 200, ok.text
    assert ok.json() == {"valid": True, "name": WORKFLOW, "steps": ["alert", "followup"]}

    def invalid(document: Any) -> dict[str, Any]:
        response = api.post("/api/v1/workflows/validate", json={"document": document})
        assert response.status_code == 422, response.text
        error = error_of(response)
        assert error["code"] == "validation_error" and error["field"], error
        return error

    unknown_target = invalid({**good, "target": "Nowhere"})
    assert "target 'Nowhere' does not exist" in unknown_target["message"]
    assert target in unknown_target["message"]  # the known ones are listed
    steps = [dict(step) for step in good["steps"]]
    steps[1] = {**steps[1], "activity": "send_emial"}
    unknown_activity = invalid({**good, "steps": steps})
    assert "steps[1].activity" in unknown_activity["message"] and "send_emial" in unknown_activity["message"]
    steps = [dict(step) for step in good["steps"]]
    steps[0] = {**steps[0], "with": {**steps[0]["with"], "to": ["{{ inputs.recipeint }}"]}}
    undefined = invalid({**good, "steps": steps})
    assert "steps[0].with.to[0]" in undefined["message"] and "inputs.recipeint" in undefined["message"]
    steps = [dict(step) for step in good["steps"]]
    steps[0] = {**steps[0], "wiht": {}}
    extra_key = invalid({**good, "steps": steps})
    assert "steps[0]" in extra_key["field"] and "'wiht'" in extra_key["message"]
    assert "'with'" in extra_key["message"]
    no_steps = invalid({"name": "x"})
    assert no_steps["field"] == "steps" and no_steps["hint"]
    syntax = api.post("/api/v1/workflows/validate", json={"document": "name: x\nsteps: [\n"})
    assert syntax.status_code == 422 and "line" in error_of(syntax)["message"]
    bad_expression = {**good, "steps": [{**good["steps"][0], "with": {"subject": "{{ inputs.level + }}"}}]}
    assert "steps[0].with.subject" in invalid(bad_expression)["message"]

    # Creating an invalid document answers the same and stores nothing.
    refused = api.post("/api/v1/workflows", json={"document": {**good, "target": "Nowhere"}})
    assert refused.status_code == 422 and "Nowhere" in error_of(refused)["message"]
    assert api.get("/api/v1/workflows").json() == []


# --------------------------------------------------------------------------------------
# start, runs
# --------------------------------------------------------------------------------------


def test_start_with_wait_answers_the_finished_run(
    api: httpx.Client, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory()
    target = relay(targets, server)
    assert api.post("/api/v1/workflows", json={"document": sample(target)}).status_code == 201
    started = api.post(
        f"/api/v1/workflows/{WORKFLOW}/start",
        json={"inputs": {"recipient": RECIPIENT, "level": "5", "urgent": "yes"}, "wait": True, "timeout": 20},
    )
    assert started.status_code == 200, started.text
    run = started.json()
    assert run["status"] == "succeeded", run
    assert run["inputs"] == {"recipient": RECIPIENT, "level": 5, "urgent": True}  # coerced
    assert run["target"] == target and run["workflow"] == WORKFLOW
    alert, followup = server.wait_for(2)
    first, second = parse(alert), parse(followup)
    assert str(first["Subject"]) == "Alert level 5 URGENT" and alert.rcpt_tos == [RECIPIENT]
    assert second["In-Reply-To"] == first["Message-ID"] and followup.rcpt_tos == [SECOND]
    assert [(s["step"], s["status"]) for s in run["steps"]] == [
        ("alert", "succeeded"),
        ("followup", "succeeded"),
    ]
    assert [s["message_id"] for s in run["steps"]] == [first["Message-ID"], second["Message-ID"]]
    assert api.get(f"/api/v1/runs/{run['id']}").json()["status"] == "succeeded"
    assert api.get(f"/api/v1/workflows/{WORKFLOW}").json()["runs"] == 1
    assert len(server.messages) == 2


def test_start_without_wait_answers_202_then_the_run_succeeds(
    api: httpx.Client, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory()
    other = smtp_server_factory()
    relay(targets, server)
    chosen = relay(targets, other, name="Other relay")
    assert api.post("/api/v1/workflows", json={"document": sample(None)}).status_code == 201

    started = api.post(
        f"/api/v1/workflows/{WORKFLOW}/start",
        json={"inputs": {"recipient": RECIPIENT}, "target": chosen, "wait": False},
    )
    assert started.status_code == 202, started.text
    accepted = started.json()
    assert accepted["id"] and accepted["status"] in ("queued", "running", "succeeded")
    run = poll_run(api, accepted["id"])
    assert run["status"] == "succeeded", run
    assert run["target"] == chosen and run["inputs"] == {"recipient": RECIPIENT, "level": 2, "urgent": False}
    assert len(other.wait_for(2)) == 2 and server.messages == []

    no_body = api.post(f"/api/v1/workflows/{WORKFLOW}/start")  # the target is chosen at start: none given
    assert no_body.status_code == 422
    assert "recipient" in error_of(no_body)["message"]

    listed = api.get("/api/v1/runs", params={"workflow": WORKFLOW}).json()
    assert [r["id"] for r in listed] == [run["id"]]
    assert [r["id"] for r in api.get("/api/v1/runs", params={"status": "succeeded"}).json()] == [run["id"]]
    assert api.get("/api/v1/runs", params={"status": "failed"}).json() == []


def test_start_with_wait_that_times_out_answers_202_with_the_unfinished_run(
    api: httpx.Client, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    # 200 means "here is the finished run"; a wait that ran out answers as without wait
    # (202), as /send-email does.
    server = smtp_server_factory(faults=Faults(delay={"data": 2.0}, fail_times=1))
    assert api.post("/api/v1/workflows", json={"document": sample(relay(targets, server))}).status_code == 201
    started = api.post(
        f"/api/v1/workflows/{WORKFLOW}/start",
        json={"inputs": {"recipient": RECIPIENT}, "wait": True, "timeout": 0.3},
    )
    run = started.json()
    assert run["status"] in ("queued", "running"), run
    assert poll_run(api, run["id"])["status"] == "succeeded"
    assert started.status_code == 202, f"{started.status_code} for an unfinished run"


def test_runs_filter_by_workflow_name_in_any_case_or_id(
    api: httpx.Client, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    # Workflows are found by name case-insensitively, or by id, everywhere else.
    server = smtp_server_factory()
    created = api.post("/api/v1/workflows", json={"document": sample(relay(targets, server))}).json()
    started = api.post(
        f"/api/v1/workflows/{WORKFLOW}/start", json={"inputs": {"recipient": RECIPIENT}, "wait": True}
    )
    run_id = started.json()["id"]
    for ref in (WORKFLOW, WORKFLOW.lower(), created["id"]):
        listed = api.get("/api/v1/runs", params={"workflow": ref})
        assert [r["id"] for r in listed.json()] == [run_id], f"?workflow={ref!r} gave {listed.json()}"


def test_start_refuses_unknown_workflow_inputs_and_target(
    api: httpx.Client, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory()
    target = relay(targets, server)
    assert api.post("/api/v1/workflows", json={"document": sample(target)}).status_code == 201

    def start(ref: str, body: dict[str, Any]) -> httpx.Response:
        return api.post(f"/api/v1/workflows/{ref}/start", json=body)

    unknown = start("No such workflow", {"inputs": {"recipient": RECIPIENT}})
    assert unknown.status_code == 404 and error_of(unknown)["code"] == "not_found"
    missing = start(WORKFLOW, {})
    assert missing.status_code == 422 and error_of(missing)["field"] == "inputs.recipient"
    wrong_type = start(WORKFLOW, {"inputs": {"recipient": RECIPIENT, "level": "high"}})
    assert wrong_type.status_code == 422 and error_of(wrong_type)["field"] == "inputs.level"
    extra = start(WORKFLOW, {"inputs": {"recipient": RECIPIENT, "colour": "red"}})
    assert extra.status_code == 422 and "colour" in error_of(extra)["message"]
    no_target = start(WORKFLOW, {"inputs": {"recipient": RECIPIENT}, "target": "Nowhere"})
    assert no_target.status_code == 404 and "Nowhere" in error_of(no_target)["message"]
    bad_timeout = start(WORKFLOW, {"inputs": {"recipient": RECIPIENT}, "wait": True, "timeout": 0})
    assert bad_timeout.status_code == 422
    assert api.get("/api/v1/runs").json() == []  # nothing was queued
    assert api.get("/api/v1/runs/no-such-run").status_code == 404
    assert server.messages == []


# --------------------------------------------------------------------------------------
# send-email as a one-step run
# --------------------------------------------------------------------------------------


def test_send_email_records_a_run(
    api: httpx.Client, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory()
    target = relay(targets, server)
    base = {"target": target, "from": "ops@example.org", "to": [RECIPIENT], "subject": "Hello", "body": "Hi"}

    sent = api.post("/api/v1/send-email", json=base)
    assert sent.status_code == 200, sent.text
    result = sent.json()
    assert result["status"] == "sent" and result["run_id"]
    (received,) = server.wait_for(1)
    assert parse(received)["Message-ID"] == result["message_id"]
    run = api.get(f"/api/v1/runs/{result['run_id']}").json()
    assert run["status"] == "succeeded" and run["workflow_id"] is None
    (step,) = run["steps"]
    assert step["activity"] == "send_email" and step["message_id"] == result["message_id"]
    assert result["run_id"] in [r["id"] for r in api.get("/api/v1/runs").json()]

    queued = api.post("/api/v1/send-email", params={"wait": "false"}, json={**base, "subject": "Later"})
    assert queued.status_code == 202, queued.text
    accepted = queued.json()
    assert set(accepted) == {"run_id", "status"} and accepted["status"] in ("queued", "running")
    later = poll_run(api, accepted["run_id"])
    assert later["status"] == "succeeded", later
    assert len(server.wait_for(2)) == 2
    assert str(parse(server.messages[1])["Subject"]) == "Later"

    invalid = api.post("/api/v1/send-email", json={**base, "to": ["not an address"]})
    assert invalid.status_code == 422 and "run_id" not in invalid.json()  # bad input: nothing stored
    assert len(api.get("/api/v1/runs").json()) == 2


def test_send_email_text_is_sent_as_written_not_as_a_template(
    api: httpx.Client, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    # A Send Email request is not a workflow: braces in its fields are the sender's text.
    server = smtp_server_factory()
    target = relay(targets, server)
    subject = "Template {{ 7 * 7 }} help"
    body = "Write {{ inputs.name }} or {% if x %}y{% endif %} in your template.\n"
    sent = api.post(
        "/api/v1/send-email",
        json={
            "target": target,
            "from": "ops@example.org",
            "to": [RECIPIENT],
            "subject": subject,
            "body": body,
        },
    )
    assert sent.status_code == 200, sent.text
    (received,) = server.wait_for(1)
    message = parse(received)
    assert str(message["Subject"]) == subject
    text = message.get_body(("plain",))
    assert text is not None and text.get_content().replace("\r\n", "\n") == body


def test_refused_send_answers_502_with_a_failed_run(
    api: httpx.Client, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory(
        faults=Faults(refuse_recipients={"nobody@example.net": (550, "5.1.1 unknown")})
    )
    target = relay(targets, server)
    refused = api.post(
        "/api/v1/send-email",
        json={"target": target, "from": "ops@example.org", "to": ["nobody@example.net"], "subject": "s"},
    )
    assert refused.status_code == 502, refused.text
    body = refused.json()
    assert body["error"]["code"] == "recipients_refused"
    assert {r["address"]: r["status"] for r in body["error"]["recipients"]} == {
        "nobody@example.net": "refused"
    }
    run = api.get(f"/api/v1/runs/{body['run_id']}").json()
    assert run["status"] == "failed" and run["error"]["code"] == "recipients_refused"
    assert run["steps"][0]["status"] == "failed" and run["steps"][0]["attempts"] == 1  # permanent
    assert server.messages == []
    assert [r["id"] for r in api.get("/api/v1/runs", params={"status": "failed"}).json()] == [body["run_id"]]


# --------------------------------------------------------------------------------------
# cancel and retry
# --------------------------------------------------------------------------------------


def test_cancel_a_queued_run_then_retry_it(
    mw: Services, idle_api: httpx.Client, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory()
    target = relay(targets, server)
    assert idle_api.post("/api/v1/workflows", json={"document": sample(target)}).status_code == 201
    started = idle_api.post(f"/api/v1/workflows/{WORKFLOW}/start", json={"inputs": {"recipient": RECIPIENT}})
    assert started.status_code == 202
    run_id = started.json()["id"]
    assert idle_api.get(f"/api/v1/runs/{run_id}").json()["status"] == "queued"  # no worker here
    busy = idle_api.delete(f"/api/v1/workflows/{WORKFLOW}")
    assert busy.status_code == 409 and "in progress" in error_of(busy)["message"]

    cancelled = idle_api.post(f"/api/v1/runs/{run_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert [s["status"] for s in cancelled.json()["steps"]] == ["cancelled", "cancelled"]
    again = idle_api.post(f"/api/v1/runs/{run_id}/cancel")
    assert again.status_code == 409 and "cancelled" in error_of(again)["message"]
    assert idle_api.post("/api/v1/runs/no-such-run/cancel").status_code == 404

    retried = idle_api.post(f"/api/v1/runs/{run_id}/retry")
    assert retried.status_code == 200, retried.text
    assert retried.json()["status"] == "queued"
    assert [s["status"] for s in retried.json()["steps"]] == ["pending", "pending"]
    # A server with its worker picks it up.
    token = mw.tokens.create("worker").token
    with APIServer(mw) as server_with_worker, client_for(server_with_worker, token) as api:
        done = poll_run(api, run_id)
        assert done["status"] == "succeeded", done
    assert len(server.wait_for(2)) == 2


def test_cancel_a_running_run_stops_before_the_next_step(
    api: httpx.Client, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory(faults=Faults(delay={"data": 1.5}, fail_times=1))
    target = relay(targets, server)
    assert api.post("/api/v1/workflows", json={"document": sample(target)}).status_code == 201
    run_id = api.post(
        f"/api/v1/workflows/{WORKFLOW}/start", json={"inputs": {"recipient": RECIPIENT}}
    ).json()["id"]
    poll_run(api, run_id, lambda run: run["steps"][0]["status"] == "running")
    requested = api.post(f"/api/v1/runs/{run_id}/cancel")
    assert requested.status_code == 200, requested.text
    assert requested.json()["status"] == "running"  # the running step finishes first
    run = poll_run(api, run_id)
    assert run["status"] == "cancelled", run
    assert [s["status"] for s in run["steps"]] == ["succeeded", "cancelled"]
    (alert,) = server.wait_for(1)
    time.sleep(0.3)
    assert len(server.messages) == 1 and alert.rcpt_tos == [RECIPIENT]


def test_retry_a_failed_run_delivers_once(
    api: httpx.Client, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory(faults=Faults(reply={"data": (554, "5.7.1 message rejected")}, fail_times=1))
    target = relay(targets, server)
    assert api.post("/api/v1/workflows", json={"document": sample(target)}).status_code == 201
    failed = api.post(
        f"/api/v1/workflows/{WORKFLOW}/start", json={"inputs": {"recipient": RECIPIENT}, "wait": True}
    )
    assert failed.status_code == 200, failed.text
    run = failed.json()
    assert run["status"] == "failed" and "554" in run["error"]["message"]
    assert [s["status"] for s in run["steps"]] == ["failed", "skipped"]
    not_yet = api.post(f"/api/v1/runs/{run['id']}/cancel")
    assert not_yet.status_code == 409

    retried = api.post(f"/api/v1/runs/{run['id']}/retry")
    assert retried.status_code == 200, retried.text
    done = poll_run(api, run["id"])
    assert done["status"] == "succeeded" and done["error"] is None, done
    messages = server.wait_for(2)
    time.sleep(0.3)
    assert len(server.messages) == 2  # each step's message once
    alert_id = done["steps"][0]["message_id"]
    assert alert_id == run["steps"][0]["message_id"]  # kept across the retry
    assert parse(messages[0])["Message-ID"] == alert_id
    assert parse(messages[1])["In-Reply-To"] == alert_id
    again = api.post(f"/api/v1/runs/{run['id']}/retry")
    assert again.status_code == 409 and "succeeded" in error_of(again)["message"]
    assert api.post("/api/v1/runs/no-such-run/retry").status_code == 404
