"""`mailwright workflows`, `mailwright runs` and `mailwright worker` through the real entry point.

Every command runs as a subprocess of the installed console script (``tests.support.cli``)
on one data directory per test; the mail goes to in-process SMTP test servers on
127.0.0.1.  Setup that is not the subject of a test (a target aimed at a test server) is
done in-process through the ``targets`` fixture on the same data directory.

The contract checked: exit 0 on success, 1 when a run (``--wait``) did not succeed, 2 on
bad input (with one ``error:`` line naming what and where, and at most one ``hint:``);
``--json`` gives JSON; a run started without ``--wait`` stays queued until a worker
(``mailwright worker``) executes it; the worker stops cleanly on SIGTERM.
"""

from __future__ import annotations

import email
import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import yaml

from mailwright.services.app import Services
from tests.integration.conftest import Targets
from tests.support.cli import CLI, MAILWRIGHT, assert_error, assert_ok
from tests.support.smtpserver import Faults, Received, SMTPServerFactory, SMTPTestServer

WORKFLOW = "Alert and follow-up"
RECIPIENT = "x@example.net"
SECOND = "second@example.net"
RUN_TIMEOUT = 30.0  # seconds a worker may take for a two-step run against a local server


def sample_workflow(target: str, *, name: str = WORKFLOW) -> str:
    """The sample: an alert, then a follow-up to a second address threaded on it."""
    return f"""\
name: {name}
description: an alert, then a follow-up threaded on it
inputs:
  recipient: {{type: string, description: who gets the alert}}
  level: {{type: integer, default: 2}}
target: {target}
steps:
  - id: alert
    activity: send_email
    with:
      from: robot@example.org
      to: ["{{{{ inputs.recipient }}}}"]
      subject: "Alert level {{{{ inputs.level }}}}"
      body: disk full
  - id: followup
    activity: send_email
    with:
      from: robot@example.org
      to: [{SECOND}]
      subject: "Re: Alert"
      body: escalated
      in_reply_to: "{{{{ steps.alert.output.message_id }}}}"
"""


