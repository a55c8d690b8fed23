"""`mailwright account-keys`: the credentials targets log in with, of any registered key type.

The options of `create` and `update` are made from the key types' fields (keys/): a
plain field is `--field VALUE`, a secret one `--field-stdin` or `--field-env VAR` (never
an argument), a file one (a certificate) `--field FILE`. A plugin's key type gets its
options without a change here.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mailwright.cli.context import services
from mailwright.cli.output import print_fields, print_json, print_table
from mailwright.cli.secrets_input import read_secret
from mailwright.errors import ValidationError
from mailwright.plugins import AccountKeyType, account_key_type, account_key_types

if TYPE_CHECKING:
    from mailwright.secrets import Secret
    from mailwright.services.account_keys import AccountKeyPublic

HELP = "Account keys: the credentials targets log in with (passwords, OAuth2 apps)."
app = typer.Typer(help=HELP, no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]


# --- options made from the fields of the registered key types --------------------------------


@dataclass
class KeyField:
    name: str
    help: str
    secret: bool
    file: bool
    types: list[str] = field(default_factory=list)

    @property
    def dashed(self) -> str:
        return "--" + self.name.replace("_", "-")


def key_fields() -> list[KeyField]:
    """Every registered key type's fields, one per name, in the order first seen."""
    merged: dict[str, KeyField] = {}
    for kind in account_key_types():
        for name, info in kind.fields_model.model_fields.items():
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            known = merged.setdefault(
                name,
                KeyField(name, info.description or name, bool(extra.get("secret")), bool(extra.get("file"))),
            )
            known.types.append(kind.name)
    return list(merged.values())


