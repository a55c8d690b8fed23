"""`mailwright targets`: the mail servers (and other targets) Mailwright talks to.

The options of `create` and `update` that set a target's settings are made from the
registered target types' settings models (targets/fields.py): one option per setting
name, whose help says which types have it. A plugin's type gets its options without a
change here. Building them loads no protocol library, database or web stack: the
services are imported inside the commands.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mailwright.cli.context import services
from mailwright.cli.output import EXIT_FAILED, print_fields, print_json, print_table
from mailwright.domain.connection_test import ConnectionTestReport
from mailwright.plugins import target_types
from mailwright.targets.fields import SettingField, setting_fields

if TYPE_CHECKING:
    from mailwright.services.target_public import TargetPublic

app = typer.Typer(help="Targets: the mail servers Mailwright talks to.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]
AccountKey = Annotated[str | None, typer.Option("--account-key", help="default account key (name or id)")]
NoAccountKeys = Annotated[bool, typer.Option("--no-account-keys", help="no login: an open relay")]
Description = Annotated[str | None, typer.Option("--description")]
# One option that sets every setting that names it as its `shortcut` (--timeout: connect and command).
SHORTCUTS = {"timeout": "seconds for each command (and connecting)"}


# --- options made from the settings of the registered types ---------------------------------


def _dashed(name: str) -> str:
    return "--" + name.replace("_", "-")


def _value_type(item: SettingField) -> Any:
    if item.kind == "choice":
        return enum.StrEnum(item.name.title().replace("_", ""), {c: c for c in item.choices})
    return {"integer": int, "number": float, "flag": bool}.get(item.kind, str)


def _option(item: SettingField, *, update: bool) -> tuple[str, Any]:
    """(parameter name, annotation) of the option that sets `item`."""
    help_text = _cli_help(item)
    if item.kind != "flag":
        return item.name, Annotated[
            _value_type(item) | None, typer.Option(_dashed(item.name), help=help_text)
        ]
    on = item.form_flag or item.name  # an inverted flag (--starttls-optional) names the opposite
    off = item.name if item.form_flag else f"no_{item.name}"
    off = str(item.off_flag or off)
    declaration = f"{_dashed(on)}/{_dashed(off)}" if update else _dashed(on)
    return on, Annotated[bool | None, typer.Option(declaration, help=help_text)]


def _cli_help(item: SettingField) -> str:
    text = item.flag_help if item.form_flag and item.flag_help else (item.cli_help or item.help or item.name)
    types = item.types[0] if len(item.types) == 1 else ", ".join(item.types)
    return f"{types}: {text}"


def _setting_options(*, update: bool) -> tuple[list[inspect.Parameter], list[SettingField]]:
    fields = setting_fields(target_types())
    params = []
    shortcuts = {item.shortcut for item in fields if item.shortcut}
    for name in sorted(s for s in shortcuts if s in SHORTCUTS):
        annotation = Annotated[float | None, typer.Option(_dashed(name), help=SHORTCUTS[name])]
        params.append(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)
        )
    for item in fields:
        name, annotation = _option(item, update=update)
        params.append(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)
        )
    return params, fields


def settings_values(fields: list[SettingField], given: dict[str, Any]) -> dict[str, Any]:
    """The settings the options gave (None: not given), as the target types take them."""
    values: dict[str, Any] = {}
    for item in fields:
        if item.shortcut and given.get(item.shortcut) is not None:
            values[item.name] = given[item.shortcut]
    for item in fields:
        value = given.get(item.form_flag or item.name)
        if value is None:
            continue
        if item.form_flag:
            value = not value  # --starttls-optional sets starttls_required to False
        values[item.name] = value.value if isinstance(value, enum.Enum) else value
    return values


def _with_settings(command: Callable[..., None], *, update: bool) -> Callable[..., None]:
    """`command(settings=..., **fixed)` as a Typer command whose signature has the settings' options."""
    params, fields = _setting_options(update=update)
    fixed = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "settings"]
    taken = {p.name for p in fixed}

    def run(**given: Any) -> None:
        settings = settings_values(fields, {k: v for k, v in given.items() if k not in taken})
        command(settings=settings, **{k: v for k, v in given.items() if k in taken})

    run.__signature__ = inspect.Signature([*fixed, *(p for p in params if p.name not in taken)])  # type: ignore[attr-defined]
    run.__doc__ = command.__doc__
    run.__name__ = command.__name__
    return run


