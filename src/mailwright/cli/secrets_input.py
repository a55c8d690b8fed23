"""Reading a password from stdin, an environment variable or a prompt: never from argv."""

from __future__ import annotations

import os
import re
import sys
from typing import TYPE_CHECKING

import typer

from mailwright.errors import ValidationError

if TYPE_CHECKING:
    from mailwright.secrets import Secret

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def read_password(*, from_stdin: bool, env_var: str | None, prompt: bool, required: bool) -> Secret | None:
    from mailwright.secrets import Secret

    if from_stdin and env_var:
        raise ValidationError("give either --password-stdin or --password-env, not both", field="password")
    if from_stdin:
        text = sys.stdin.read()
        # One trailing newline is the shell's, not the password's.
        value = text[:-1] if text.endswith("\n") else text
        value = value[:-1] if value.endswith("\r") else value
        if not value:
            raise ValidationError("no password on standard input", field="password")
        return Secret(value)
    if env_var:
        if not _ENV_NAME.match(env_var):
            # Never echo it: people pass the password itself here by mistake.
            raise ValidationError(
                "--password-env takes the NAME of an environment variable (like SMTP_PASSWORD), "
                "not the password itself",
                field="password",
                hint="export SMTP_PASSWORD=... then give --password-env SMTP_PASSWORD",
            )
        value = os.environ.get(env_var)
        if not value:
            raise ValidationError(f"the environment variable {env_var} is not set or empty", field="password")
        return Secret(value)
    if prompt or required:
        if not sys.stdin.isatty():
            raise ValidationError(
                "no password given",
                field="password",
                hint="use --password-stdin or --password-env VAR (passwords are never taken as arguments)",
            )
        value = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
        return Secret(value)
    return None
