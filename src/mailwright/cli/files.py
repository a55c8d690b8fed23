"""`mailwright files`: the stored attachments, and removing old ones (retention)."""

import re
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated

import typer

from mailwright.cli.context import services
from mailwright.cli.output import print_fields, print_json
from mailwright.errors import ValidationError

if TYPE_CHECKING:
    from mailwright.services.files import PruneResult

app = typer.Typer(
    help="Attachments read from mail, kept in the file store; prune removes old ones.",
    no_args_is_help=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]

_DURATION = re.compile(r"^\s*(\d+)\s*([dhms])\s*$", re.IGNORECASE)
_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
DURATION_FORMS = "a whole number followed by d, h, m or s: 30d, 12h, 90m, 3600s"


def parse_duration(text: str) -> timedelta:
    """30d, 12h, 90m or 3600s as a timedelta; a clear error naming the accepted forms otherwise."""
    found = _DURATION.match(text)
    if found is None:
        raise ValidationError(
            f"older_than: {text!r} is not a duration", field="older_than", hint=f"use {DURATION_FORMS}"
        )
    amount, unit = int(found.group(1)), found.group(2).lower()
    try:
        duration = timedelta(**{_UNITS[unit]: amount})
    except OverflowError:
        raise ValidationError(f"older_than: {text!r} is too long", field="older_than") from None
    if duration <= timedelta(0):
        raise ValidationError(
            f"older_than: {text!r} is zero", field="older_than", hint="give a positive duration, e.g. 30d"
        )
    return duration


def size(count: int) -> str:
    """Bytes for people: 812 B, 4.2 KB, 1.5 MB (powers of 1024)."""
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{count:,} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _files(count: int) -> str:
    return f"{count:,} file{'' if count == 1 else 's'}"


def _time(value: datetime | None) -> str:
    return "" if value is None else f"{value:%Y-%m-%d %H:%M:%S} UTC"


@app.command("list")
def list_files(as_json: JsonOpt = False) -> None:
    """How many files the store holds, their total size, and the oldest and newest."""
    summary = services().file_service.summary()
    if as_json:
        print_json(summary)
        return
    print_fields(
        [
            ("directory", summary.directory),
            ("files", f"{summary.count:,}"),
            ("size", size(summary.bytes)),
            ("oldest", _time(summary.oldest)),
            ("newest", _time(summary.newest)),
        ]
    )


@app.command("prune")
def prune(
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than", help="remove files last stored longer ago than this: 30d, 12h, 90m, 3600s"
        ),
    ],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only say what would be removed")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove old files, except those a run not yet finished (queued, running, preparing) refers to."""
    result = services().file_service.prune(parse_duration(older_than), dry_run=dry_run)
    if as_json:
        print_json(result)
    else:
        print_prune(result, older_than=older_than.strip())
    if result.failed:
        raise typer.Exit(1)


def print_prune(result: "PruneResult", *, older_than: str) -> None:
    verb = "would remove" if result.dry_run else "removed"
    freed = "would free" if result.dry_run else "freed"
    typer.echo(
        f"{verb} {_files(result.removed)} older than {older_than} "
        f"(last stored before {_time(result.cutoff)}), {freed} {size(result.removed_bytes)}"
    )
    if result.kept_referenced:
        runs = ", ".join(result.referencing_runs)
        more = result.referencing_run_count > len(result.referencing_runs)
        count = result.referencing_run_count
        typer.echo(
            f"kept {_files(result.kept_referenced)} ({size(result.kept_referenced_bytes)}): "
            f"still referenced by {count} active run{'' if count == 1 else 's'} "
            f"({runs}{', …' if more else ''})"
        )
    typer.echo(
        f"kept {_files(result.kept_recent)} ({size(result.kept_recent_bytes)}): newer than {older_than}"
    )
    if result.failed:
        typer.echo(f"could not remove {_files(result.failed)}:", err=True)
        for error in result.errors:
            typer.echo(f"  {error}", err=True)