# --- showing a target -------------------------------------------------------------------


def _show(t: TargetPublic) -> None:
    last = t.last_test
    view = t.view()
    print_fields(
        [
            ("Display Name", t.display_name),
            ("Type", t.type_label),
            ("Description", t.description),
            *view.connection,
            ("No Account Keys", t.no_account_keys),
            ("Account Key", t.account_key or ""),
            *view.details,
            (
                "Last test",
                f"{'OK' if last.ok else 'FAILED'} at {last.at:%Y-%m-%d %H:%M} — {last.summary}"
                if last
                else "never",
            ),
            ("ID", t.id),
        ]
    )


def _warn_unsafe(t: TargetPublic) -> None:
    for warning in t.view().warnings:
        typer.secho(f"warning: {warning}", fg="yellow", err=True)


def _where(t: TargetPublic) -> str:
    view = t.view()
    return " ".join(part for part in (view.address, view.security) if part)


def create(
    name: Annotated[str, typer.Option("--name", help="unique display name")],
    target_type: Annotated[
        str, typer.Option("--type", help="target type: " + ", ".join(t.name for t in target_types()))
    ] = "smtp",
    preset: Annotated[
        str | None, typer.Option("--preset", help="gmail, outlook, yahoo, icloud, fastmail, zoho")
    ] = None,
    account_key: AccountKey = None,
    no_account_keys: NoAccountKeys = False,
    description: Description = None,
    as_json: JsonOpt = False,
    *,
    settings: dict[str, Any],
) -> None:
    """Create a target. Give --account-key NAME, or --no-account-keys for an open relay."""
    from mailwright.services.targets import TargetCreate

    target = services().targets.create(
        TargetCreate(
            display_name=name,
            type=target_type,
            preset=preset,
            description=description,
            account_key=account_key,
            no_account_keys=no_account_keys,
            **settings,
        )
    )
    _warn_unsafe(target)
    if as_json:
        print_json(target)
    else:
        typer.echo(
            f"created {target.type_label} target {target.display_name!r}: {_where(target)} ({target.id})"
        )


app.command("create")(_with_settings(create, update=False))


@app.command("list")
def list_targets(as_json: JsonOpt = False) -> None:
    """List targets with their last test result."""
    from mailwright.config import Settings
    from mailwright.services import listing

    # The embedded database is read without opening the services (quicker; the same list).
    targets = listing.targets(Settings())
    if targets is None:
        targets = services().targets.list_all()
    if as_json:
        print_json(targets)
        return
    rows = []
    for t in targets:
        view = t.view()
        rows.append(
            [
                t.display_name,
                t.type_label,
                view.address,
                view.security,
                t.account_key or "(none)",
                ("OK" if t.last_test.ok else "FAILED") if t.last_test else "never",
            ]
        )
    print_table(["DISPLAY NAME", "TYPE", "SERVER", "SECURITY", "ACCOUNT KEY", "LAST TEST"], rows)


@app.command("show")
def show(ref: Annotated[str, typer.Argument(help="display name or id")], as_json: JsonOpt = False) -> None:
    """Show one target."""
    target = services().targets.get(ref)
    if as_json:
        print_json(target)
    else:
        _show(target)
    _warn_unsafe(target)


