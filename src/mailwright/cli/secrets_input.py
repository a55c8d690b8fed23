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
    return read_secret("password", from_stdin=from_stdin, env_var=env_var, prompt=prompt, required=required)


def read_secret(
    field: str, *, from_stdin: bool, env_var: str | None, prompt: bool, required: bool
) -> Secret | None:
    """A secret from --FIELD-stdin, --FIELD-env VAR or a prompt (a terminal only); None if not given."""
    from mailwright.secrets import Secret

    option = "--" + field.replace("_", "-")
    words = field.replace("_", " ")
    if from_stdin and env_var:
        raise ValidationError(f"give either {option}-stdin or {option}-env, not both", field=field)
    if from_stdin:
        text = sys.stdin.read()
        # One trailing newline is the shell's, not the secret's.
        value = text[:-1] if text.endswith("\n") else text
        value = value[:-1] if value.endswith("\r") else value
        if not value:
            raise ValidationError(f"no {words} on standard input", field=field)
        return Secret(value)
    if env_var:
        if not _ENV_NAME.match(env_var):
            # Never echo it: people pass the secret itself here by mistake.
            example = f"SMTP_{field.upper()}" if field == "password" else field.upper()
            raise ValidationError(
                f"{option}-env takes the NAME of an environment variable (like {example}), "
                f"not the {words} itself",
                field=field,
                hint=f"export {example}=... then give {option}-env {example}",
            )
        value = os.environ.get(env_var)
        if not value:
            raise ValidationError(f"the environment variable {env_var} is not set or empty", field=field)
        return Secret(value)
    if prompt or required:
        if not sys.stdin.isatty():
            raise ValidationError(
                f"no {words} given",
                field=field,
                hint=f"use {option}-stdin or {option}-env VAR (secrets are never taken as arguments)",
            )
        value = typer.prompt(words.capitalize(), hide_input=True, confirmation_prompt=True)
        return Secret(value)
    return None
