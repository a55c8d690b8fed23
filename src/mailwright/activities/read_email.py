"""read_email: read messages from an IMAP Endpoint target, then optionally mark, move or delete them."""

from __future__ import annotations

import base64
from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mailwright.activities.context import ActivityContext, Files, Targets
from mailwright.domain.capabilities import FolderMailbox
from mailwright.domain.mime_reader import extract_attachment, parse_message
from mailwright.errors import ValidationError
from mailwright.plugins import ActivitySpec, register_activity

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class ReadEmailInput(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    target: str = ""
    folder: str = "INBOX"
    unseen: bool = False
    from_: str | None = Field(default=None, alias="from", description="sender contains")
    to: str | None = None
    subject: str | None = Field(default=None, description="subject contains")
    since: date | None = None
    before: date | None = None
    header: dict[str, str] = Field(default_factory=dict, description="header name → value contained")
    larger_than: int | None = Field(default=None, ge=0, description="bytes")
    has_attachment: bool | None = None
    max: int = Field(default=50, ge=1, le=1000)
    order: Literal["newest", "oldest"] = "newest"
    download_attachments: bool = False
    attachment_size_limit: int = Field(default=25 * 1024 * 1024, ge=0)
    after: Literal["nothing", "mark_read", "move", "delete"] = "nothing"
    move_to: str | None = None
    account_key: str | None = None


def _imap_date(value: date) -> str:
    return f"{value.day}-{MONTHS[value.month - 1]}-{value.year}"


def _quoted(value: str, field: str) -> str:
    if not value.isascii():
        raise ValidationError(f"{field}: IMAP search terms must be ASCII here", field=field)
    # Imported here: loading the activities (every CLI start) must not load the IMAP client.
    from mailwright.transport.imap import quote_string

    try:
        return quote_string(value)
    except ValueError as exc:
        raise ValidationError(f"{field}: {exc}", field=field) from None


def search_criteria(inputs: ReadEmailInput) -> str:
    """The IMAP SEARCH criteria for the inputs (every term ANDed)."""
    terms: list[str] = []
    if inputs.unseen:
        terms.append("UNSEEN")
    for key, value in (("FROM", inputs.from_), ("TO", inputs.to), ("SUBJECT", inputs.subject)):
        if value:
            terms.append(f"{key} {_quoted(value, key.lower())}")
    if inputs.since:
        terms.append(f"SINCE {_imap_date(inputs.since)}")
    if inputs.before:
        terms.append(f"BEFORE {_imap_date(inputs.before)}")
    for name, value in inputs.header.items():
        terms.append(f"HEADER {_quoted(name, 'header')} {_quoted(value, 'header')}")
    if inputs.larger_than is not None:
        terms.append(f"LARGER {inputs.larger_than}")
    return " ".join(terms) or "ALL"


def message_output(
    uid: int, raw: bytes, inputs: ReadEmailInput, *, files: Files | None = None
) -> dict[str, Any] | None:
    """The Read Email fields of one message; None when the has_attachment filter rules it out.

    Downloaded attachments go to the file store when there is one (`file`: a reference a
    Send Email step can attach), else inline as base64 (`content`).
    """
    parsed = parse_message(raw).as_dict()
    attachments = []
    for info in parsed["attachments"]:
        entry = {
            "file_name": info["filename"],
            "content_type": info["content_type"],
            "size": info["size"],
            "sha256": info["sha256"],
            "is_email_type": info["content_type"] == "message/rfc822",
        }
        if inputs.download_attachments and info["size"] <= inputs.attachment_size_limit:
            found = extract_attachment(raw, info["index"])
            if found is not None and files is not None:
                entry["file"] = files.put(found[1])
            elif found is not None:
                # The shape Send Email takes, so a later step can forward it.
                entry["content"] = base64.b64encode(found[1]).decode()
        attachments.append(entry)
    if inputs.has_attachment is not None and bool(attachments) != inputs.has_attachment:
        return None
    return {
        "uid": uid,
        "message_id": parsed["message_id"],
        "from": parsed["from"],
        "to": parsed["to"],
        "cc": parsed["cc"],
        "date": parsed["date_iso"] or parsed["date"],
        "subject": parsed["subject"],
        "text": parsed["text"],
        "html": parsed["html"],
        "headers": parsed["headers"],
        "attachments": attachments,
        "attachments_count": len(attachments),
        "size": len(raw),
    }


async def read_messages(
    targets: Targets, target: str, inputs: ReadEmailInput, *, files: Files | None = None
) -> dict[str, Any]:
    """Search, fetch (without marking read), parse; then the `after` action on what was read."""
    if inputs.after == "move" and not inputs.move_to:
        raise ValidationError("after: move needs move_to (the folder)", field="move_to")
    resolved = targets.resolve(target, account_key=inputs.account_key)
    async with resolved.mailbox("read_email", folders=True) as mailbox:
        assert isinstance(mailbox, FolderMailbox)
        connection = mailbox
        uidvalidity, _exists = await connection.select(inputs.folder)
        uids = sorted(await connection.search_uids(search_criteria(inputs)), reverse=inputs.order == "newest")
        fetched = await connection.fetch_rfc822(uids[: inputs.max]) if uids else {}
        messages = [
            m
            for uid in uids[: inputs.max]
            if uid in fetched and (m := message_output(uid, fetched[uid], inputs, files=files))
        ]
        chosen = [m["uid"] for m in messages]
        if chosen and inputs.after == "mark_read":
            await connection.add_flags(chosen, ["\\Seen"])
        elif chosen and inputs.after == "move":
            assert inputs.move_to is not None
            await connection.create_folder(inputs.move_to)  # a missing folder is made, as a mail client would
            await connection.move(chosen, inputs.move_to)
        elif chosen and inputs.after == "delete":
            await connection.delete(chosen)
    return {
        "target": resolved.target.display_name,
        "folder": inputs.folder,
        "uidvalidity": uidvalidity,
        "matched": len(uids),
        "count": len(messages),
        "after": inputs.after,
        "messages": messages,
    }


async def execute(ctx: ActivityContext, inputs: ReadEmailInput) -> dict[str, Any]:
    target = inputs.target or ctx.require_target("read_email")
    return await read_messages(ctx.targets, target, inputs, files=ctx.files)


SPEC = register_activity(
    ActivitySpec(
        name="read_email",
        label="Read Email",
        input_model=ReadEmailInput,
        execute=execute,
        description="Read messages from an IMAP folder; optionally mark them read, move or delete them.",
    )
)
