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
        (("send", "--help"), "--importance"),
        (("send-batch", "--help"), "--concurrency"),
        (("runs", "show", "--help"), "--state"),
    ],
)
def test_help_and_version_load_no_heavy_stack(args: tuple[str, ...], shows: str) -> None:
    output, modules = loaded_by(*args)
    assert shows in output
    assert matching(modules, HEAVY) == []


# `targets` makes its options from the registered target types: their declarations (settings
# models, presets) load for its help, and still no protocol, database or web stack.
TARGET_DECLARATIONS = ("mailwright.targets", "mailwright.plugins")


@pytest.mark.parametrize("args", [("targets", "--help"), ("targets", "create", "--help")])
def test_targets_help_loads_the_target_types_and_no_heavy_stack(args: tuple[str, ...]) -> None:
    output, modules = loaded_by(*args)
    assert "Usage: mailwright targets" in output
    assert "mailwright.targets.smtp" in modules
    heavy = [m for m in HEAVY if m not in TARGET_DECLARATIONS]
    assert matching(modules, heavy) == []
    assert matching(modules, ["mailwright.transport", "mailwright.activities"]) == []


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


def test_the_root_lists_targets_with_the_groups_own_help() -> None:
    # The root names `targets` without importing it: its help line must stay the group's own.
    from mailwright.cli import app as root
    from mailwright.cli import targets

    assert targets.app.info.help == root.TARGETS_HELP


def test_the_root_lists_account_keys_with_the_groups_own_help() -> None:
    from mailwright.cli import account_keys
    from mailwright.cli import app as root

    assert account_keys.app.info.help == root.KEYS_HELP
