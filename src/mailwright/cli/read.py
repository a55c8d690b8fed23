"""`mailwright read`: a one-off read of a mailbox target: an IMAP (or Graph) folder, or a POP3 drop."""

from pathlib import Path, PurePath
from typing import Annotated, Any

import typer

from mailwright.cli.context import services
from mailwright.cli.output import print_json, print_table
from mailwright.errors import ValidationError


def read(
    target: Annotated[
        str, typer.Option("--target", help="IMAP, POP3 or Graph Endpoint target (display name or id)")
    ],
    folder: Annotated[str, typer.Option("--folder", help="the folder to read (IMAP, Graph)")] = "INBOX",
    unseen: Annotated[bool, typer.Option("--unseen", help="only messages not yet read")] = False,
    sender: Annotated[str | None, typer.Option("--from", help="sender contains")] = None,
    subject: Annotated[str | None, typer.Option("--subject", help="subject contains")] = None,
    max_count: Annotated[int, typer.Option("--max", help="at most this many, newest first")] = 20,
    after: Annotated[
        str,
        typer.Option(
            "--after", help="nothing (default), mark_read, move or delete (POP3: nothing or delete)"
        ),
    ] = "nothing",
    move_to: Annotated[str | None, typer.Option("--move-to", help="the folder for --after move")] = None,
    save_attachments: Annotated[
        Path | None,
        typer.Option("--save-attachments", help="write each message's attachments into this directory"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON (bodies and headers included)")] = False,
) -> None:
    """Read messages without marking them read or removing them (unless --after says otherwise).

    On a POP3 target the newest messages are retrieved and left on the server; --unseen,
    --folder and --after mark_read/move need IMAP (POP3 has no flags or folders).
    """
    import asyncio

    from mailwright.activities.drop_read import read_drop
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
            "download_attachments": save_attachments is not None,
        },
    )
    svc = services()
    # Saved attachments come back inline and go to the directory, not to the file store.
    files = None if save_attachments is not None else svc.files
    reader = read_messages if svc.targets.resolve(target).has_folders() else read_drop
    result = asyncio.run(reader(svc.targets, target, inputs, files=files))
    if save_attachments is not None:
        _save(result["messages"], save_attachments)
    if as_json:
        print_json(result)
        return
    where = f"in {result['folder']!r}" if result["uidvalidity"] is not None else "on the POP3 server"
    typer.echo(f"{result['count']} of {result['matched']} matching message(s) {where}")
    print_table(
        ["UID" if result["uidvalidity"] is not None else "NUMBER", "DATE", "FROM", "SUBJECT", "ATTACHMENTS"],
        [
            [m["uid"], m["date"] or "", m["from"] or "", m["subject"], m["attachments_count"]]
            for m in result["messages"]
        ],
    )


def _save(messages: list[dict[str, Any]], directory: Path) -> None:
    """Write attachments as UID-NAME files; the JSON then names the file instead of the bytes."""
    from base64 import b64decode

    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValidationError(
            f"cannot create {directory}: {exc.strerror}", field="save_attachments"
        ) from None
    for message in messages:
        for attachment in message["attachments"]:
            content = attachment.pop("content", None)
            if content is None:
                continue  # over the size limit
            written = str(attachment["file_name"] or "attachment").replace("\\", "/")
            name = PurePath(written).name or "attachment"  # never a path out of the directory
            path = directory / f"{message['uid']}-{name}"
            path.write_bytes(b64decode(content))
            attachment["saved_to"] = str(path)
            typer.echo(f"saved {path} ({attachment['size']} bytes)", err=True)
