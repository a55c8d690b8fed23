"""A command imports what it uses: `targets list` opens the database, not the web or the engine."""

from __future__ import annotations

import sqlite3

from tests.support.cli import CLI, assert_ok
from tests.support.imports import loaded_by, matching

# Nothing `targets list` needs: the web stack, the task queue, the capture server, the runs.
NOT_FOR_LISTING = (
    "fastapi",
    "starlette",
    "uvicorn",
    "taskiq",
    "aiosmtpd",
    "alembic",  # the schema is current: its revision is read with SQLAlchemy alone
    "rich.progress",
    "jinja2",  # workflows and their expressions: nothing a listing reads
    "mailwright.ledger",
    "mailwright.activities",
    "mailwright.transport.smtp",  # the protocol clients (the outbound policy and Login are light)
    "mailwright.transport.imap",
    "mailwright.transport.pop3",
    "mailwright.transport.pool",
    "aiosmtplib",
    "imaplib",
    "poplib",
    "mailwright.api",
    "mailwright.web",
    "mailwright.engine",
    "mailwright.sandbox",
    "mailwright.services.runs",
    "mailwright.services.batches",
    "mailwright.services.triggers",
    "mailwright.services.waiting",
)


def test_targets_list_reads_the_embedded_database_without_sqlalchemy(cli: CLI) -> None:
    assert_ok(
        cli("targets", "create", "--name", "Relay", "--server", "127.0.0.1", "--port", 2525,
            "--security", "none", "--no-account-keys")
    )  # fmt: skip
    output, modules = loaded_by("targets", "list", env=cli.env)
    assert "Relay" in output
    assert "sqlite3" in modules and "mailwright.storage.sqlite_file" in modules
    assert "sqlalchemy" not in modules and "mailwright.services.targets" not in modules
    assert matching(modules, NOT_FOR_LISTING) == []


def test_targets_list_opens_the_services_when_the_schema_must_be_migrated(cli: CLI) -> None:
    assert_ok(
        cli("targets", "create", "--name", "Relay", "--server", "127.0.0.1", "--port", 2525,
            "--security", "none", "--no-account-keys")
    )  # fmt: skip
    with sqlite3.connect(cli.home / "mailwright.db") as db:
        # The schema an older release left: without the key types' columns (migration 0009),
        # the triggers' change cursor (0010), the workers and pools (0011), batch ranges (0012), the
        # dashboard's tables (0013) and the workflows' source text (0014).
        for column in ("token_cache_encrypted", "secrets_encrypted", "settings"):
            db.execute(f"ALTER TABLE account_keys DROP COLUMN {column}")
        db.execute("ALTER TABLE trigger_states DROP COLUMN change_cursor")
        db.execute("DROP TABLE batch_ranges")
        db.execute("DROP TABLE workers")
        db.execute("DROP INDEX ix_run_steps_updated")
        db.execute("DROP TABLE delivery_hours")
        db.execute("DROP TABLE delivery_failures")
        db.execute("ALTER TABLE runs DROP COLUMN pool")
        db.execute("ALTER TABLE workflows DROP COLUMN source")
        db.execute("UPDATE alembic_version SET version_num = '0008'")
    output, modules = loaded_by("targets", "list", env=cli.env)
    assert "Relay" in output
    assert "sqlalchemy" in modules and "mailwright.services.targets" in modules
    assert "alembic" in modules  # migrated, then listed
