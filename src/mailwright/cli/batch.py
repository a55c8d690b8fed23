"""`mailwright send-batch`: many messages from a JSONL file (or stdin), sent in this process.

Each line is one message with the fields of /api/v1/send-email. The file is
streamed, never held whole: every message is checked and stored (a bad line
refuses the whole file, listing the bad lines, and nothing is sent); then the
stored messages are sent with a progress bar and a summary at the end.
"""

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated

import typer

from mailwright.cli.context import services
from mailwright.cli.output import EXIT_BAD_INPUT, EXIT_FAILED, print_json
from mailwright.errors import ValidationError

if TYPE_CHECKING:
    from mailwright.errors import BatchRefusedError

EXIT_INTERRUPTED = 130  # what shells report for a command stopped by SIGINT


def send_batch(
    target: Annotated[str, typer.Option("--target", help="target display name or id")],
    file: Annotated[
        str, typer.Option("--file", help="JSONL: one message per line (fields of send-email); - for stdin")
    ],
    account_key: Annotated[
        str | None, typer.Option("--account-key", help="override the target's default key")
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            help="messages in hand at once (default: 4 per connection of the target's pool, at least 16)",
        ),
    ] = None,
    sender: Annotated[
        str | None,
        typer.Option("--from", metavar="ADDRESS", help="the From of every line that gives none"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Send many messages through a target. Exit 0 if all were sent, 1 if some were not, 2 on bad input."""
    from rich.console import Console

    # The sending machinery (asyncio, the progress bar, the engine) loads only now.
    from mailwright.cli.batch_sending import INTERRUPTED, print_summary, send, summary
    from mailwright.errors import BatchRefusedError

    svc = services()
    started = time.monotonic()
    with _lines(file) as lines:
        try:
            created = svc.batches.create(
                lines,
                target=target,
                account_key=account_key,
                concurrency=concurrency,
                source=_name(file),
                default_from=sender,
            )
        except BatchRefusedError as exc:
            _print_refusal(exc)
            raise typer.Exit(EXIT_BAD_INPUT) from None
    stored = time.monotonic() - started
    err = Console(stderr=True, highlight=False)
    if not as_json:
        err.print(
            f"queued {created.total:,} messages as run {created.run_id} "
            f"(target {created.target!r}, {created.concurrency} at a time, stored in {stored:.1f} s)"
        )
    show = "none" if as_json else ("bar" if err.is_terminal else "plain")
    progress, status = send(svc, created, show=show, console=err)
    outcome = summary(svc, created, progress, status=status, stored=stored)
    if as_json:
        print_json(outcome)
    else:
        print_summary(outcome)
    if status == INTERRUPTED:
        typer.echo(
            f"stopped by Ctrl-C: the other {outcome['not_sent']:,} messages stay queued as run "
            f"{created.run_id}; `mailwright serve` or `mailwright worker` sends them, "
            f"`mailwright runs cancel {created.run_id}` drops them",
            err=True,
        )
        raise typer.Exit(EXIT_INTERRUPTED)
    if outcome["sent"] + outcome["partial"] < created.total:
        raise typer.Exit(EXIT_FAILED)


# --- reading the file -----------------------------------------------------------------


def _name(file: str) -> str:
    return "stdin" if file == "-" else file


@contextmanager
def _lines(file: str) -> Iterator[Iterator[tuple[str, str]]]:
    if file == "-":
        yield _numbered(sys.stdin, "stdin")
        return
    try:
        handle = Path(file).open(encoding="utf-8", newline="\n")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise ValidationError(f"cannot read {file}: {exc.strerror}", field="file") from exc
    with handle:
        yield _numbered(handle, file)


def _numbered(handle: IO[str], name: str) -> Iterator[tuple[str, str]]:
    number = 0
    try:
        for number, line in enumerate(handle, start=1):
            # Windows editors start UTF-8 files with a byte order mark; JSON does not allow one.
            yield f"line {number}", line.removeprefix("\ufeff") if number == 1 else line
    except UnicodeDecodeError:
        raise ValidationError(
            f"{name}: line {number + 1} is not UTF-8 text", field="file", hint="save the file as UTF-8"
        ) from None


def _print_refusal(exc: "BatchRefusedError") -> None:
    typer.echo(f"error: {exc.message}", err=True)
    for problem in exc.problems:
        typer.echo(f"  {problem.where}: {problem.message}", err=True)
    if exc.bad > len(exc.problems):
        typer.echo(f"  … and {exc.bad - len(exc.problems):,} more", err=True)
    typer.echo(f"hint: {exc.hint}", err=True)
