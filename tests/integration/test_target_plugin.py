"""A target type from a plugin (tests/plugins/recording_target.py) works through every face, unchanged.

The type records what it is asked to send in a JSONL file in a directory: no server,
no port. The CLI gets it in its own process from MAILWRIGHT_PLUGINS; the REST API and
a send_email workflow step get it registered in this process.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from mailwright.plugins import register_target_type, unregister_target_type
from mailwright.services.app import Services
from tests.support.cli import CLI, assert_error, assert_ok

PLUGIN_FILE = Path(__file__).resolve().parents[1] / "plugins" / "recording_target.py"
PLUGIN = {"MAILWRIGHT_PLUGINS": str(PLUGIN_FILE)}


@pytest.fixture
def recording() -> Iterator[None]:
    """The recording type registered in this process, and forgotten afterwards (other tests list the
    built-in types only)."""
    from tests.plugins.recording_target import RECORDING  # importing registers it

    unregister_target_type(RECORDING.name)
    register_target_type(RECORDING)
    yield
    unregister_target_type(RECORDING.name)


def recorded(directory: Path) -> list[dict[str, Any]]:
    """What the recording target wrote in `directory`, oldest first."""
    path = directory / "sent.jsonl"
    return (
        [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []
    )


def test_the_cli_creates_tests_shows_and_sends_through_a_plugin_type(cli: CLI, tmp_path: Path) -> None:
    box = tmp_path / "box"
    box.mkdir()
    helped = cli.spawn("targets", "create", "--help", env=PLUGIN)
    plain = cli.spawn("targets", "create", "--help")
    created = assert_ok(
        cli(
            "targets", "create", "--type", "recording", "--name", "Recorder", "--directory", box,
            "--no-account-keys", "--json", env=PLUGIN,
        )
    ).json()  # fmt: skip
    assert (created["type"], created["type_label"], created["protocol"]) == (
        "recording",
        "Recording",
        "JSONL",
    )
    assert created["directory"] == str(box) and "server" not in created
    shown = cli.spawn("targets", "show", "recorder", env=PLUGIN)
    listed = cli.spawn("targets", "list", env=PLUGIN)
    tested = cli.spawn("targets", "test", "Recorder", env=PLUGIN)
    relative = cli.spawn("targets", "update", "Recorder", "--directory", "relative/path", env=PLUGIN)
    sent = cli.spawn(
        "send", "--target", "Recorder", "--from", "robot@example.org", "--to", "bob@example.org",
        "--subject", "Recorded", "--body", "Hello", "--json", env=PLUGIN,
    )  # fmt: skip

    help_text = assert_ok(helped.result()).stdout
    assert "--directory" in help_text and "recording:" in help_text
    assert "--directory" not in assert_ok(plain.result()).stdout  # not loaded: not offered
    details = assert_ok(shown.result()).stdout
    assert "Directory" in details and str(box) in details and "SMTP" not in details
    assert str(box) in assert_ok(listed.result()).stdout
    assert "OK" in assert_ok(tested.result()).stdout
    assert_error(relative.result(), 2, "absolute path")
    result = assert_ok(sent.result()).json()
    assert result["status"] == "sent" and result["recipients"][0]["reply"] == "recorded"
    (line,) = recorded(box)
    assert line["recipients"] == ["bob@example.org"] and "Subject: Recorded" in line["data"]


@pytest.mark.usefixtures("recording")
def test_the_rest_api_creates_updates_and_tests_a_plugin_type(api: httpx.Client, tmp_path: Path) -> None:
    types = {t["name"]: t for t in api.get("/api/v1/target-types").json()}
    assert types["recording"]["label"] == "Recording"
    created = api.post(
        "/api/v1/targets",
        json={
            "display_name": "Recorder",
            "type": "recording",
            "directory": str(tmp_path),
            "no_account_keys": True,
        },
    )
    assert created.status_code == 201, created.text
    assert created.json()["directory"] == str(tmp_path)
    wrong = api.post(
        "/api/v1/targets",
        json={
            "display_name": "Other",
            "type": "recording",
            "directory": str(tmp_path),
            "server": "h.example",
            "no_account_keys": True,
        },
    )
    assert wrong.status_code == 422 and wrong.json()["error"]["field"] == "server"  # not a setting it has
    moved = api.patch("/api/v1/targets/recorder", json={"directory": str(tmp_path / "later")})
    assert moved.status_code == 200 and moved.json()["directory"] == str(tmp_path / "later")
    tested = api.post("/api/v1/targets/Recorder/test")
    assert tested.status_code == 200 and tested.json()["ok"] is False  # "later" does not exist
    assert "not a writable directory" in tested.json()["error"]["message"]


@pytest.mark.usefixtures("recording")
async def test_a_send_email_step_sends_through_a_plugin_type(mw: Services, tmp_path: Path) -> None:
    from mailwright.services.targets import TargetCreate

    mw.targets.create(
        TargetCreate.model_validate(
            {
                "display_name": "Recorder",
                "type": "recording",
                "directory": str(tmp_path),
                "no_account_keys": True,
            }
        )
    )
    document = {
        "name": "Record a greeting",
        "target": "Recorder",
        "steps": [
            {
                "id": "greet",
                "activity": "send_email",
                "with": {
                    "from": "robot@example.org",
                    "to": ["alice@example.org"],
                    "subject": "Hi {{ 'there' }}",
                },
            }
        ],
    }
    workflow = mw.workflows.create(yaml.safe_dump(document, sort_keys=False))
    run = mw.runs.start_workflow(workflow.id)
    status = await mw.executor(worker_id="t", lease=timedelta(seconds=5), with_files=False).execute(run.id)
    steps = mw.runs.get(run.id).steps
    assert status == "succeeded", [(s.step, s.status, s.error) for s in steps]
    assert steps[0].output is not None and steps[0].output["server_reply"] == {
        "code": 250,
        "text": "recorded",
    }
    (line,) = recorded(tmp_path)
    assert line["target"] == "Recorder" and line["recipients"] == ["alice@example.org"]
    assert "Subject: Hi there" in line["data"]
    assert f"Message-ID: {steps[0].output['message_id']}" in line["data"]


def test_no_face_or_layer_names_the_plugin_type() -> None:
    source = Path(__file__).resolve().parents[2] / "src" / "mailwright"
    for layer in ("cli", "web", "api", "services", "engine", "activities"):
        for path in (source / layer).rglob("*"):
            if path.is_file() and path.suffix in {".py", ".html", ".js"}:
                text = path.read_text(encoding="utf-8")
                for name in ('"recording"', "'recording'", "recording_target", "RecordingSettings"):
                    assert name not in text, f"{path} names {name}"