def _param(name: str, annotation: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


def _options(fields: list[KeyField], *, update: bool) -> list[inspect.Parameter]:
    params = []
    for item in fields:
        where = ", ".join(item.types)
        words = item.name.replace("_", " ")
        if item.file:
            params.append(
                _param(
                    item.name, Annotated[Path | None, typer.Option(item.dashed, help=f"{where}: {item.help}")]
                )
            )
        elif item.secret:
            params.append(
                _param(
                    f"{item.name}_stdin",
                    Annotated[
                        bool | None,
                        typer.Option(f"{item.dashed}-stdin", help=f"{where}: read the {words} from stdin"),
                    ],
                )
            )
            params.append(
                _param(
                    f"{item.name}_env",
                    Annotated[
                        str | None,
                        typer.Option(
                            f"{item.dashed}-env", metavar="VAR", help=f"{where}: read it from this variable"
                        ),
                    ],
                )
            )
        else:
            params.append(
                _param(
                    item.name, Annotated[str | None, typer.Option(item.dashed, help=f"{where}: {item.help}")]
                )
            )
    if update:
        for kind in account_key_types():
            if kind.prompt_secret:
                option = f"--{kind.prompt_secret.replace('_', '-')}-prompt"
                params.append(
                    _param(
                        f"{kind.prompt_secret}_prompt",
                        Annotated[
                            bool | None, typer.Option(option, help=f"ask for a new {kind.prompt_secret}")
                        ],
                    )
                )
    return params


def _values(
    kind: AccountKeyType, fields: list[KeyField], given: dict[str, Any], *, creating: bool
) -> dict[str, Any]:
    """The type's fields the options gave; secrets read from stdin, a variable, a file or a prompt."""
    own = set(kind.fields_model.model_fields)
    for item in fields:  # before any secret is read: a stray option is a mistake to say first
        options = (item.name, f"{item.name}_stdin", f"{item.name}_env")
        if item.name not in own and any(given.get(o) not in (None, False) for o in options):
            raise ValidationError(
                f"{item.dashed} is not a field of {kind.label} keys (it belongs to {', '.join(item.types)})",
                field=item.name,
                hint=f"see 'mailwright account-keys create --help', or choose --type {item.types[0]}",
            )
    values: dict[str, Any] = {}
    for item in fields:
        value = _one(item, kind, given, creating=creating) if item.name in own else None
        if value is not None:
            values[item.name] = value
    return values


def _one(item: KeyField, kind: AccountKeyType, given: dict[str, Any], *, creating: bool) -> Any:
    if item.file:
        path = given.get(item.name)
        return None if path is None else _read_file(path, item)
    if not item.secret:
        return given.get(item.name)
    prompt = kind.prompt_secret == item.name
    return read_secret(
        item.name,
        from_stdin=bool(given.get(f"{item.name}_stdin")),
        env_var=given.get(f"{item.name}_env"),
        prompt=prompt and bool(given.get(f"{item.name}_prompt")),
        required=prompt and creating,
    )


def _read_file(path: Path, item: KeyField) -> Secret:
    from mailwright.secrets import Secret

    try:
        return Secret(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValidationError(
            f"cannot read {item.dashed} {str(path)!r}: {exc.strerror or exc}",
            field=item.name,
            hint="give the path of a PEM file holding the private key and its certificate",
        ) from exc
    except UnicodeDecodeError as exc:
        raise ValidationError(
            f"{item.dashed} {str(path)!r} is not a text (PEM) file", field=item.name, hint="convert it to PEM"
        ) from exc


def _with_fields(command: Callable[..., None], *, update: bool) -> Callable[..., None]:
    """`command(fields=..., given=..., **fixed)` as a Typer command with the key types' options."""
    fields = key_fields()
    fixed = [
        p
        for p in inspect.signature(command, eval_str=True).parameters.values()
        if p.name not in {"fields", "given"}
    ]
    taken = {p.name for p in fixed}

    def run(**given: Any) -> None:
        command(
            fields=fields,
            given={k: v for k, v in given.items() if k not in taken},
            **{k: v for k, v in given.items() if k in taken},
        )

    params = [p for p in _options(fields, update=update) if p.name not in taken]
    run.__signature__ = inspect.Signature([*fixed, *params])  # type: ignore[attr-defined]
    run.__doc__ = command.__doc__
    run.__name__ = command.__name__
    return run


# --- commands ------------------------------------------------------------------------------


def _type_help() -> str:
    return "key type: " + ", ".join(f"{k.name} ({k.label})" for k in account_key_types())


def create(
    name: Annotated[str, typer.Option("--name", help="unique name of the key")],
    key_type: Annotated[str, typer.Option("--type", help=_type_help())] = "email_credentials",
    description: Annotated[str, typer.Option("--description")] = "",
    as_json: JsonOpt = False,
    *,
    fields: list[KeyField],
    given: dict[str, Any],
) -> None:
    """Store a key. Secrets come from --…-stdin, --…-env VAR, a file, or a prompt: never arguments.

    Email Credentials: --username U (--password-stdin | --password-env VAR | a prompt).
    Graph: --tenant-id T --client-id C (--client-secret-stdin | --client-secret-env VAR | --certificate FILE).
    OAuth2: --username U --provider google|microsoft|custom --client-id C [...], then `authorize NAME`.
    """
    kind = account_key_type(key_type)
    values = _values(kind, fields, given, creating=True)
    from mailwright.services.account_keys import AccountKeyCreate

    key = services().account_keys.create(
        AccountKeyCreate(name=name, type=kind.name, description=description, **values)
    )
    if as_json:
        print_json(key)
        return
    typer.echo(f"created {key.type_label} account key {key.name!r} ({key.id})")
    if key.authorized is False:
        typer.echo(f"next: authorize it once with 'mailwright account-keys authorize {key.name}'")


app.command("create")(_with_fields(create, update=False))


@app.command("list")
def list_keys(as_json: JsonOpt = False) -> None:
    """List the keys (secrets are never shown)."""
    keys = services().account_keys.list_all()
    if as_json:
        print_json(keys)
        return
    print_table(
        ["NAME", "USERNAME", "SENDER", "USED BY", "DESCRIPTION", "TYPE"],
        [[k.name, k.username, k.sender, ", ".join(k.used_by), k.description, k.type_label] for k in keys],
    )


def _terse(label: str) -> str:
    """The form's label as the CLI shows it: "Mailbox Password" is "Password" beside "Username"."""
    return label.removeprefix("Mailbox ").removesuffix(" (PEM path on the server)")


def _show(key: AccountKeyPublic) -> None:
    kind = account_key_type(key.type)
    lines: list[tuple[str, Any]] = [
        ("Name", key.name),
        ("Type", key.type_label),
        ("Description", key.description),
    ]
    if "username" in kind.fields_model.model_fields:
        lines.append(("Username", key.username))
    for name, info in kind.fields_model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        label = _terse(str(extra.get("label") or name.replace("_", " ").capitalize()))
        if name in kind.secret_fields():
            lines.append((label, key.secrets.get(name, "(not set)")))
        elif name in key.settings:
            lines.append((label, key.settings[name] if key.settings[name] is not None else ""))
    if key.authorized is not None:
        lines.append(
            ("Authorized", "yes" if key.authorized else f"no: mailwright account-keys authorize {key.name}")
        )
    if "sender" in kind.fields_model.model_fields:
        lines.append(("Sender", key.sender or "(the username)"))
    lines += [
        ("Used by", ", ".join(key.used_by) or "(no target)"),
        ("ID", key.id),
        ("Created", key.created_at.isoformat(timespec="seconds")),
        ("Updated", key.updated_at.isoformat(timespec="seconds")),
    ]
    print_fields(lines)


@app.command("show")
def show(ref: Annotated[str, typer.Argument(help="name or id")], as_json: JsonOpt = False) -> None:
    """Show one key."""
    key = services().account_keys.get(ref)
    if as_json:
        print_json(key)
    else:
        _show(key)


def update(
    ref: Annotated[str, typer.Argument(help="name or id")],
    name: Annotated[str | None, typer.Option("--name", help="new name")] = None,
    description: Annotated[str | None, typer.Option("--description")] = None,
    as_json: JsonOpt = False,
    *,
    fields: list[KeyField],
    given: dict[str, Any],
) -> None:
    """Change a key; its secrets stay unless new ones are given (an empty --sender clears it)."""
    kind = services().account_keys.kind_of(ref)
    values = _values(kind, fields, given, creating=False)
    from mailwright.services.account_keys import AccountKeyUpdate

    key = services().account_keys.update(ref, AccountKeyUpdate(name=name, description=description, **values))
    if as_json:
        print_json(key)
    else:
        typer.echo(f"updated account key {key.name!r}")


app.command("update")(_with_fields(update, update=True))


@app.command("authorize")
def authorize(
    ref: Annotated[str, typer.Argument(help="name or id of an OAuth2 (XOAUTH2) key")],
    device_code: Annotated[
        bool, typer.Option("--device-code", help="the device-code flow: enter a code on another device")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Obtain and store a refresh token: open the printed URL, sign in, consent (PKCE, loopback redirect)."""

    def show(text: str) -> None:
        typer.echo(text, err=as_json)

    key = asyncio.run(services().account_keys.authorize(ref, device=device_code, show=show))
    if as_json:
        print_json(key)
    else:
        typer.secho(f"authorized account key {key.name!r}: its refresh token is stored encrypted", fg="green")


@app.command("delete")
def delete(ref: Annotated[str, typer.Argument(help="name or id")]) -> None:
    """Delete a key; refused while a target uses it."""
    key = services().account_keys.get(ref)
    services().account_keys.delete(key.id)
    typer.echo(f"deleted account key {key.name!r}")
