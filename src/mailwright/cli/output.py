"""Printing results and errors; the one place where errors become exit codes."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import typer

from mailwright import errors

EXIT_FAILED = 1  # a send or test that did not succeed
EXIT_BAD_INPUT = 2  # the user's input was wrong (as click's own usage errors)

_BAD_INPUT = (
    errors.ValidationError,
    errors.NotFoundError,
    errors.ConflictError,
    errors.ConfigError,
    errors.AuthorizationError,
)


def exit_code_for(error: errors.MailwrightError) -> int:
    return EXIT_BAD_INPUT if isinstance(error, _BAD_INPUT) else EXIT_FAILED


# Service field names that the CLI spells differently.
_OPTION_FOR_FIELD = {"display_name": "--name", "command_timeout": "--timeout", "from_": "--from"}


def _cli_words(error: errors.MailwrightError) -> str:
    """The message with a field name replaced by the option a CLI user typed."""
    message = error.message
    field = error.field
    if field and message.startswith(f"{field}:"):
        option = _OPTION_FOR_FIELD.get(field, "--" + field.replace("_", "-"))
        message = option + message[len(field) :]
    return message


def redact(text: str) -> str:
    """`mailwright.secrets.redact`, imported when an error is printed (it loads the cipher)."""
    from mailwright.secrets import redact as redact_secrets

    return redact_secrets(text)


def print_error(error: errors.MailwrightError) -> None:
    typer.echo(f"error: {redact(_cli_words(error))}", err=True)
    if error.hint:
        typer.echo(f"hint: {redact(error.hint)}", err=True)


def to_jsonable(value: Any) -> Any:
    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True)
    if isinstance(value, list):
        return [to_jsonable(v) for v in value]
    return value


def print_json(value: Any) -> None:
    typer.echo(json.dumps(to_jsonable(value), indent=2, ensure_ascii=False))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [
        [str(h) for h in headers],
        *[["" if c is None else str(c) for c in row] for row in rows],
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        typer.echo("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if index == 0:
            typer.echo("  ".join("-" * w for w in widths))
    if not rows:
        typer.echo("(none)")


def print_fields(pairs: Sequence[tuple[str, object]]) -> None:
    width = max(len(k) for k, _ in pairs)
    for key, value in pairs:
        shown = "" if value is None else value
        typer.echo(f"{key.ljust(width)}  {shown}")


def fail(message: str, *, hint: str | None = None) -> None:
    """Stop with a bad-input error (exit 2)."""
    raise errors.ValidationError(message, hint=hint)


def stdin_text() -> str:
    return sys.stdin.read()
