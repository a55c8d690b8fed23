"""A command imports what it uses: `targets list` opens the database, not the web or the engine."""

from __future__ import annotations

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


def test_targets_list_loads_the_database_and_not_the_web_or_the_engine(cli: CLI) -> None:
    assert_ok(
        cli("targets", "create", "--name", "Relay", "--server", "127.0.0.1", "--port", 2525,
            "--security", "none", "--no-account-keys")
    )  # fmt: skip
    output, modules = loaded_by("targets", "list", env=cli.env)
    assert "Relay" in output
    assert "sqlalchemy" in modules and "mailwright.services.targets" in modules
    assert matching(modules, NOT_FOR_LISTING) == []