def update(
    ref: Annotated[str, typer.Argument(help="display name or id")],
    name: Annotated[str | None, typer.Option("--name", help="new display name")] = None,
    account_key: AccountKey = None,
    no_account_keys: Annotated[
        bool | None, typer.Option("--no-account-keys", help="no login: an open relay")
    ] = None,
    description: Description = None,
    as_json: JsonOpt = False,
    *,
    settings: dict[str, Any],
) -> None:
    """Change a target; only the options given change."""
    from mailwright.services.targets import TargetUpdate

    target = services().targets.update(
        ref,
        TargetUpdate(
            display_name=name,
            description=description,
            account_key=account_key,
            no_account_keys=no_account_keys,
            **settings,
        ),
    )
    _warn_unsafe(target)
    if as_json:
        print_json(target)
    else:
        typer.echo(f"updated target {target.display_name!r}")


app.command("update")(_with_settings(update, update=True))


@app.command("delete")
def delete(ref: Annotated[str, typer.Argument(help="display name or id")]) -> None:
    """Delete a target."""
    target = services().targets.get(ref)
    services().targets.delete(target.id)
    typer.echo(f"deleted target {target.display_name!r}")


@app.command("test")
def run_test(
    ref: Annotated[str, typer.Argument(help="display name or id")], as_json: JsonOpt = False
) -> None:
    """Connect, TLS, EHLO, AUTH, QUIT; explain what is misconfigured. Exit 1 on failure."""

    report = asyncio.run(services().targets.test(ref))
    if as_json:
        print_json(report.as_dict())
    else:
        _print_report(report)
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


def capabilities_line(caps: dict[str, Any]) -> str:
    """Every protocol's capabilities in one line: yes/no flags, lists, sizes."""
    parts = []
    for key, value in caps.items():
        if key == "raw":
            continue
        parts.append(f"{key.upper()} {_shown(value)}")
    return ", ".join(parts)


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return " ".join(str(v) for v in value) or "none"
    if isinstance(value, dict):  # Graph's permissions, its mailbox: "Mail.Send yes, Mail.Read no"
        return "(" + ", ".join(f"{k} {_shown(v)}" for k, v in value.items()) + ")"
    return "none" if value is None else str(value)


def _print_report(report: ConnectionTestReport) -> None:
    key = f"account key {report.account_key!r}" if report.account_key else "no account key"
    # A server named by URL (Graph) carries its port already.
    where = report.server if "://" in report.server else f"{report.server}:{report.port}"
    typer.echo(f"Target {report.target!r}: {where} {report.protocol}, {report.security}, {key}")
    width = max([9, *(len(step.name) for step in report.steps)])
    for step in report.steps:
        mark = "ok  " if step.ok else "FAIL"
        typer.echo(f"  {mark} {step.name:<{width}} {step.ms:8.1f} ms")
    if report.greeting:
        typer.echo(f"Greeting: {report.greeting}")
    if report.tls:
        cert = report.tls.get("certificate") or {}
        verified = "verified" if report.tls["verified"] else "NOT verified"
        typer.echo(f"TLS: {report.tls['version']} {report.tls['cipher']}, certificate {verified}")
        if cert:
            typer.echo(
                f"  subject {cert['subject']}; issuer {cert['issuer']}; names {', '.join(cert['names'])}"
            )
    if report.capabilities:
        typer.echo("Capabilities: " + capabilities_line(report.capabilities))
    if report.authenticated_as:
        how = f" ({report.auth_mechanism})" if report.auth_mechanism else ""
        typer.echo(f"Authenticated as {report.authenticated_as}{how}")
    for warning in report.warnings:
        typer.secho(f"warning: {warning}", fg="yellow", err=True)
    if report.ok:
        typer.secho(f"OK in {report.total_ms:.0f} ms", fg="green")
        return
    error = report.error or {}
    typer.secho(f"error: {error.get('message')}", fg="red", err=True)
    if error.get("hint"):
        typer.echo(f"hint: {error['hint']}", err=True)
