"""`mailwright workflows`: documents of steps, validated, started, exported and imported."""

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from mailwright.cli.context import services
from mailwright.cli.output import EXIT_FAILED, print_json, print_table
from mailwright.cli.runs import print_run
from mailwright.domain.runs import RunStatus
from mailwright.errors import ValidationError

app = typer.Typer(
    help="Workflows: ordered steps of email activities, run as durable runs.", no_args_is_help=True
)

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValidationError(f"cannot read {path}: {exc.strerror}", field="file") from exc


def _inputs(pairs: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValidationError(f"--input {pair!r} needs the form KEY=VALUE", field="inputs")
        out[key.strip()] = value
    return out


@app.command("create")
def create(
    file: Annotated[Path, typer.Option("--file", "-f", help="the workflow document, YAML or JSON")],
    replace: Annotated[bool, typer.Option("--replace", help="replace a workflow of the same name")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Store a workflow after checking every reference and expression."""
    workflow = services().workflows.create(_read(file), filename=file.name, replace=replace)
    if as_json:
        print_json(workflow)
    else:
        typer.echo(f"created workflow {workflow.name!r} with {len(workflow.steps)} step(s) ({workflow.id})")


@app.command("validate")
def validate(
    file: Annotated[
        Path | None, typer.Argument(help="the workflow document, YAML or JSON", show_default=False)
    ] = None,
    file_option: Annotated[
        Path | None, typer.Option("--file", "-f", help="the document, as `workflows create` takes it")
    ] = None,
) -> None:
    """Check a document without storing it: exit 0 when it is valid, 2 with every problem otherwise."""
    if file is not None and file_option is not None and file != file_option:
        raise ValidationError(
            "give the document once: as an argument or with --file", field="file",
            hint="mailwright workflows validate --file alert.yaml",
        )  # fmt: skip
    file = file or file_option
    if file is None:
        raise ValidationError(
            "no document given", field="file", hint="mailwright workflows validate --file alert.yaml"
        )
    document = services().workflows.validate(_read(file), filename=file.name)
    typer.echo(f"valid: workflow {document.name!r}, {len(document.steps)} step(s)")


@app.command("list")
def list_workflows(as_json: JsonOpt = False) -> None:
    """List workflows."""
    workflows = services().workflows.list_all()
    if as_json:
        print_json(workflows)
        return
    print_table(
        ["NAME", "STEPS", "TARGET", "RUNS", "DESCRIPTION"],
        [
            [w.name, ", ".join(w.steps), w.target or "(chosen at start)", w.runs, w.description]
            for w in workflows
        ],
    )


@app.command("show")
def show(ref: Annotated[str, typer.Argument(help="name or id")], as_json: JsonOpt = False) -> None:
    """Show a workflow and its document."""
    if as_json:
        print_json(services().workflows.get(ref))
        return
    text = services().workflows.export(ref).document
    typer.echo(text, nl=not text.endswith("\n"))


@app.command("run")
def run(
    ref: Annotated[str, typer.Argument(help="name or id")],
    input_pairs: Annotated[list[str] | None, typer.Option("--input", "-i", help="KEY=VALUE; repeat")] = None,
    target: Annotated[str | None, typer.Option("--target", help="the workflow's target for this run")] = None,
    account_key: Annotated[
        str | None, typer.Option("--account-key", help="override the target's key")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="execute now and wait for the result")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Start a run. It is stored before this returns; `serve` or `worker` executes it, or --wait does here."""
    import asyncio

    started = services().runs.start_workflow(
        ref, inputs=_inputs(input_pairs), target=target, account_key=account_key
    )
    result = asyncio.run(services().waiting.run_inline(started.id)) if wait else started
    if as_json:
        print_json(result)
    elif wait:
        print_run(result)
    else:
        follow = f"mailwright runs show {started.id}"
        typer.echo(f"queued run {started.id} of {started.workflow!r}; follow it with `{follow}`")
    if wait and result.status != RunStatus.SUCCEEDED:
        raise typer.Exit(EXIT_FAILED)


@app.command("schedules")
def schedules(
    ref: Annotated[str, typer.Argument(help="name or id")],
    enable: Annotated[int | None, typer.Option("--enable", help="turn schedule number N on")] = None,
    disable: Annotated[int | None, typer.Option("--disable", help="turn schedule number N off")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show cron schedules (next fire, last fire, fires missed while down); turn them on or off."""
    svc = services()
    if enable is not None:
        svc.schedules.set_enabled(ref, enable, True)
    if disable is not None:
        svc.schedules.set_enabled(ref, disable, False)
    listed = svc.schedules.list_for(ref)
    if as_json:
        print_json(listed)
        return
    print_table(
        ["#", "CRON", "ENABLED", "NEXT (UTC)", "LAST FIRED", "MISSED"],
        [
            [
                s.index,
                s.cron,
                "yes" if s.enabled else "no",
                f"{s.next_fire_at:%Y-%m-%d %H:%M}" if s.next_fire_at else "-",
                f"{s.last_fired_at:%Y-%m-%d %H:%M}" if s.last_fired_at else "never",
                f"{s.missed_count} (last {s.last_missed_at:%Y-%m-%d %H:%M})"
                if s.missed_count and s.last_missed_at
                else "0",
            ]
            for s in listed
        ],
    )


@app.command("export")
def export(
    ref: Annotated[str, typer.Argument(help="name or id")],
    fmt: Annotated[
        Literal["yaml", "json"] | None,
        typer.Option("--format", help="rewrite as yaml or json (default: as it was written)"),
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write to this file")] = None,
) -> None:
    """Export the document as written, comments included (no secrets); the names it uses go to stderr."""
    exported = services().workflows.export(ref, fmt)
    if output:
        output.write_text(exported.document, encoding="utf-8")
    else:
        typer.echo(exported.document, nl=False)
    typer.echo(
        f"names targets: {', '.join(exported.targets) or '(none)'}; "
        f"account keys: {', '.join(exported.account_keys) or '(none)'}",
        err=True,
    )


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="an exported document")],
    replace: Annotated[bool, typer.Option("--replace", help="replace a workflow of the same name")] = False,
) -> None:
    """Import a document; any target or account key it names that is missing here is reported."""
    workflow = services().workflows.create(_read(file), filename=file.name, replace=replace)
    typer.echo(f"imported workflow {workflow.name!r}")


@app.command("delete")
def delete(ref: Annotated[str, typer.Argument(help="name or id")]) -> None:
    """Delete a workflow (its finished runs are kept)."""
    workflow = services().workflows.get(ref)
    services().workflows.delete(workflow.id)
    typer.echo(f"deleted workflow {workflow.name!r}")


__all__ = ["app", "json"]
