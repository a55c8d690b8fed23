"""Prometheus metrics from a real `serve` and a real `mailwright worker`, after real sends.

Sends go to in-process SMTP servers; `/metrics` is scraped over HTTP and parsed with
prometheus-client's own parser, and the numbers are checked: sent per target, a failure,
a rate-limit deferral, runs by status, the queue depth with no worker, a lease takeover.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from mailwright import metrics
from mailwright.config import Settings
from mailwright.domain.roles import Role
from mailwright.ledger import RunLedger
from mailwright.server import create_app
from mailwright.services.app import Services
from mailwright.services.runs import _GAUGES
from mailwright.services.sending import SendEmailRequest
from mailwright.services.targets import TargetCreate
from mailwright.storage.tables import RunRow, new_id, utcnow
from tests.integration.conftest import Targets
from tests.integration.test_graph_target import graph_target
from tests.integration.test_graph_trigger import graph, invoices, running
from tests.security.serveproc import ServeProcess
from tests.support.apiserver import APIServer
from tests.support.cli import CLI, MAILWRIGHT
from tests.support.graph_keys import GraphKeys, graph_oauth, keyed
from tests.support.graph_server import GraphServer
from tests.support.smtpserver import Faults, SMTPServerFactory

__all__ = ["graph", "graph_oauth", "keyed"]  # the fixtures, used here by name

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
SETTLE_SECONDS = 60.0  # generous: two CPUs are shared with other test sessions


def samples(text: str) -> Samples:
    """Every sample of an exposition, by name and labels (parsing fails the test if the format is off)."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(url: str, token: str | None = None) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(url, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    # Labels name targets, never a recipient or a Message-ID.
    assert "@example" not in response.text
    return samples(response.text)


