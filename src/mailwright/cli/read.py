"""`mailwright read`: a one-off read of an IMAP Endpoint target's folder."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from mailwright.cli.context import services
from mailwright.cli.output import print_json, print_table


def read(
    target: Annotated[str, typer.Option("--target", help="IMAP Endpoint target (display name or id)")],
    folder: Annotated[str, typer.Option("--folder", help="the folder to read")] = "INBOX",
    unseen: Annotated[bool, typer.Option("--unseen", help="only messages not yet read")] = False,
    sender: Annotated[str | None, typer.Option("--from", help="sender contains")] = None,
    subject: Annotated[str | None, typer.Option("--subject", help="subject contains")] = None,
    max_count: Annotated[int, typer.Option("--max", help="at most this many, newest first")] = 20,
    after: Annotated[
        str, typer.Option("--after", help="nothing (default), mark_read, move or delete")
    ] = "nothing",
    move_to: Annotated[str | None, typer.Option("--move-to", help="the folder for --after move")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON (bodies and headers included)")] = False,
) -> None:
    """Read messages without marking them read (unless --after says otherwise)."""
    from mailwright.activities.read_email import ReadEmailInput, read_messages
    from mailwright.domain.validation import validate_model

    inputs = validate_model(
        ReadEmailInput,
        {
            "folder": folder,
            "unseen": unseen,
            "from": sender,
            "subject": subject,
            "max": max_count,
            "after": after,
            "move_to": move_to,
        },
    )
    result = asyncio.run(read_messages(services().targets, target, inputs))
    if as_json:
        print_json(result)
        return
    typer.echo(f"{result['count']} of {result['matched']} matching message(s) in {result['folder']!r}")
    print_table(
        ["UID", "DATE", "FROM", "SUBJECT", "ATTACHMENTS"],
        [
            [m["uid"], m["date"] or "", m["from"] or "", m["subject"], m["attachments_count"]]
            for m in result["messages"]
        ],
    )
