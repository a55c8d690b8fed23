"""`mailwright tokens`: API bearer tokens (stored hashed, shown once)."""

from __future__ import annotations

from typing import Annotated

import typer

from mailwright.cli.context import services
from mailwright.cli.output import print_json, print_table

app = typer.Typer(help="API tokens for the REST API.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="a name for the token")], as_json: JsonOpt = False
) -> None:
    """Create a token and print it once."""
    new = services().tokens.create(name)
    if as_json:
        print_json(new)
        return
    typer.echo(new.token)
    typer.echo(f"token {new.info.name!r} created; it is shown only now: store it safely", err=True)


@app.command("list")
def list_tokens(as_json: JsonOpt = False) -> None:
    """List tokens (only their first characters)."""
    tokens = services().tokens.list_all()
    if as_json:
        print_json(tokens)
        return
    print_table(
        ["NAME", "PREFIX", "CREATED", "LAST USED", "REVOKED"],
        [
            [
                t.name,
                t.prefix + "…",
                t.created_at.isoformat(timespec="seconds"),
                t.last_used_at.isoformat(timespec="seconds") if t.last_used_at else "never",
                t.revoked_at.isoformat(timespec="seconds") if t.revoked_at else "",
            ]
            for t in tokens
        ],
    )


@app.command("revoke")
def revoke(ref: Annotated[str, typer.Argument(help="name or id")]) -> None:
    """Revoke a token; requests with it are refused from now on."""
    token = services().tokens.revoke(ref)
    typer.echo(f"revoked token {token.name!r}")
