"""`mailwright --help` and `--version` start without the web, database or protocol stacks.

Each check runs in a fresh interpreter (this one has imported everything already):
it builds the whole Typer app as `mailwright` does, renders the help, and lists the
modules that got imported.
"""

from __future__ import annotations

import pytest

from mailwright.cli import audit as cli_audit
from mailwright.services import audit
from tests.support.imports import loaded_by, matching

# What a command that shows help or the version has no use for.
HEAVY = (
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlalchemy",
    "alembic",
    "aiosmtplib",
    "aiosmtpd",
    "jinja2",
    "taskiq",
    "cryptography",
    "mailwright.transport",
    "mailwright.services",
    "mailwright.storage",
    "mailwright.engine",
    "mailwright.activities",
    "mailwright.targets",
    "mailwright.api",
    "mailwright.web",
)


@pytest.mark.parametrize(
    ("args", "shows"),
    [
        (("--help",), "Usage: mailwright"),
        (("--version",), "mailwright "),
        (("targets", "--help"), "Usage: mailwright targets"),
        (("send", "--help"), "--importance"),
        (("send-batch", "--help"), "--concurrency"),
        (("runs", "show", "--help"), "--state"),
    ],
)
def test_help_and_version_load_no_heavy_stack(args: tuple[str, ...], shows: str) -> None:
    output, modules = loaded_by(*args)
    assert shows in output
    assert matching(modules, HEAVY) == []


@pytest.mark.parametrize(
    ("args", "shows"), [(("--help",), "Usage: mailwright"), (("--version",), "mailwright ")]
)
def test_top_level_help_and_version_load_not_even_pydantic(args: tuple[str, ...], shows: str) -> None:
    # A subcommand's --help does: Typer itself coerces the values of the command it runs with Pydantic.
    output, modules = loaded_by(*args)
    assert shows in output
    assert matching(modules, ["pydantic", "pydantic_core"]) == []


def test_the_checker_sees_a_heavy_import() -> None:
    # The checks above must be able to fail: a command that opens the services loads them.
    assert matching(["sqlalchemy.orm", "mailwright.services.app", "typer", "fastapix"], HEAVY) == [
        "sqlalchemy.orm",
        "mailwright.services.app",
    ]


def test_the_audit_limit_spelled_in_the_cli_is_the_services_limit() -> None:
    assert cli_audit.MAX_LIMIT == audit.MAX_LIMIT
