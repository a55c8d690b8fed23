"""Idempotency-Key over real HTTP: a retried request gets the first run, and nothing is sent twice.

Messages go to an in-process SMTP server on 127.0.0.1, which counts what reached it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from mailwright.config import Settings
from mailwright.services import idempotency
from mailwright.services.app import Services
from mailwright.services.idempotency import SEND_EMAIL_SCOPE, IdempotencyClaim
from mailwright.services.sending import SendEmailRequest
from mailwright.services.targets import TargetCreate
from mailwright.storage.tables import IdempotencyKeyRow, RunRow, utcnow
from tests.integration.conftest import Targets
from tests.support.apiserver import APIServer
from tests.support.smtpserver import Faults, SMTPServerFactory, SMTPTestServer

KEY = "Idempotency-Key"
SETTLE_SECONDS = 30.0  # generous: a run on a loaded 2-CPU machine


def message(subject: str = "Invoice 42", to: str = "bob@example.net") -> dict[str, Any]:
    return {"from": "ops@example.org", "to": [to], "subject": subject, "body": "Hello"}


def runs_in_db(mw: Services) -> int:
    with mw.db.session() as session:
        return int(session.scalar(select(func.count()).select_from(RunRow)) or 0)


def wait_until_settled(api: httpx.Client, deadline_seconds: float = SETTLE_SECONDS) -> list[dict[str, Any]]:
    """Every run finished (so nothing more can reach the server); the runs."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        runs: list[dict[str, Any]] = api.get("/api/v1/runs").json()
        if all(r["status"] in ("succeeded", "failed", "cancelled") for r in runs):
            return runs
        assert time.monotonic() < deadline, runs
        time.sleep(0.05)


@pytest.fixture
def relay(targets: Targets, smtp_server_factory: SMTPServerFactory) -> tuple[str, SMTPTestServer]:
    server = smtp_server_factory()
    return targets.target(server, security="none", display_name="Relay").display_name, server


# --- POST /api/v1/send-email -------------------------------------------------------------------


def test_a_retry_with_the_same_key_gets_the_first_result_and_sends_nothing(
    api: httpx.Client, mw: Services, relay: tuple[str, SMTPTestServer]
) -> None:
    target, server = relay
    body = {"target": target, **message()}
    first = api.post("/api/v1/send-email", json=body, headers={KEY: "order-42"})
    assert first.status_code == 200, first.text
    assert "idempotent-replayed" not in first.headers
    # The same body, its keys in another order: the same request.
    again = api.post("/api/v1/send-email", json=dict(reversed(body.items())), headers={KEY: "order-42"})
    assert again.status_code == 200, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()  # the same run, the same Message-ID, the same outcome
    queued = api.post("/api/v1/send-email", params={"wait": "false"}, json=body, headers={KEY: "order-42"})
    assert queued.status_code == 200 and queued.json()["run_id"] == first.json()["run_id"]  # finished already
    wait_until_settled(api)
    assert runs_in_db(mw) == 1
    assert len(server.messages) == 1

    # Without a key, or with another one, the same body is another message.
    other = api.post("/api/v1/send-email", json=body, headers={KEY: "order-43"})
    assert other.status_code == 200 and other.json()["run_id"] != first.json()["run_id"]
    assert len(server.wait_for(2)) == 2


def test_the_same_key_with_another_body_is_refused(
    api: httpx.Client, mw: Services, relay: tuple[str, SMTPTestServer]
) -> None:
    target, server = relay
    first = api.post("/api/v1/send-email", json={"target": target, **message()}, headers={KEY: "k"})
    assert first.status_code == 200, first.text
    changed = api.post(
        "/api/v1/send-email", json={"target": target, **message(subject="Invoice 43")}, headers={KEY: "k"}
    )
    assert changed.status_code == 422
    error = changed.json()["error"]
    assert error["message"] == (
        "Idempotency-Key 'k' was already used with a different request; use a new key for a new message"
    )
    assert error["field"] == KEY and error["code"] == "validation_error"
    wait_until_settled(api)
    assert runs_in_db(mw) == 1 and len(server.messages) == 1


