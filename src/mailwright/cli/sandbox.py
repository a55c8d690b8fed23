"""`mailwright sandbox`: the messages the local sandbox SMTP server captured.

These commands read the files under ``MAILWRIGHT_HOME/sandbox`` directly; they do
not open the database, so they work while `mailwright serve` is running.
"""

import sys
import unicodedata
from typing import TYPE_CHECKING, Annotated

import typer

from mailwright.cli.output import print_fields, print_json, print_table
from mailwright.errors import ValidationError

if TYPE_CHECKING:
    from mailwright.sandbox import CapturedMessage, CapturedSummary, SandboxStore

app = typer.Typer(help="Messages captured by the local sandbox SMTP server.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]
_SUBJECT_WIDTH = 50


def store() -> "SandboxStore":
    from mailwright.config import Settings
    from mailwright.sandbox import SANDBOX_DIRECTORY_NAME, SandboxStore

    return SandboxStore(Settings().home / SANDBOX_DIRECTORY_NAME)


@app.command("list")
def list_messages(
    limit: Annotated[int, typer.Option("--limit", min=1, help="show at most this many")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """List captured messages, newest first."""
    sandbox = store()
    summaries = sandbox.list(limit=limit)
    if as_json:
        print_json([s.as_dict() for s in summaries])
        return
    print_table(["ID", "RECEIVED (UTC)", "FROM", "TO", "SUBJECT", "SIZE"], [_row(s) for s in summaries])
    total = sandbox.count()
    if not summaries:
        from mailwright.config import Settings
        from mailwright.sandbox import SANDBOX_TARGET_NAME

        port = Settings().sandbox_port
        where = f"127.0.0.1:{port}" if port else "a free port of 127.0.0.1"
        typer.echo(
            f"hint: `mailwright serve` runs the sandbox SMTP server on {where}; "
            f"mail sent there (target {SANDBOX_TARGET_NAME!r}) shows up here",
            err=True,
        )
    elif total > len(summaries):
        typer.echo(f"({len(summaries)} of {total} shown; use --limit to see more)", err=True)


def _safe(text: str, *, keep: str = "") -> str:
    """Captured text for a terminal: control characters (escape sequences) shown as U+FFFD."""
    return "".join(ch if ch in keep or unicodedata.category(ch) != "Cc" else "\ufffd" for ch in text)


def _row(summary: "CapturedSummary") -> list[object]:
    subject = _safe(summary.subject)
    if len(subject) > _SUBJECT_WIDTH:
        subject = subject[: _SUBJECT_WIDTH - 1] + "…"
    return [
        summary.id,
        summary.received_at.strftime("%Y-%m-%d %H:%M:%S"),
        _safe(summary.mail_from) or "<>",
        _safe(", ".join(summary.rcpt_tos)),
        subject,
        summary.size,
    ]


@app.command("show")
def show(
    message_id: Annotated[str, typer.Argument(metavar="ID", help="the id from `mailwright sandbox list`")],
    raw: Annotated[bool, typer.Option("--raw", help="print the message exactly as received")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show one captured message: envelope, headers, text and attachments."""
    if raw and as_json:
        raise ValidationError("--raw and --json cannot be used together", hint="choose one of them")
    sandbox = store()
    if raw:
        data = sandbox.raw(message_id)
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    message = sandbox.get(message_id)
    if as_json:
        print_json(message.as_dict())
        return
    _print_message(message)


def _print_message(message: "CapturedMessage") -> None:
    summary, parsed = message.summary, message.parsed
    print_fields(
        [
            ("id", summary.id),
            ("received", summary.received_at.isoformat(timespec="seconds")),
            ("peer", summary.peer),
            ("envelope from", _safe(summary.mail_from) or "<>"),
            ("envelope to", _safe(", ".join(summary.rcpt_tos))),
            ("size", f"{summary.size} bytes"),
        ]
    )
    typer.echo("")
    for name, value in parsed.headers:
        typer.echo(f"{_safe(name)}: {_safe(value)}")
    typer.echo("")
    if parsed.text is not None:
        typer.echo(_safe(parsed.text.rstrip("\n"), keep="\n\t"))
    elif parsed.html is not None:
        from mailwright.domain.html_text import html_to_text

        typer.echo("(no text part; text derived from the HTML part)", err=True)
        typer.echo(_safe(html_to_text(parsed.html).rstrip("\n"), keep="\n\t"))
    else:
        typer.echo("(no text part)")
    if parsed.attachments:
        typer.echo("")
        print_table(
            ["#", "FILENAME", "TYPE", "SIZE"],
            [[a.index, _safe(a.filename), a.content_type, a.size] for a in parsed.attachments],
        )
    if parsed.defects:
        typer.echo(f"\nMIME problems: {', '.join(sorted(set(parsed.defects)))}", err=True)


@app.command("clear")
def clear(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
) -> None:
    """Delete every captured message."""
    sandbox = store()
    if not yes:
        if not sys.stdin.isatty():
            raise ValidationError(
                "refusing to delete the captured messages without confirmation",
                hint="pass --yes to delete them without being asked",
            )
        count = sandbox.count()
        if not typer.confirm(f"Delete all {count} captured messages?", default=False):
            typer.echo("nothing deleted", err=True)
            return
    deleted = sandbox.clear()
    typer.echo(f"deleted {deleted} captured message{'' if deleted == 1 else 's'}")