def eventually(check: Callable[[], Samples], until: Callable[[Samples], bool]) -> Samples:
    """Scrape until `until` holds (a count lands just after the message does)."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        found = check()
        if until(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def request(target: str, **fields: Any) -> dict[str, Any]:
    return {
        "target": target,
        "from": "robot@example.org",
        "to": ["bob@example.net"],
        "subject": "metrics",
        "body": "counted",
        **fields,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- serve ----------------------------------------------------------------------------------------


def test_serve_counts_sends_failures_and_deferrals_per_target(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    ok = targets.target(smtp_server_factory(), security="none", display_name="Metrics OK")
    refusing = smtp_server_factory(faults=Faults(reply={"data": (554, "5.7.1 refused")}))
    refused = targets.target(refusing, security="none", display_name="Metrics Refused")
    limited = targets.target(
        smtp_server_factory(), security="none", display_name="Metrics Limited", rate_per_day=1
    )
    operator = mw.tokens.create("sender", role=Role.OPERATOR).token
    viewer = mw.tokens.create("prometheus", role=Role.VIEWER).token
    with ServeProcess(tmp_path / "home") as serve:
        api = httpx.Client(
            base_url=serve.base_url, headers={"Authorization": f"Bearer {operator}"}, timeout=120
        )
        for _ in range(3):
            assert api.post("/api/v1/send-email", json=request(ok.display_name)).status_code == 200
        failed = api.post("/api/v1/send-email", json=request(refused.display_name))
        assert failed.status_code >= 400 and "554" in failed.text
        assert api.post("/api/v1/send-email", json=request(limited.display_name)).status_code == 200
        # The day's one message is spent: the next waits for tomorrow (deferred, not failed).
        held = api.post("/api/v1/send-email", params={"wait": "false"}, json=request(limited.display_name))
        assert held.status_code == 202
        run_id = held.json()["run_id"]
        deadline = time.monotonic() + SETTLE_SECONDS
        while api.get(f"/api/v1/runs/{run_id}").json()["not_before"] is None:
            assert time.monotonic() < deadline, "the limited run was not deferred"
            time.sleep(0.1)

        found = scrape(f"{serve.base_url}/metrics", viewer)
        steps = "mailwright_send_steps_total"
        assert value(found, steps, target="Metrics OK", outcome="sent") == 3
        assert value(found, steps, target="Metrics Refused", outcome="failed") == 1
        assert value(found, steps, target="Metrics Limited", outcome="sent") == 1
        assert value(found, steps, target="Metrics Limited", outcome="deferred") == 1
        assert value(found, "mailwright_rate_limit_deferrals_total", target="Metrics Limited") == 1
        assert value(found, "mailwright_rate_limit_deferrals_total", target="Metrics OK") == 0
        # The send time of the three accepted messages, in the buckets from 5 ms to 60 s.
        assert value(found, "mailwright_send_seconds_count", target="Metrics OK") == 3
        assert 0 < value(found, "mailwright_send_seconds_sum", target="Metrics OK") < 60
        assert value(found, "mailwright_send_seconds_bucket", target="Metrics OK", le="60.0") == 3
        assert value(found, "mailwright_send_seconds_bucket", target="Metrics OK", le="+Inf") == 3
        # Runs: those that ended, as they ended; those waiting, from the database.
        assert value(found, "mailwright_runs_finished_total", status="succeeded") == 4
        assert value(found, "mailwright_runs_finished_total", status="failed") == 1
        assert value(found, "mailwright_runs", status="queued", pool="") == 1  # the deferred one
        assert value(found, "mailwright_runs", status="running", pool="") == 0
        assert value(found, "mailwright_queue_depth", pool="") == 0  # deferred until tomorrow: not due
        assert value(found, "mailwright_database_up") == 1
        assert value(found, "process_resident_memory_bytes") > 0

        # Auth: any valid token; none, a malformed header or an unknown token get the API's 401.
        anonymous = httpx.get(f"{serve.base_url}/metrics", timeout=30)
        assert anonymous.status_code == 401
        error = anonymous.json()["error"]
        assert "Bearer" in error["message"] and "--role viewer" in error["hint"]
        assert httpx.get(f"{serve.base_url}/metrics", headers={"Authorization": "Basic x"}).status_code == 401
        unknown = httpx.get(f"{serve.base_url}/metrics", headers={"Authorization": "Bearer mw_nope"})
        assert unknown.status_code == 401 and "unknown or revoked" in unknown.json()["error"]["message"]
        assert scrape(f"{serve.base_url}/metrics", operator)  # any role reads them
        # Not part of the API's description.
        assert "/metrics" not in httpx.get(f"{serve.base_url}/api/openapi.json").json()["paths"]


# --- worker -----------------------------------------------------------------------------------


@pytest.fixture
def worker_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILWRIGHT_")}
    env["MAILWRIGHT_HOME"] = str(tmp_path / "home")
    return env


def start_worker(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(MAILWRIGHT), "worker", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def test_queue_depth_without_a_worker_then_a_worker_in_multiprocess_mode(
    mw: Services,
    targets: Targets,
    smtp_server_factory: SMTPServerFactory,
    tmp_path: Path,
    worker_env: dict[str, str],
    workers: list[subprocess.Popen[str]],
) -> None:
    server = smtp_server_factory(faults=Faults(refuse_recipients={"r5@example.net": (550, "5.1.1 no")}))
    target = targets.target(server, security="none", display_name="Worker Target")
    token = mw.tokens.create("prometheus", role=Role.VIEWER).token
    send = SendEmailRequest.model_validate(request("Worker Target"))
    runs = [mw.runs.start_send_email(send) for _ in range(4)]
    # And a batch of six, one of them to a recipient the server refuses.
    batch = [(f"line {i}", json.dumps(request("", to=[f"r{i}@example.net"]))) for i in range(1, 7)]
    mw.batches.create(batch, target="Worker Target")
    # A worker that claimed one and died: its lease runs out in a few seconds.
    assert RunLedger(mw.db).try_claim(runs[0].id, owner="dead-worker", duration=timedelta(seconds=3))

    # No worker anywhere: the queue is what the database says.
    with APIServer(mw, app=create_app(mw, run_worker=False)) as api:
        found = scrape(f"{api.base_url}/metrics", token)
    assert value(found, "mailwright_runs", status="queued", pool="") == 4
    assert value(found, "mailwright_runs", status="running", pool="") == 1
    assert (
        value(found, "mailwright_queue_depth", pool="") == 4
    )  # the claimed one is not due while its lease holds

    # A worker with its own metrics port (from MAILWRIGHT_METRICS_PORT), in multiprocess mode.
    shared = tmp_path / "prometheus"
    shared.mkdir()
    port = free_port()
    env = {**worker_env, "MAILWRIGHT_METRICS_PORT": str(port), "PROMETHEUS_MULTIPROC_DIR": str(shared)}
    workers.append(start_worker(env))
    server.wait_for(9, timeout=SETTLE_SECONDS)
    url = f"http://127.0.0.1:{port}/metrics"

    def scrape_worker() -> Samples:
        try:
            return scrape(url)  # no token: loopback only
        except httpx.TransportError:
            return {}

    found = eventually(
        scrape_worker,
        lambda f: (
            value(f, "mailwright_runs_finished_total", status="succeeded") == 4
            and value(f, "mailwright_runs_finished_total", status="failed") == 1
            and value(f, "mailwright_queue_depth", pool="") == 0
            and value(f, "mailwright_runs", status="running", pool="") == 0
        ),
    )
    steps = "mailwright_send_steps_total"
    assert value(found, steps, target=target.display_name, outcome="sent") == 4 + 5
    assert value(found, steps, target=target.display_name, outcome="failed") == 1  # r5, in the batch
    assert value(found, "mailwright_send_seconds_count", target=target.display_name) == 9
    assert value(found, "mailwright_lease_takeovers_total") == 1  # the dead worker's run
    assert value(found, "mailwright_runs_finished_total", status="succeeded") == 4
    assert value(found, "mailwright_runs_finished_total", status="failed") == 1  # the batch
    assert value(found, "mailwright_queue_depth", pool="") == 0
    assert value(found, "mailwright_runs", status="queued", pool="") == 0
    # Multiprocess mode: the figures come from the files every process of the host writes.
    assert any(shared.glob("counter_*.db")) and any(shared.glob("histogram_*.db"))

    workers[0].send_signal(signal.SIGTERM)
    output, _ = workers[0].communicate(timeout=60)
    assert f"Metrics on http://127.0.0.1:{port}/metrics" in output


def test_a_busy_metrics_port_is_refused_naming_the_option(cli: CLI) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli("worker", "--metrics-port", port)
    assert result.returncode != 0
    assert f"127.0.0.1:{port}" in result.stderr and "in use" in result.stderr
    assert "--metrics-port" in result.stderr and "Traceback" not in result.output


def test_a_worker_beyond_loopback_is_warned_that_its_metrics_are_open(
    worker_env: dict[str, str], workers: list[subprocess.Popen[str]]
) -> None:
    workers.append(start_worker(worker_env, "--metrics-port", "0", "--metrics-host", "0.0.0.0"))
    deadline = time.monotonic() + SETTLE_SECONDS
    assert workers[0].stdout is not None
    lines = []
    while time.monotonic() < deadline:
        line = workers[0].stdout.readline()
        lines.append(line)
        if line.startswith("Metrics on http://0.0.0.0:"):
            break
    else:
        raise AssertionError("".join(lines))
    port = int(line.rsplit(":", 1)[1].split("/")[0])
    assert port > 0  # port 0: any free one, and the line says which
    assert value(scrape(f"http://127.0.0.1:{port}/metrics"), "mailwright_database_up") == 1
    workers[0].send_signal(signal.SIGTERM)
    workers[0].wait(timeout=60)
    rest = workers[0].stdout.read()  # not communicate(): readline's buffer holds part of it
    assert "need no token" in "".join(lines) + rest


def test_a_bad_multiprocess_directory_is_a_clear_error(cli: CLI, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    result = cli("worker", "--metrics-port", "0", env={"PROMETHEUS_MULTIPROC_DIR": str(missing)})
    assert result.returncode != 0
    assert f"PROMETHEUS_MULTIPROC_DIR={missing} is not a directory" in result.stderr
    assert "Traceback" not in result.output


# --- the database read at each scrape -----------------------------------------------------------


@pytest.mark.postgres
def test_the_scrape_reads_only_the_unfinished_runs_through_the_status_index(
    tmp_path: Path, pg_url: str
) -> None:
    """A big history costs a scrape nothing: PostgreSQL reads the queue through ix_runs_status."""
    services = Services(Settings(home=tmp_path / "home", database_url=pg_url))
    try:
        now = utcnow()
        row = {"workflow_name": "w", "document": {}, "inputs": {}, "cancel_requested": False}
        row.update(lease_epoch=0, not_before=None)  # every row names every column: one executemany
        finished = [{**row, "id": new_id(), "status": "succeeded", "created_at": now} for _ in range(50_000)]
        waiting = [{**row, "id": new_id(), "status": "queued", "created_at": now} for _ in range(5)]
        tomorrow = now + timedelta(hours=1)
        later = [{**row, "id": new_id(), "status": "queued", "created_at": now, "not_before": tomorrow}]
        routed = [
            {**row, "id": new_id(), "status": "queued", "created_at": now, "pool": "dmz"} for _ in range(2)
        ]
        with services.db.engine.begin() as connection:
            connection.execute(sa.insert(RunRow), finished + waiting + later)
            connection.execute(sa.insert(RunRow), routed)
            connection.execute(sa.text("ANALYZE runs"))
        gauges = services.runs.gauges()
        assert dict(gauges.by_status) == {("queued", ""): 6, ("running", ""): 0, ("queued", "dmz"): 2}
        assert dict(gauges.due) == {"": 5, "dmz": 2}
        with services.db.engine.connect() as connection:
            query = _GAUGES.params(now=utcnow()).compile(
                services.db.engine, compile_kwargs={"literal_binds": True}
            )
            plan = "\n".join(r[0] for r in connection.exec_driver_sql(f"EXPLAIN {query}").all())
        assert "ix_runs_status" in plan and "Seq Scan" not in plan, plan
    finally:
        services.close()


# --- email triggers -------------------------------------------------------------------------------


async def test_trigger_checks_and_errors_are_counted(
    mw: Services, graph: GraphServer, keyed: GraphKeys
) -> None:
    graph_target(mw, graph, keyed, token="good")
    mw.workflows.create(invoices({"action": "none"}))  # "Graph invoices", on the Graph stand-in
    closed = free_port()  # nothing listens there: every look fails, and is retried
    mw.targets.create(
        TargetCreate.model_validate(
            {
                "display_name": "Closed",
                "type": "imap",
                "server": "127.0.0.1",
                "port": closed,
                "security": "none",
                "no_account_keys": True,
            }
        )
    )
    mw.workflows.create(
        "name: Metrics broken inbox\n"
        "triggers: [{type: email, target: Closed}]\n"
        "steps: [{id: s, activity: set_variables, with: {x: 1}}]\n"
    )
    exposition = metrics.Exposition()  # this process: the trigger manager runs here
    checks, errors = "mailwright_trigger_checks_total", "mailwright_trigger_errors_total"
    good = {"workflow": "Graph invoices", "trigger": "0"}
    broken = {"workflow": "Metrics broken inbox", "trigger": "0"}

    def counted() -> Samples:
        return samples(exposition.render().decode())

    before = counted()
    deadline = time.monotonic() + SETTLE_SECONDS
    async with running(mw, execute=False):
        while time.monotonic() < deadline:
            found = counted()
            if (
                value(found, checks, **good) >= value(before, checks, **good) + 3
                and value(found, errors, **broken) >= value(before, errors, **broken) + 2
            ):
                break
            await asyncio.sleep(0.2)
    assert value(found, checks, **good) >= value(before, checks, **good) + 3
    assert value(found, errors, **broken) >= value(before, errors, **broken) + 2
    assert value(found, errors, **good) == value(before, errors, **good)
    assert value(found, checks, **broken) == 0