def test_a_replay_while_the_first_is_still_running_waits_for_its_result(
    api: httpx.Client, mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    server = smtp_server_factory(faults=Faults(delay={"data": 1.0}))
    target = targets.target(server, security="none", display_name="Slow relay").display_name
    body = {"target": target, **message()}
    accepted = api.post("/api/v1/send-email", params={"wait": "false"}, json=body, headers={KEY: "slow"})
    assert accepted.status_code == 202, accepted.text
    replayed = api.post("/api/v1/send-email", json=body, headers={KEY: "slow"})  # waits this time
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["run_id"] == accepted.json()["run_id"]
    assert replayed.json()["status"] == "sent"
    wait_until_settled(api)
    assert runs_in_db(mw) == 1 and len(server.messages) == 1


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "is empty"),
        ("x" * 256, "has 256 characters"),
        ("caf\u00e9", "not printable ASCII"),  # sent as Latin-1
        ("tab\there", "not printable ASCII"),
    ],
)
def test_an_unusable_key_is_refused_naming_the_header(
    api: httpx.Client, mw: Services, relay: tuple[str, SMTPTestServer], value: str, problem: str
) -> None:
    target, server = relay
    answer = api.post(
        "/api/v1/send-email",
        json={"target": target, **message()},
        headers=[(KEY.encode(), value.encode("latin-1"))],
    )
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["field"] == KEY
    assert "Idempotency-Key header must be 1 to 255 printable ASCII characters" in error["message"]
    assert problem in error["message"]
    assert runs_in_db(mw) == 0 and server.messages == []


def test_a_key_of_255_printable_characters_is_accepted(
    api: httpx.Client, relay: tuple[str, SMTPTestServer]
) -> None:
    target, _server = relay
    key = "".join(chr(32 + i % 95) for i in range(255)).strip()  # a header value loses outer spaces
    answer = api.post("/api/v1/send-email", json={"target": target, **message()}, headers={KEY: key})
    assert answer.status_code == 200, answer.text


def test_bad_input_with_a_key_stores_nothing_and_leaves_the_key_free(
    api: httpx.Client, mw: Services, relay: tuple[str, SMTPTestServer]
) -> None:
    target, server = relay
    bad = api.post(
        "/api/v1/send-email", json={"target": target, **message(to="not an address")}, headers={KEY: "fix-me"}
    )
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "to"
    assert mw.idempotency.count() == 0 and runs_in_db(mw) == 0
    fixed = api.post("/api/v1/send-email", json={"target": target, **message()}, headers={KEY: "fix-me"})
    assert fixed.status_code == 200, fixed.text
    assert len(server.wait_for(1)) == 1


def test_concurrent_requests_with_one_key_make_one_run(
    api: httpx.Client, mw: Services, relay: tuple[str, SMTPTestServer]
) -> None:
    target, server = relay
    body = {"target": target, **message()}
    start = threading.Barrier(8)

    def post(_: int) -> httpx.Response:
        start.wait(timeout=30)
        return api.post("/api/v1/send-email", json=body, headers={KEY: "together"})

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(post, range(8)))
    assert {a.status_code for a in answers} == {200}, [a.text for a in answers]
    assert len({a.json()["run_id"] for a in answers}) == 1
    assert len({a.json()["message_id"] for a in answers}) == 1
    assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == 7
    wait_until_settled(api)
    assert runs_in_db(mw) == 1 and len(server.messages) == 1


# --- the race itself, at the service: the primary key decides ----------------------------------


