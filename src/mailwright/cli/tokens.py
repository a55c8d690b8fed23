"""`mailwright tokens`: API bearer tokens (stored hashed, shown once), each with a role."""

from typing import Annotated

import typer

from mailwright.cli.context import services
from mailwright.cli.output import print_json, print_table
from mailwright.domain.roles import Role

app = typer.Typer(
    help="API tokens for the REST API (and web sign-in), each with a role.", no_args_is_help=True
)

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]

# Without --role: enough to send mail and start, cancel and retry runs (what most tokens are
# for: scripts and other services), not to create, change or delete targets, keys or workflows.
# Admin tokens are made on purpose, with --role admin.
DEFAULT_ROLE = Role.OPERATOR


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="a name for the token")],
    role: Annotated[
        Role,
        typer.Option(
            "--role",
            case_sensitive=False,
            help="admin: everything; operator: send, start/cancel/retry runs, test targets, read; "
            "viewer: read only",
        ),
    ] = DEFAULT_ROLE,
    as_json: JsonOpt = False,
) -> None:
    """Create a token and print it once (the role defaults to operator: see --role)."""
    new = services().tokens.create(name, role=role)
    if as_json:
        print_json(new)
        return
    typer.echo(new.token)
    typer.echo(
        f"token {new.info.name!r} created with the {new.info.role.value} role; "
        "it is shown only now: store it safely",
        err=True,
    )


@app.command("list")
def list_tokens(as_json: JsonOpt = False) -> None:
    """List tokens (only their first characters) with their roles."""
    tokens = services().tokens.list_all()
    if as_json:
        print_json(tokens)
        return
    print_table(
        ["NAME", "ROLE", "PREFIX", "CREATED", "LAST USED", "REVOKED"],
        [
            [
                t.name,
                t.role.value,
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
