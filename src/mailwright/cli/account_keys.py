"""`mailwright account-keys`: Email Credentials account keys."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from mailwright.cli.context import services
from mailwright.cli.output import print_fields, print_json, print_table
from mailwright.cli.secrets_input import read_password
from mailwright.errors import ValidationError

if TYPE_CHECKING:
    from mailwright.services.account_keys import AccountKeyPublic

app = typer.Typer(help="Email Credentials account keys: mailbox username and password.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]
PasswordStdin = Annotated[
    bool, typer.Option("--password-stdin", help="read the password from standard input")
]
PasswordEnv = Annotated[
    str | None,
    typer.Option("--password-env", metavar="VAR", help="read the password from this environment variable"),
]


def _show(key: AccountKeyPublic) -> None:
    print_fields(
        [
            ("Name", key.name),
            ("Type", "Email Credentials"),
            ("Description", key.description),
            ("Username", key.username),
            ("Password", key.password),
            ("Sender", key.sender or "(the username)"),
            ("Used by", ", ".join(key.used_by) or "(no target)"),
            ("ID", key.id),
            ("Created", key.created_at.isoformat(timespec="seconds")),
            ("Updated", key.updated_at.isoformat(timespec="seconds")),
        ]
    )


@app.command("create")
def create(
    name: Annotated[str, typer.Option("--name", help="unique name of the key")],
    username: Annotated[str, typer.Option("--username", help="mailbox username")],
    password_stdin: PasswordStdin = False,
    password_env: PasswordEnv = None,
    sender: Annotated[str | None, typer.Option("--sender", help="default From address")] = None,
    description: Annotated[str, typer.Option("--description")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Store a key. The password comes from --password-stdin, --password-env or a prompt."""
    password = read_password(from_stdin=password_stdin, env_var=password_env, prompt=True, required=True)
    if password is None:
        raise ValidationError("no password given", field="password")
    from mailwright.services.account_keys import AccountKeyCreate

    key = services().account_keys.create(
        AccountKeyCreate(
            name=name, username=username, password=password, sender=sender, description=description
        )
    )
    if as_json:
        print_json(key)
    else:
        typer.echo(f"created account key {key.name!r} ({key.id})")


@app.command("list")
def list_keys(as_json: JsonOpt = False) -> None:
    """List the keys (passwords are never shown)."""
    keys = services().account_keys.list_all()
    if as_json:
        print_json(keys)
        return
    print_table(
        ["NAME", "USERNAME", "SENDER", "USED BY", "DESCRIPTION"],
        [[k.name, k.username, k.sender, ", ".join(k.used_by), k.description] for k in keys],
    )


@app.command("show")
def show(ref: Annotated[str, typer.Argument(help="name or id")], as_json: JsonOpt = False) -> None:
    """Show one key."""
    key = services().account_keys.get(ref)
    if as_json:
        print_json(key)
    else:
        _show(key)


@app.command("update")
def update(
    ref: Annotated[str, typer.Argument(help="name or id")],
    name: Annotated[str | None, typer.Option("--name", help="new name")] = None,
    username: Annotated[str | None, typer.Option("--username")] = None,
    password_stdin: PasswordStdin = False,
    password_env: PasswordEnv = None,
    password_prompt: Annotated[
        bool, typer.Option("--password-prompt", help="ask for a new password")
    ] = False,
    sender: Annotated[str | None, typer.Option("--sender", help="empty string clears it")] = None,
    description: Annotated[str | None, typer.Option("--description")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a key; the password stays unless a new one is given."""
    password = read_password(
        from_stdin=password_stdin, env_var=password_env, prompt=password_prompt, required=False
    )
    from mailwright.services.account_keys import AccountKeyUpdate

    key = services().account_keys.update(
        ref,
        AccountKeyUpdate(
            name=name, username=username, password=password, sender=sender, description=description
        ),
    )
    if as_json:
        print_json(key)
    else:
        typer.echo(f"updated account key {key.name!r}")


@app.command("delete")
def delete(ref: Annotated[str, typer.Argument(help="name or id")]) -> None:
    """Delete a key; refused while a target uses it."""
    key = services().account_keys.get(ref)
    services().account_keys.delete(key.id)
    typer.echo(f"deleted account key {key.name!r}")
