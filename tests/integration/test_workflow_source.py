"""A saved workflow keeps its document as written: comments, key order and layout, CLI and API alike."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import yaml
from sqlalchemy import update

from mailwright.services.app import Services
from mailwright.storage.tables import WorkflowRow
from tests.integration.conftest import Targets
from tests.support.cli import CLI, assert_ok
from tests.support.smtpserver import SMTPServerFactory

NAME = "Commented alert"


def commented(target: str, *, owner: str = "ops") -> str:
    """A document in its author's order (steps before target), with comments and flow style."""
    return f"""\
# Disk alerts. Owned by the {owner} team; ask before changing the recipients.
name: {NAME}
steps:   # run in this order
  - id: alert          # the first mail
    activity: send_email
    with: {{from: robot@example.org, to: [ops@example.org], subject: Disk, body: full}}
  - activity: send_email   # activity before id, as written
    id: followup
    if: "{{{{ steps.alert.status == 'failed' }}}}"   # only when the alert failed
    with:
      from: robot@example.org
      to: [oncall@example.org]
      subject: "Re: Disk"
      body: escalated
target: {target}   # the relay
description: keys in the author's order
"""


def relay(targets: Targets, smtp_server_factory: SMTPServerFactory) -> str:
    return targets.target(smtp_server_factory(), security="none", display_name="Relay").display_name


def test_cli_export_gives_back_the_comments_after_create_and_after_an_update(
    cli: CLI, targets: Targets, smtp_server_factory: SMTPServerFactory, tmp_path: Path
) -> None:
    target = relay(targets, smtp_server_factory)
    path = tmp_path / "alert.yaml"
    path.write_text(commented(target), encoding="utf-8")
    assert_ok(cli("workflows", "create", "--file", path))

    assert assert_ok(cli("workflows", "export", NAME)).stdout == commented(target)
    exported = tmp_path / "exported.yaml"
    assert_ok(cli("workflows", "export", NAME, "-o", exported))
    assert exported.read_text(encoding="utf-8") == commented(target)
    assert assert_ok(cli("workflows", "show", NAME)).stdout == commented(target)

    # Only a comment changes: the new text is kept (and the audit log says the source changed).
    path.write_text(commented(target, owner="platform"), encoding="utf-8")
    assert_ok(cli("workflows", "create", "--file", path, "--replace"))
    assert assert_ok(cli("workflows", "export", NAME)).stdout == commented(target, owner="platform")
    audit = assert_ok(cli("audit", "list", "--json")).json()
    assert audit[0]["action"] == "update" and audit[0]["fields"] == ["source"]

    # Imported from the export, the comments survive again.
    assert_ok(cli("workflows", "import", exported, "--replace"))
    assert assert_ok(cli("workflows", "export", NAME)).stdout == commented(target)

    # Asked for JSON: rewritten with the keys in the order they were written.
    as_json = json.loads(assert_ok(cli("workflows", "export", NAME, "--format", "json")).stdout)
    assert list(as_json) == ["name", "steps", "target", "description"]
    assert list(as_json["steps"][1]) == ["activity", "id", "if", "with"]


def test_api_export_gives_back_the_text_as_written(
    api: httpx.Client, mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    target = relay(targets, smtp_server_factory)
    created = api.post("/api/v1/workflows", json={"document": commented(target)})
    assert created.status_code == 201, created.text
    exported = api.get(f"/api/v1/workflows/{NAME}/export").json()
    assert exported["format"] == "yaml" and exported["document"] == commented(target)
    assert exported["targets"] == [target]

    replaced = api.post(
        "/api/v1/workflows", json={"document": commented(target, owner="platform"), "replace": True}
    )
    assert replaced.status_code == 201, replaced.text
    again = api.get(f"/api/v1/workflows/{NAME}/export").json()
    assert again["document"] == commented(target, owner="platform")
    assert "# Disk alerts. Owned by the platform team" in again["document"]

    rewritten = api.get(f"/api/v1/workflows/{NAME}/export", params={"format": "json"}).json()
    assert rewritten["format"] == "json"
    assert list(json.loads(rewritten["document"])) == ["name", "steps", "target", "description"]
    same = api.get(f"/api/v1/workflows/{NAME}/export", params={"format": "yaml"}).json()
    assert same["document"] == again["document"]  # already YAML: as written


def test_api_json_object_is_kept_in_its_key_order_and_converted_on_request(
    api: httpx.Client, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    target = relay(targets, smtp_server_factory)
    document = yaml.safe_load(commented(target))
    assert api.post("/api/v1/workflows", json={"document": document}).status_code == 201
    exported = api.get(f"/api/v1/workflows/{NAME}/export").json()
    assert exported["format"] == "json"
    assert json.loads(exported["document"]) == document
    assert list(json.loads(exported["document"])) == ["name", "steps", "target", "description"]
    as_yaml = api.get(f"/api/v1/workflows/{NAME}/export", params={"format": "yaml"}).json()
    assert as_yaml["format"] == "yaml" and yaml.safe_load(as_yaml["document"]) == document
    assert as_yaml["document"].startswith(f"name: {NAME}\nsteps:\n")


def test_a_workflow_saved_before_sources_were_kept_exports_its_parsed_document(
    mw: Services, targets: Targets, smtp_server_factory: SMTPServerFactory
) -> None:
    target = relay(targets, smtp_server_factory)
    mw.workflows.create(commented(target))
    with mw.db.session() as session:
        session.execute(update(WorkflowRow).values(source=None))
    exported = mw.workflows.export(NAME)
    assert exported.format == "yaml" and "#" not in exported.document
    assert yaml.safe_load(exported.document) == mw.workflows.get(NAME).document