def test_the_loser_of_a_race_returns_the_winners_run_and_keeps_none_of_its_own(
    mw: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = mw.targets.create(
        TargetCreate(
            display_name="Nowhere", server="127.0.0.1", port=9, security="none", no_account_keys=True
        )
    )
    request = SendEmailRequest.model_validate({"target": target.id, **message()})
    claim = IdempotencyClaim.of(SEND_EMAIL_SCOPE, "race", request.model_dump(mode="json", by_alias=True))
    winner = mw.idempotency.start_send_email(request, claim)
    assert not winner.replayed

    # The loser read "no such key" just before the winner committed, then wrote its own run.
    real_first_run = mw.idempotency.first_run
    reads: list[str | None] = []

    def stale_then_real(c: IdempotencyClaim) -> str | None:
        found = None if not reads else real_first_run(c)
        reads.append(found)
        return found

    monkeypatch.setattr(mw.idempotency, "first_run", stale_then_real)
    loser = mw.idempotency.start_send_email(request, claim)
    assert loser.replayed and loser.run_id == winner.run_id
    assert reads == [None, winner.run_id]  # the insert was refused, then the winner was read
    assert runs_in_db(mw) == 1  # the loser's run went with its refused key


def test_a_run_that_cannot_be_written_leaves_no_key(mw: Services) -> None:
    request = SendEmailRequest.model_validate({"target": "no such target", **message()})
    claim = IdempotencyClaim.of(SEND_EMAIL_SCOPE, "lost", request.model_dump(mode="json", by_alias=True))
    with pytest.raises(Exception, match="no target named"):
        mw.idempotency.start_send_email(request, claim)
    assert mw.idempotency.count() == 0 and runs_in_db(mw) == 0


# --- retention -----------------------------------------------------------------------------------


def test_keys_are_kept_for_a_day_then_free_and_pruned(
    api: httpx.Client, mw: Services, relay: tuple[str, SMTPTestServer]
) -> None:
    target, server = relay
    assert api.post(
        "/api/v1/send-email", json={"target": target, **message()}, headers={KEY: "old"}
    ).is_success
    assert api.post(
        "/api/v1/send-email", json={"target": target, **message()}, headers={KEY: "new"}
    ).is_success
    assert mw.idempotency.count() == 2
    with mw.db.session() as session:
        session.execute(
            update(IdempotencyKeyRow)
            .where(IdempotencyKeyRow.key == "old")
            .values(created_at=utcnow() - idempotency.KEY_RETENTION - timedelta(minutes=1))
        )
    # An expired key is free: another body is a new message, not a 422.
    reused = api.post(
        "/api/v1/send-email", json={"target": target, **message(subject="Next day")}, headers={KEY: "old"}
    )
    assert reused.status_code == 200, reused.text
    assert len(server.wait_for(3)) == 3
    with mw.db.session() as session:
        session.execute(
            update(IdempotencyKeyRow).values(
                created_at=utcnow() - idempotency.KEY_RETENTION - timedelta(minutes=1)
            )
        )
    assert mw.idempotency.prune() == 2
    assert mw.idempotency.count() == 0
    assert runs_in_db(mw) == 3  # the runs stay; only the keys go


def test_pruning_runs_now_and_then_from_the_requests_that_write_keys(
    mw: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    pruned: list[int] = []

    def prune() -> int:
        pruned.append(1)
        return 0

    monkeypatch.setattr(mw.idempotency, "prune", prune)
    mw.idempotency.prune_now_and_then()
    mw.idempotency.prune_now_and_then()  # within PRUNE_EVERY_SECONDS: not again
    assert pruned == [1]
    monkeypatch.setattr(idempotency, "PRUNE_EVERY_SECONDS", 0.0)
    mw.idempotency.prune_now_and_then()
    assert pruned == [1, 1]


# --- POST /api/v1/send-email/batch ----------------------------------------------------------------


def test_a_batch_retried_with_its_key_is_stored_and_sent_once(
    api: httpx.Client, mw: Services, relay: tuple[str, SMTPTestServer]
) -> None:
    target, server = relay
    body = {"target": target, "messages": [message(to=f"r{i}@example.net") for i in range(3)]}
    first = api.post("/api/v1/send-email/batch", json=body, headers={KEY: "batch-7"})
    assert first.status_code == 202, first.text
    # wait and timeout only shape the answer: the same batch.
    again = api.post("/api/v1/send-email/batch", json={**body, "wait": True}, headers={KEY: "batch-7"})
    assert again.status_code == 200, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["run_id"] == first.json()["run_id"]
    assert again.json()["counts"] == {"succeeded": 3}
    changed = api.post(
        "/api/v1/send-email/batch", json={**body, "messages": body["messages"][:2]}, headers={KEY: "batch-7"}
    )
    assert changed.status_code == 422 and "already used with a different request" in changed.text
    # The key is per endpoint: the same key on send-email is another key.
    single = api.post("/api/v1/send-email", json={"target": target, **message()}, headers={KEY: "batch-7"})
    assert single.status_code == 200, single.text
    wait_until_settled(api)
    assert runs_in_db(mw) == 2 and len(server.messages) == 4


def test_a_refused_batch_keeps_no_key(
    api: httpx.Client, mw: Services, relay: tuple[str, SMTPTestServer]
) -> None:
    target, server = relay
    bad = {"target": target, "messages": [message(), message(to="nobody")]}
    refused = api.post("/api/v1/send-email/batch", json=bad, headers={KEY: "b"})
    assert refused.status_code == 422 and "message 1" in refused.text
    assert mw.idempotency.count() == 0 and runs_in_db(mw) == 0
    good = {"target": target, "messages": [message()], "wait": True}
    assert api.post("/api/v1/send-email/batch", json=good, headers={KEY: "b"}).status_code == 200
    assert len(server.wait_for(1)) == 1


# --- POST /api/v1/workflows/{ref}/start -----------------------------------------------------------


def workflow(name: str, target: str) -> dict[str, Any]:
    return {
        "name": name,
        "target": target,
        "inputs": {"to": {"type": "string"}},
        "steps": [
            {
                "id": "hello",
                "activity": "send_email",
                "with": {"from": "ops@example.org", "to": ["{{ inputs.to }}"], "subject": name, "body": "Hi"},
            }
        ],
    }


def test_workflow_runs_once_per_key_and_workflow(
    api: httpx.Client, mw: Services, relay: tuple[str, SMTPTestServer]
) -> None:
    target, server = relay
    for name in ("Alpha", "Beta"):
        assert api.post("/api/v1/workflows", json={"document": workflow(name, target)}).status_code == 201
    start = {"inputs": {"to": "bob@example.net"}, "wait": True}
    first = api.post("/api/v1/workflows/Alpha/start", json=start, headers={KEY: "w1"})
    assert first.status_code == 200 and first.json()["status"] == "succeeded", first.text
    # By id or by name, waiting or not: the same workflow, the same request.
    alpha_id = first.json()["workflow_id"]
    again = api.post(
        f"/api/v1/workflows/{alpha_id}/start", json={**start, "wait": False}, headers={KEY: "w1"}
    )
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    changed = api.post(
        "/api/v1/workflows/alpha/start", json={"inputs": {"to": "carol@example.net"}}, headers={KEY: "w1"}
    )
    assert changed.status_code == 422 and changed.json()["error"]["field"] == KEY
    # Keys are per workflow: Beta's w1 is another key.
    beta = api.post("/api/v1/workflows/Beta/start", json=start, headers={KEY: "w1"})
    assert beta.status_code == 200 and beta.json()["id"] != first.json()["id"]
    unknown = api.post("/api/v1/workflows/Gamma/start", json=start, headers={KEY: "w1"})
    assert unknown.status_code == 404
    wait_until_settled(api)
    assert runs_in_db(mw) == 2 and len(server.messages) == 2


# --- PostgreSQL: the same race on a server that really runs transactions side by side ----------------


@pytest.fixture
def pg_api(pg_url: str, tmp_path: Path) -> Iterator[tuple[httpx.Client, Services]]:
    services = Services(Settings(home=tmp_path / "pg-home", database_url=pg_url))
    token = services.tokens.create("tests").token
    try:
        with (
            APIServer(services) as server,
            httpx.Client(
                base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60
            ) as client,
        ):
            yield client, services
    finally:
        services.close()


@pytest.mark.postgres
def test_concurrent_requests_with_one_key_on_postgres(
    pg_api: tuple[httpx.Client, Services], smtp_server_factory: SMTPServerFactory
) -> None:
    api, services = pg_api
    server = smtp_server_factory()
    target = services.targets.create(
        TargetCreate(
            display_name="Relay", server="127.0.0.1", port=server.port, security="none", no_account_keys=True
        )
    )
    body = {"target": target.id, **message()}
    start = threading.Barrier(8)

    def post(_: int) -> httpx.Response:
        start.wait(timeout=30)
        return api.post("/api/v1/send-email", json=body, headers={KEY: "together"})

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(post, range(8)))
    assert {a.status_code for a in answers} == {200}, [a.text for a in answers]
    assert len({a.json()["run_id"] for a in answers}) == 1
    wait_until_settled(api)
    assert runs_in_db(services) == 1 and len(server.messages) == 1
