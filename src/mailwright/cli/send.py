"""`mailwright send`: one message through a target."""

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mailwright.cli.context import services
from mailwright.cli.output import EXIT_FAILED, print_json, redact
from mailwright.domain.importance import Importance
from mailwright.errors import ValidationError

if TYPE_CHECKING:
    from mailwright.services.runs import RunPublic
    from mailwright.services.sending import AttachmentIn, SendResult

INLINE_WAIT = 60.0  # seconds this command waits for a retry or a rate-limit slot before leaving it
EXIT_LATER = 75  # EX_TEMPFAIL: stored and queued, not sent yet


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
    no_wait: Annotated[
        bool,
        typer.Option(
            "--no-wait",
            help="queue it and return at once (printing the run id); a worker (`mailwright serve` or "
            "`mailwright worker`) sends it",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Send an email through a target and show each recipient's outcome. Exit 1 if it failed.

    The message is stored as a run first (`mailwright runs list` shows it), then sent from
    this process, retries included; with --no-wait a worker sends it. A retry or rate-limit
    slot more than a minute away is left to the workers: the command says so and exits 75.
    """
    if body_file == "-" and html_file == "-":
        raise ValidationError("only one of --body-file and --html-file can read stdin", field="body")
    import asyncio

    from mailwright.services.sending import SendEmailRequest
    from mailwright.services.waiting import answer_for

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
    svc = services()
    started = svc.waiting.start_send_email(request, key=None, scope="cli")
    if no_wait:
        _print_queued(started.run_id, as_json=as_json, workers=bool(svc.workers.live()))
        return
    asyncio.run(svc.waiting.run_inline(started.run_id, longest_wait=INLINE_WAIT))
    answer = answer_for(svc.runs.send_outcome(started.run_id), replayed=False)
    if answer.result is not None and as_json:
        print_json(answer.result)
    elif answer.result is not None:
        _print_result(answer.result)
    elif answer.error is not None:
        _print_failure(answer.run_id, answer.error, as_json=as_json)
        raise typer.Exit(EXIT_FAILED)
    else:
        _print_later(svc.runs.get(answer.run_id), as_json=as_json)
        raise typer.Exit(EXIT_LATER)


def _print_queued(run_id: str, *, as_json: bool, workers: bool) -> None:
    if as_json:
        print_json({"status": "queued", "run_id": run_id})
        return
    typer.echo(f"queued: run {run_id} (`mailwright runs show {run_id}` follows it)")
    if not workers:
        typer.secho(
            "note: no worker is running now; it is sent once `mailwright serve` or `mailwright worker` runs",
            fg="yellow",
            err=True,
        )


def _print_failure(run_id: str, error: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print_json({"status": "failed", "run_id": run_id, "error": error})
        return
    typer.echo(f"error: {redact(str(error.get('message') or 'the send failed'))}", err=True)
    if error.get("hint"):
        typer.echo(f"hint: {redact(str(error['hint']))}", err=True)
    typer.echo(f"run {run_id} failed: `mailwright runs show {run_id}` has every attempt")


def _print_later(run: "RunPublic", *, as_json: bool) -> None:
    """A retry or a rate-limit slot further away than INLINE_WAIT: the workers take it from here."""
    if as_json:
        print_json({"status": run.status, "run_id": run.id, "not_before": run.not_before})
        return
    when = f" at {run.not_before:%Y-%m-%d %H:%M:%S} UTC" if run.not_before else ""
    step = run.steps[-1] if run.steps else None
    reason = (step.error or {}).get("message") if step is not None and step.error else None
    reason = reason or (step.notes[-1] if step is not None and step.notes else None)
    why = f" ({reason})" if reason else ""
    typer.echo(
        f"not sent yet{why}: run {run.id} is tried again{when} by a worker (`mailwright serve` or "
        f"`mailwright worker`); `mailwright runs show {run.id}` follows it",
        err=True,
    )


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
