"""The core on a real PostgreSQL server: migrations, uniqueness, encryption, foreign keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from mailwright.config import Settings
from mailwright.engine.triggers import Mail
from mailwright.errors import ConflictError
from mailwright.secrets import Secret
from mailwright.services.account_keys import AccountKeyCreate
from mailwright.services.app import Services
from mailwright.services.sending import SendEmailRequest
from mailwright.services.targets import TargetCreate
from mailwright.storage.db import SCHEMA_REVISION
from tests.support.smtpserver import SMTPServerFactory

pytestmark = pytest.mark.postgres


def open_relay(services: Services, port: int) -> None:
    """A target "Relay" to the in-process SMTP server on `port`, with no login."""
    services.targets.create(
        TargetCreate(
            display_name="Relay", server="127.0.0.1", port=port, security="none", no_account_keys=True
        )
    )


async def test_core_on_postgres(pg_url: str, tmp_path: Path, smtp_server_factory: SMTPServerFactory) -> None:
    services = Services(Settings(home=tmp_path, database_url=pg_url))
    try:
        Services(Settings(home=tmp_path, database_url=pg_url)).close()  # migrating twice is a no-op
        services.account_keys.create(
            AccountKeyCreate(name="Alice", username="alice@example.org", password=Secret("pg-secret-123"))
        )
        with pytest.raises(ConflictError):
            services.account_keys.create(AccountKeyCreate(name="alice", username="x", password=Secret("y")))
        server = smtp_server_factory()
        open_relay(services, server.port)
        services.targets.create(
            TargetCreate(display_name="Keyed", server="smtp.example.org", port=587, account_key="ALICE")
        )
        with pytest.raises(ConflictError, match="'Keyed'"):
            services.account_keys.delete("alice")
        result = await services.sending.send(
            SendEmailRequest.model_validate(
                {"target": "relay", "from": "ops@example.org", "to": "bob@example.net", "subject": "pg"}
            )
        )
        assert result.status == "sent"
        assert services.targets.get("keyed").last_test is None
        with services.db.engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT password_encrypted FROM account_keys")).scalar_one()
            version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()
        assert "pg-secret-123" not in stored and stored.startswith("mw1:")
        assert version == SCHEMA_REVISION
        assert services.targets.resolve("Keyed").login is not None
        assert services.targets.get("Keyed").created_at.tzinfo is not None
    finally:
        services.close()


def test_trigger_mail_is_taken_once_on_postgres(pg_url: str, tmp_path: Path) -> None:
    """Two watchers (two Services on one database) offer the same mail batch: one run per mail."""
    first = Services(Settings(home=tmp_path, database_url=pg_url))
    second = Services(Settings(home=tmp_path, database_url=pg_url))
    try:
        first.targets.create(
            TargetCreate.model_validate(
                {
                    "display_name": "Inbox",
                    "type": "imap",
                    "server": "127.0.0.1",
                    "port": 993,
                    "no_account_keys": True,
                }
            )
        )
        first.workflows.create(
            "name: Triggered\ntriggers: [{type: email, target: Inbox}]\n"
            "steps: [{id: s, activity: set_variables, with: {x: '{{ trigger.message.subject }}'}}]\n"
        )
        (plan,) = first.triggers.plans()
        mails = [Mail(key=str(uid), message={"uid": uid, "subject": f"m{uid}"}) for uid in range(1, 6)]
        runs_a = first.triggers.take_many(plan, folder="INBOX", uidvalidity=7, mails=mails[:3], last_uid=3)
        # The second watcher saw the folder a moment later: three of its five were taken already.
        runs_b = second.triggers.take_many(plan, folder="INBOX", uidvalidity=7, mails=mails, last_uid=5)
        assert len(runs_a) == 3 and len(runs_b) == 2
        assert first.triggers.take_many(plan, folder="INBOX", uidvalidity=7, mails=mails) == []
        assert (
            first.triggers.position(plan.state_id)[1] == 5
            or first.triggers.position(plan.state_id)[1] is None
        )
        (state,) = first.triggers.list_all("Triggered")
        assert state.runs_started == 5
    finally:
        first.close()
        second.close()


async def test_a_batch_on_postgres(
    pg_url: str, tmp_path: Path, smtp_server_factory: SMTPServerFactory
) -> None:
    """The batch's bulk statements (raw cursor, processed values) on PostgreSQL's driver."""
    import json
    from datetime import timedelta

    from mailwright.storage.tables import RunStepRow

    services = Services(Settings(home=tmp_path, database_url=pg_url))
    try:
        server = smtp_server_factory()
        open_relay(services, server.port)
        sent = [
            {"from": "ops@example.org", "to": [f"r{i}@example.net"], "subject": f"Grüße {i}", "body": "hi"}
            for i in range(25)
        ]
        lines = ((f"line {n}", json.dumps(m)) for n, m in enumerate(sent, start=1))
        created = services.batches.create(lines, target="Relay")
        worker = services.executor(worker_id="pg", lease=timedelta(seconds=5), with_files=False)
        assert await worker.execute(created.run_id) == "succeeded"
        assert len(server.wait_for(25)) == 25
        with services.db.session() as session:
            rows = session.scalars(sa.select(RunStepRow).order_by(RunStepRow.item_index)).all()
        shown = services.runs.get(created.run_id).steps
        assert [s.inputs for s in shown] == sent  # from step_inputs: the rows above hold none
        assert all(r.inputs is None for r in rows)
        assert all(r.status == "succeeded" and r.send_state == "sent" and r.attempts == 1 for r in rows)
        assert all(r.output and r.output["message_id"] == r.message_id for r in rows)
        assert all(r.finished_at is not None and r.finished_at.tzinfo is not None for r in rows)
        # The run page's search (a JSON field as text, ILIKE) and the Runs list's filters.
        from mailwright.services.run_pages import RunFilter, StepFilter

        found = services.runs.steps_page(created.run_id, StepFilter(search="R7@Example.net"))
        assert [s.step for s in found.items] == ["message[7]"]
        by_id = StepFilter(state="succeeded", search=str(rows[9].message_id).strip("<>").split("@")[0])
        assert [s.step for s in services.runs.steps_page(created.run_id, by_id).items] == ["message[9]"]
        assert services.runs.page_runs(RunFilter(target="relay", status="succeeded")).total == 1
        assert services.runs.progress(created.run_id).counts == {"succeeded": 25}
    finally:
        services.close()