def parse(received: Received) -> EmailMessage:
    message = email.message_from_bytes(received.content, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def relay(targets: Targets, server: SMTPTestServer, name: str = "Relay") -> str:
    return targets.target(server, security="none", display_name=name).display_name


def create_sample(cli: CLI, tmp_path: Path, target: str) -> dict[str, Any]:
    path = write(tmp_path, "alert.yaml", sample_workflow(target))
    created: dict[str, Any] = assert_ok(cli("workflows", "create", "--file", path, "--json")).json()
    return created


def run_id_of(result_json: Any) -> str:
    run_id = result_json["id"]
    assert isinstance(run_id, str) and run_id
    return run_id


def show_run(cli: CLI, run_id: str) -> dict[str, Any]:
    shown: dict[str, Any] = assert_ok(cli("runs", "show", run_id, "--json")).json()
    return shown


def wait_until(cli: CLI, run_id: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Poll `runs show --json` until `done(run)`, for at most RUN_TIMEOUT seconds."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        run = show_run(cli, run_id)
        if done(run):
            return run
        assert time.monotonic() < deadline, f"run {run_id} still {run['status']}: {json.dumps(run, indent=2)}"
        time.sleep(0.3)


def finished(run: dict[str, Any]) -> bool:
    return run["status"] in ("succeeded", "failed", "cancelled")


def start_worker(cli: CLI, *, lease_seconds: float | None = None) -> subprocess.Popen[str]:
    env = dict(cli.env)
    if lease_seconds is not None:
        env["MAILWRIGHT_LEASE_SECONDS"] = str(lease_seconds)
    return subprocess.Popen(
        [str(MAILWRIGHT), "worker"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def terminate(proc: subprocess.Popen[str], timeout: float = 20) -> tuple[int, str]:
    """SIGTERM, then the exit code and everything the worker printed (killed if it hangs)."""
    try:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    return proc.returncode, out + err


@contextmanager
def worker(cli: CLI, *, lease_seconds: float | None = None) -> Iterator[subprocess.Popen[str]]:
    """`mailwright worker` in a subprocess; stopped with SIGTERM, which must end it cleanly."""
    proc = start_worker(cli, lease_seconds=lease_seconds)
    try:
        yield proc
        assert proc.poll() is None, f"the worker exited early ({proc.returncode}): {proc.communicate()}"
        code, printed = terminate(proc)
        assert code == 0, f"worker exit {code} after SIGTERM\n{printed}"
        assert "Traceback" not in printed, printed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


# --------------------------------------------------------------------------------------
# validate
# --------------------------------------------------------------------------------------


def test_validate_good_and_bad_documents(
    cli: CLI, targets: Targets, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    target = relay(targets, smtp_server_factory())
    good = sample_workflow(target)
    files = {
        "good": write(tmp_path, "good.yaml", good),
        "json": write(tmp_path, "good.json", json.dumps(yaml.safe_load(good))),
        "target": write(tmp_path, "target.yaml", good.replace(f"target: {target}", "target: Nowhere")),
        "input": write(tmp_path, "input.yaml", good.replace("inputs.recipient }}", "inputs.recipeint }}")),
        "activity": write(tmp_path, "activity.yaml", "send_emial".join(good.rsplit("send_email", 1))),
        "key": write(tmp_path, "key.yaml", good.replace("  - id: alert\n", "  - id: alert\n    wiht: {}\n")),
        "step": write(tmp_path, "step.yaml", good.replace("steps.alert.output", "steps.followup.output")),
        "syntax": write(tmp_path, "syntax.yaml", "name: broken\nsteps: [\n  - id: a\n"),
    }
    results = {name: cli.spawn("workflows", "validate", path) for name, path in files.items()}
    missing_file = cli("workflows", "validate", tmp_path / "nope.yaml")

    assert f"valid: workflow '{WORKFLOW}', 2 step(s)" in assert_ok(results["good"].result()).stdout
    assert "valid" in assert_ok(results["json"].result()).stdout
    assert_error(results["target"].result(), 2, "target 'Nowhere' does not exist", target)
    assert_error(
        results["input"].result(), 2, "steps[0].with.to[0]", "inputs.recipeint", "not a declared input"
    )
    assert_error(results["activity"].result(), 2, "steps[1].activity", "send_emial", "send_email")
    assert_error(results["key"].result(), 2, "key.yaml", "line ", "steps[0]", "'wiht'", "'with'")
    assert_error(results["step"].result(), 2, "steps[1].with.in_reply_to", "steps.followup", "has not run")
    assert_error(results["syntax"].result(), 2, "syntax.yaml", "line ")
    assert_error(missing_file, 2, "nope.yaml")
    # Nothing was stored by validate.
    assert assert_ok(cli("workflows", "list", "--json")).json() == []


# --------------------------------------------------------------------------------------
# create, list, show, run --wait
# --------------------------------------------------------------------------------------


def test_create_list_show_and_run_wait_threads_the_follow_up(
    cli: CLI, targets: Targets, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    server = smtp_server_factory()
    target = relay(targets, server)
    created = create_sample(cli, tmp_path, target)
    assert created["name"] == WORKFLOW and created["target"] == target
    assert created["steps"] == ["alert (send_email)", "followup (send_email)"]

    again = cli.spawn("workflows", "create", "--file", tmp_path / "alert.yaml")
    listed = cli.spawn("workflows", "list", "--json")
    table = cli.spawn("workflows", "list")
    shown = cli.spawn("workflows", "show", WORKFLOW.upper(), "--json")
    text = cli.spawn("workflows", "show", created["id"])
    assert_error(again.result(), 2, "already exists")
    (listed_one,) = assert_ok(listed.result()).json()
    assert (listed_one["id"], listed_one["name"], listed_one["runs"]) == (created["id"], WORKFLOW, 0)
    assert WORKFLOW in assert_ok(table.result()).stdout
    detail = assert_ok(shown.result()).json()
    assert detail["id"] == created["id"]
    assert detail["inputs"]["recipient"]["type"] == "string"
    assert detail["inputs"]["level"] == {"type": "integer", "default": 2, "description": ""}
    assert [s["id"] for s in detail["document"]["steps"]] == ["alert", "followup"]
    document = yaml.safe_load(assert_ok(text.result()).stdout)
    assert document["name"] == WORKFLOW and document["target"] == target
    assert "{{ steps.alert.output.message_id }}" in assert_ok(text.result()).stdout
    replaced = assert_ok(cli("workflows", "create", "--file", tmp_path / "alert.yaml", "--replace", "--json"))
    assert replaced.json()["id"] == created["id"]

    result = cli(
        "workflows", "run", WORKFLOW, "--input", f"recipient={RECIPIENT}", "--input", "level=5", "--wait",
        "--json",
    )  # fmt: skip
    run = assert_ok(result).json()
    assert run["status"] == "succeeded", run
    assert run["inputs"] == {"recipient": RECIPIENT, "level": 5}  # "5" coerced to the integer type
    alert, followup = server.wait_for(2)
    assert len(server.messages) == 2
    first, second = parse(alert), parse(followup)
    assert alert.rcpt_tos == [RECIPIENT] and followup.rcpt_tos == [SECOND]
    assert str(first["Subject"]) == "Alert level 5"
    assert first["Message-ID"] and second["In-Reply-To"] == first["Message-ID"]
    assert second["Message-ID"] != first["Message-ID"]

    shown_run = show_run(cli, run_id_of(run))
    assert shown_run["status"] == "succeeded" and shown_run["workflow"] == WORKFLOW
    steps = {s["step"]: s for s in shown_run["steps"]}
    assert [s["step"] for s in shown_run["steps"]] == ["alert", "followup"]
    assert all(s["status"] == "succeeded" for s in steps.values())
    assert steps["alert"]["message_id"] == first["Message-ID"]
    assert steps["followup"]["message_id"] == second["Message-ID"]
    assert steps["alert"]["output"]["message_id"] == first["Message-ID"]

    runs = cli.spawn("runs", "list", "--json")
    text_run = cli.spawn("runs", "show", shown_run["id"])
    counted = cli.spawn("workflows", "show", WORKFLOW, "--json")
    assert [r["id"] for r in assert_ok(runs.result()).json()] == [shown_run["id"]]
    printed = assert_ok(text_run.result()).stdout
    assert "SUCCEEDED" in printed and first["Message-ID"] in printed and RECIPIENT in printed
    assert assert_ok(counted.result()).json()["runs"] == 1


def test_run_refuses_bad_inputs_and_unknown_names(
    cli: CLI, targets: Targets, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    server = smtp_server_factory()
    create_sample(cli, tmp_path, relay(targets, server))
    missing = cli.spawn("workflows", "run", WORKFLOW)
    unknown = cli.spawn("workflows", "run", WORKFLOW, "-i", f"recipient={RECIPIENT}", "-i", "colour=red")
    malformed = cli.spawn("workflows", "run", WORKFLOW, "--input", "recipient")
    wrong_type = cli.spawn("workflows", "run", WORKFLOW, "-i", f"recipient={RECIPIENT}", "-i", "level=high")
    no_workflow = cli.spawn("workflows", "run", "No such workflow", "-i", f"recipient={RECIPIENT}")
    no_target = cli.spawn("workflows", "run", WORKFLOW, "-i", f"recipient={RECIPIENT}", "--target", "Nowhere")
    assert_error(missing.result(), 2, "missing required input recipient")
    assert_error(unknown.result(), 2, "colour")
    assert_error(malformed.result(), 2, "KEY=VALUE")
    assert_error(wrong_type.result(), 2, "level", "integer")
    assert_error(no_workflow.result(), 2, "No such workflow")
    assert_error(no_target.result(), 2, "Nowhere")
    assert assert_ok(cli("runs", "list", "--json")).json() == []  # nothing was queued
    assert server.messages == []


# --------------------------------------------------------------------------------------
# queued runs and the worker
# --------------------------------------------------------------------------------------


def test_run_without_wait_queues_and_the_worker_executes_it(
    cli: CLI, targets: Targets, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    server = smtp_server_factory()
    create_sample(cli, tmp_path, relay(targets, server))
    text = assert_ok(cli("workflows", "run", WORKFLOW, "--input", f"recipient={RECIPIENT}")).stdout
    assert "queued run " in text
    queued = assert_ok(
        cli("workflows", "run", WORKFLOW, "--input", f"recipient={RECIPIENT}", "--json")
    ).json()
    assert queued["status"] == "queued"
    assert [s["status"] for s in queued["steps"]] == ["pending", "pending"]
    first_id = text.split("queued run ", 1)[1].split()[0]
    assert show_run(cli, first_id)["status"] == "queued"
    time.sleep(1.0)
    assert server.messages == []  # nobody executes runs until a worker is there

    with worker(cli):
        done = [wait_until(cli, run_id, finished) for run_id in (first_id, run_id_of(queued))]
    for run in done:
        assert run["status"] == "succeeded", run
        assert [s["status"] for s in run["steps"]] == ["succeeded", "succeeded"]
        assert all(s["message_id"] for s in run["steps"])
    assert len(server.wait_for(4)) == 4
    ids = [parse(m)["Message-ID"] for m in server.messages]
    assert len(set(ids)) == 4  # each message exactly once
    assert sorted(ids) == sorted(s["message_id"] for run in done for s in run["steps"])


def test_sigterm_lets_the_send_in_flight_finish(
    cli: CLI, mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    # A graceful stop is not a crash: the step being sent finishes (and is recorded)
    # before the worker exits, so nothing is left with an unknown outcome and nothing
    # is delivered twice.
    server = smtp_server_factory(faults=Faults(delay={"data": 2.0}, fail_times=1))
    create_sample(cli, tmp_path, relay(targets, server))
    run_id = run_id_of(
        assert_ok(cli("workflows", "run", WORKFLOW, "-i", f"recipient={RECIPIENT}", "--json")).json()
    )
    proc = start_worker(cli, lease_seconds=3)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while mw.runs.get(run_id).steps[0].send_state != "sending":  # DATA has begun
            assert proc.poll() is None and time.monotonic() < deadline, "the send never began"
            time.sleep(0.05)
        code, printed = terminate(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    after_stop = mw.runs.get(run_id).steps[0]

    with worker(cli, lease_seconds=3):  # whatever is left is finished by the next worker
        done = wait_until(cli, run_id, finished)
    assert done["status"] == "succeeded", done
    time.sleep(0.5)
    alerts = [m for m in server.messages if m.rcpt_tos == [RECIPIENT]]
    assert len(alerts) == 1, (
        f"the alert was delivered {len(alerts)} times; notes: {done['steps'][0]['notes']}"
    )
    assert (after_stop.status, after_stop.send_state) == ("succeeded", "sent"), (
        f"after SIGTERM the alert step was left {after_stop.status}/{after_stop.send_state}"
    )
    assert code == 0, f"worker exit {code} after SIGTERM\n{printed}"
    assert "Traceback" not in printed, printed


def test_failed_run_exits_1_and_retry_delivers_once(
    cli: CLI, targets: Targets, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    server = smtp_server_factory(faults=Faults(reply={"data": (554, "5.7.1 message rejected")}, fail_times=1))
    create_sample(cli, tmp_path, relay(targets, server))
    failed = cli("workflows", "run", WORKFLOW, "--input", f"recipient={RECIPIENT}", "--wait", "--json")
    assert failed.returncode == 1, str(failed)
    run = failed.json()
    assert run["status"] == "failed"
    assert run["error"] is not None and "554" in run["error"]["message"]
    alert, followup = run["steps"]
    assert (alert["status"], alert["attempts"]) == ("failed", 1)  # permanent: not retried
    assert followup["status"] == "skipped"
    assert server.messages == []
    text = cli("runs", "show", run["id"])
    assert "FAILED" in assert_ok(text).stdout and "554" in text.stdout
    plain = cli("workflows", "run", WORKFLOW, "--input", f"recipient={RECIPIENT}", "--wait")
    assert plain.returncode == 0, str(plain)  # the fault budget is spent: this one succeeds
    assert len(server.wait_for(2)) == 2

    assert "queued again" in assert_ok(cli("runs", "retry", run["id"])).stdout
    assert show_run(cli, run["id"])["status"] == "queued"
    with worker(cli):
        retried = wait_until(cli, run["id"], finished)
    assert retried["status"] == "succeeded", retried
    assert [s["status"] for s in retried["steps"]] == ["succeeded", "succeeded"]
    assert retried["error"] is None
    messages = server.wait_for(4)
    assert len(messages) == 4
    by_id = {parse(m)["Message-ID"]: m for m in messages}
    assert len(by_id) == 4  # no message twice
    alert_id = retried["steps"][0]["message_id"]
    assert by_id[alert_id].rcpt_tos == [RECIPIENT]
    assert parse(by_id[retried["steps"][1]["message_id"]])["In-Reply-To"] == alert_id
    assert alert_id == alert["message_id"]  # the Message-ID is kept across the retry
    assert_error(cli("runs", "retry", run["id"]), 2, "succeeded")


def test_cancel_a_queued_run_and_delete_the_workflow(
    cli: CLI, targets: Targets, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    server = smtp_server_factory()
    create_sample(cli, tmp_path, relay(targets, server))
    queued = assert_ok(cli("workflows", "run", WORKFLOW, "-i", f"recipient={RECIPIENT}", "--json")).json()
    run_id = run_id_of(queued)
    assert_error(cli("workflows", "delete", WORKFLOW), 2, "in progress")  # a queued run holds it

    assert "cancelled" in assert_ok(cli("runs", "cancel", run_id)).stdout
    cancelled = show_run(cli, run_id)
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"]
    assert [s["status"] for s in cancelled["steps"]] == ["cancelled", "cancelled"]
    again = cli.spawn("runs", "cancel", run_id)
    unknown = cli.spawn("runs", "cancel", "no-such-run")
    listed = cli.spawn("runs", "list", "--status", "cancelled", "--json")
    assert_error(again.result(), 2, "cancelled")
    assert_error(unknown.result(), 2, "no-such-run")
    assert [r["id"] for r in assert_ok(listed.result()).json()] == [run_id]

    assert WORKFLOW in assert_ok(cli("workflows", "delete", WORKFLOW)).stdout
    gone = cli.spawn("workflows", "show", WORKFLOW)
    delete_again = cli.spawn("workflows", "delete", WORKFLOW)
    kept = cli.spawn("runs", "show", run_id, "--json")
    assert_error(gone.result(), 2, WORKFLOW)
    assert_error(delete_again.result(), 2, WORKFLOW)
    assert assert_ok(kept.result()).json()["status"] == "cancelled"  # finished runs are kept
    assert server.messages == []


# --------------------------------------------------------------------------------------
# export and import
# --------------------------------------------------------------------------------------


def test_export_then_import_into_a_home_without_the_target(
    cli: CLI, targets: Targets, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    server = smtp_server_factory()
    target = relay(targets, server)
    created = create_sample(cli, tmp_path, target)
    exported = tmp_path / "exported.yaml"
    to_file = cli.spawn("workflows", "export", WORKFLOW, "-o", exported)
    as_json = cli.spawn("workflows", "export", WORKFLOW, "--format", "json")
    result = assert_ok(to_file.result())
    assert target in result.stderr  # the names it depends on are listed
    assert yaml.safe_load(exported.read_text(encoding="utf-8")) == created["document"]
    assert json.loads(assert_ok(as_json.result()).stdout) == created["document"]

    other = CLI(tmp_path / "other-home")
    try:
        assert_error(other("workflows", "import", exported), 2, f"target '{target}' does not exist")
        assert assert_ok(other("workflows", "list", "--json")).json() == []
        assert_ok(
            other(
                "targets", "create", "--name", target, "--server", "127.0.0.1", "--port", server.port,
                "--security", "none", "--no-account-keys",
            )
        )  # fmt: skip
        assert WORKFLOW in assert_ok(other("workflows", "import", exported)).stdout
        assert_error(other("workflows", "import", exported), 2, "already exists")
        assert_ok(other("workflows", "import", exported, "--replace"))
        imported = assert_ok(other("workflows", "show", WORKFLOW, "--json")).json()
        assert imported["document"] == created["document"]
        ran = assert_ok(
            other("workflows", "run", WORKFLOW, "-i", f"recipient={RECIPIENT}", "--wait", "--json")
        ).json()
        assert ran["status"] == "succeeded"
        assert len(server.wait_for(2)) == 2
        other.assert_no_traceback()
    finally:
        other.close()
