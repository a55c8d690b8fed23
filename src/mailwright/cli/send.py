"""`mailwright send`: one message through a target."""

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mailwright.cli.context import services
from mailwright.cli.output import EXIT_FAILED, print_json
from mailwright.domain.importance import Importance
from mailwright.errors import MailwrightError, TargetError, ValidationError

if TYPE_CHECKING:
    from mailwright.services.sending import AttachmentIn, SendResult


def _read_text(path: str, *, field: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValidationError(f"cannot read {field} file {path}: {exc.strerror}", field=field) from exc
    except UnicodeDecodeError as exc:
        raise ValidationError(f"{field} file {path} is not UTF-8 text", field=field) from exc


def _attachment(path: str) -> "AttachmentIn":
    import base64
    import mimetypes

    from mailwright.services.sending import AttachmentIn

    file = Path(path)
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ValidationError(f"cannot read attachment {path}: {exc.strerror}", field="attachments") from exc
    content_type, _ = mimetypes.guess_type(file.name)
    return AttachmentIn(
        filename=file.name, content_type=content_type, content=base64.b64encode(data).decode()
    )


def _one_of(text: str | None, file: str | None, *, field: str) -> str | None:
    if text is not None and file is not None:
        raise ValidationError(f"give either --{field} or --{field}-file, not both", field=field)
    return _read_text(file, field=field) if file is not None else text


def send(
    target: Annotated[str, typer.Option("--target", help="target display name or id")],
    to: Annotated[
        list[str] | None, typer.Option("--to", help="recipient; repeat, or separate by commas")
    ] = None,
    cc: Annotated[list[str] | None, typer.Option("--cc")] = None,
    bcc: Annotated[
        list[str] | None, typer.Option("--bcc", help="envelope only, never in the headers")
    ] = None,
    sender: Annotated[
        str | None,
        typer.Option("--from", help="blank = the account key's sender, else its username"),
    ] = None,
    reply_to: Annotated[list[str] | None, typer.Option("--reply-to")] = None,
    subject: Annotated[str, typer.Option("--subject")] = "",
    body: Annotated[str | None, typer.Option("--body", help="plain text")] = None,
    body_file: Annotated[
        str | None, typer.Option("--body-file", help="plain text from a file, - for stdin")
    ] = None,
    html: Annotated[str | None, typer.Option("--html", help="HTML text")] = None,
    html_file: Annotated[
        str | None, typer.Option("--html-file", help="HTML from a file, - for stdin")
    ] = None,
    attach: Annotated[list[str] | None, typer.Option("--attach", help="file to attach; repeat")] = None,
    header: Annotated[list[str] | None, typer.Option("--header", help="'Name: value'; repeat")] = None,
    in_reply_to: Annotated[str | None, typer.Option("--in-reply-to", help="Message-ID replied to")] = None,
    references: Annotated[list[str] | None, typer.Option("--references", help="Message-ID; repeat")] = None,
    importance: Annotated[Importance, typer.Option("--importance")] = Importance.NORMAL,
    account_key: Annotated[
        str | None, typer.Option("--account-key", help="override the target's default key")
    ] = None,
    continue_if_one_address_valid: Annotated[
        bool,
        typer.Option("--continue-if-one-address-valid", help="send when at least one recipient is accepted"),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Send an email through a target and show each recipient's outcome. Exit 1 if it failed."""
    if body_file == "-" and html_file == "-":
        raise ValidationError("only one of --body-file and --html-file can read stdin", field="body")
    import asyncio

    from mailwright.services.sending import SendEmailRequest

    request = SendEmailRequest(
        target=target,
        from_=sender,
        to=to or [],
        cc=cc or [],
        bcc=bcc or [],
        reply_to=reply_to or [],
        subject=subject,
        body=_one_of(body, body_file, field="body"),
        html=_one_of(html, html_file, field="html"),
        attachments=[_attachment(p) for p in attach or []],
        headers=header or [],
        in_reply_to=in_reply_to,
        references=references,
        importance=importance,
        continue_if_one_address_valid=continue_if_one_address_valid,
        account_key=account_key,
    )
    try:
        result = asyncio.run(services().sending.send(request))
    except MailwrightError as exc:
        if as_json and isinstance(exc, TargetError):
            print_json({"status": "failed", "error": exc.details()})
        raise
    if as_json:
        print_json(result)
    else:
        _print_result(result)


def _print_result(result: "SendResult") -> None:
    key = f", account key {result.account_key!r}" if result.account_key else ""
    typer.echo(
        f"{result.status}: {result.message_id} via {result.target!r}{key} "
        f"({result.size} bytes, {result.timings['total']:.0f} ms)"
    )
    width = max(len(r.address) for r in result.recipients)
    for r in result.recipients:
        code = f"{r.code} " if r.code else ""
        typer.echo(f"  {r.status:<8} {r.address.ljust(width)}  {code}{r.reply}")
    typer.echo(f"server: {result.server_reply.code} {result.server_reply.text}")
    for warning in result.warnings:
        typer.secho(f"warning: {warning}", fg="yellow", err=True)
    if result.status != "sent":
        refused = sum(r.status == "refused" for r in result.recipients)
        typer.secho(
            f"warning: {refused} recipient(s) refused; the others got the message",
            fg="yellow",
            err=True,
        )


__all__ = ["EXIT_FAILED", "send"]
