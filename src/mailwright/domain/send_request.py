"""A Send Email request and the message it makes: validated once, with no I/O.

The fields of /api/v1/send-email, `mailwright send` and the send_email activity;
`build_outgoing` checks every field so that no input can inject headers, and
`resolve_sender` picks From: as given, else the account key's sender, else its username.
"""

from __future__ import annotations

import base64
import binascii
from typing import Literal, Protocol

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from mailwright.domain.addresses import Address, AddressInput, parse_address, parse_address_list
from mailwright.domain.message import (
    Attachment,
    Importance,
    OutgoingMessage,
    check_header,
    check_message_id,
    check_single_line,
)
from mailwright.errors import ValidationError


class FileSource(Protocol):
    """Where attachments given by reference (`file: sha256:…`) are read from."""

    def get(self, ref: str) -> bytes: ...


class LoginName(Protocol):
    @property
    def key_name(self) -> str: ...

    @property
    def username(self) -> str: ...


class SenderSource(Protocol):
    """What a resolved target tells about the default From: its account key's sender and login."""

    @property
    def sender(self) -> str | None: ...

    @property
    def login(self) -> LoginName | None: ...


class AttachmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    filename: str = Field(validation_alias=AliasChoices("filename", "file_name", "name"))
    content_type: str | None = Field(default=None, description="guessed from the name if absent")
    content: str | None = Field(default=None, description="the file's bytes, base64")
    file: str | None = Field(
        default=None, description="or a stored file (sha256:…), as read_email gives for an attachment"
    )
    # What read_email reports beside each attachment, so its list can be forwarded as is.
    size: int | None = Field(default=None, exclude=True)
    sha256: str | None = Field(default=None, exclude=True)
    is_email_type: bool | None = Field(default=None, exclude=True)


class SendEmailRequest(BaseModel):
    """The fields of /api/v1/send-email and `mailwright send`."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {
                    "target": "Local sandbox",
                    "from": "Robot <robot@example.org>",
                    "to": ["bob@example.org"],
                    "subject": "Weekly report",
                    "body": "Hello Bob",
                }
            ]
        },
    )

    target: str = Field(min_length=1, max_length=255, description="target display name or id")
    from_: str | None = Field(
        default=None,
        alias="from",
        description="blank = the account key's sender, else its username",
    )
    to: AddressInput = Field(
        default=None, description="list, or one string separated by commas; no entry may hold a line break"
    )
    cc: AddressInput = None
    bcc: AddressInput = Field(default=None, description="envelope only, never in the headers")
    reply_to: AddressInput = None
    subject: str = ""
    body: str | None = Field(default=None, description="plain text")
    html: str | None = Field(default=None, description="HTML; with body: multipart/alternative")
    attachments: list[AttachmentIn] = Field(default_factory=list)
    headers: dict[str, str] | list[str] = Field(
        default_factory=dict, description="custom headers: {name: value} or ['Name: value']"
    )
    in_reply_to: str | None = None
    references: list[str] | str | None = None
    importance: Importance = Importance.NORMAL
    continue_if_one_address_valid: bool = Field(
        default=False,
        description="succeed when at least one recipient is accepted; refused ones are listed",
    )
    account_key: str | None = Field(default=None, description="override the target's default key")


class RecipientOutcome(BaseModel):
    address: str
    status: Literal["accepted", "refused"]
    code: int | None = None
    reply: str = ""


class ServerReply(BaseModel):
    code: int
    text: str


class SendResult(BaseModel):
    status: Literal["sent", "partial"]
    message_id: str
    target: str
    account_key: str | None
    sender: str
    recipients: list[RecipientOutcome]
    server_reply: ServerReply
    size: int
    smtputf8: bool
    timings: dict[str, float]
    warnings: list[str] = Field(default_factory=list)
    run_id: str | None = Field(default=None, description="the run that recorded this send")


def custom_headers(value: dict[str, str] | list[str]) -> list[tuple[str, str]]:
    """Custom headers as checked (name, value) pairs; from {name: value} or 'Name: value' lines."""
    pairs: list[tuple[str, str]] = []
    if isinstance(value, dict):
        pairs = list(value.items())
    else:
        for line in value:
            name, sep, text = line.partition(":")
            if not sep:
                raise ValidationError(f"header {line!r} needs the form 'Name: value'", field="headers")
            pairs.append((name, text))
    return [check_header(name, text) for name, text in pairs]


def _attachment_bytes(item: AttachmentIn, name: str, files: FileSource | None) -> bytes:
    if (item.content is None) == (item.file is None):
        raise ValidationError(
            f"attachment {name!r}: give either content (base64) or file (a stored file reference)",
            field="attachments",
        )
    if item.file is not None:
        if files is None:
            raise ValidationError(
                f"attachment {name!r}: stored files can be attached only inside Mailwright's runs",
                field="attachments",
                hint="send the bytes as base64 content instead",
            )
        return files.get(item.file)
    try:
        return base64.b64decode(item.content or "", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValidationError(
            f"attachment {name!r}: content is not valid base64", field="attachments"
        ) from exc


def _attachments(items: list[AttachmentIn], files: FileSource | None) -> list[Attachment]:
    out = []
    for item in items:
        name = item.filename.replace("\\", "/").rsplit("/", 1)[-1].strip()
        if not name or any(ord(c) < 32 for c in name):
            raise ValidationError(f"attachment name {item.filename!r} is not usable", field="attachments")
        content = _attachment_bytes(item, name, files)
        content_type = (item.content_type or "").strip()
        if content_type and (content_type.count("/") != 1 or any(c in content_type for c in " \r\n;")):
            raise ValidationError(
                f"attachment {name!r}: {content_type!r} is not a content type like application/pdf",
                field="attachments",
            )
        out.append(Attachment(filename=name, content=content, content_type=content_type))
    return out


def _references(value: list[str] | str | None) -> list[str]:
    if value is None:
        return []
    items = value.split() if isinstance(value, str) else value
    return [check_message_id(v, field="references") for v in items if v.strip()]


def resolve_sender(request: SendEmailRequest, resolved: SenderSource) -> Address:
    """From: as given, else the account key's sender, else its username."""
    if request.from_ and request.from_.strip():
        return parse_address(request.from_, field="from")
    if resolved.sender:
        return parse_address(resolved.sender, field="from")
    login = resolved.login
    if login is None:
        raise ValidationError(
            "From is required: this target has No Account Keys, so there is no default sender",
            field="from",
        )
    if "@" not in login.username:
        raise ValidationError(
            f"From is required: account key {login.key_name!r} has no sender address and its "
            f"username {login.username!r} is not an address",
            field="from",
            hint="give --from, or set a sender on the account key",
        )
    return parse_address(login.username, field="from")


def build_outgoing(
    request: SendEmailRequest, sender: Address, *, files: FileSource | None = None
) -> OutgoingMessage:
    """The validated message; every field is checked so that no input can inject headers.

    `files` is where attachments given by reference (`file: sha256:…`) are read from.
    """
    to = parse_address_list(request.to, field="to")
    cc = parse_address_list(request.cc, field="cc")
    bcc = parse_address_list(request.bcc, field="bcc")
    if not (to or cc or bcc):
        raise ValidationError("no recipients: give at least one of to, cc or bcc", field="to")
    return OutgoingMessage(
        sender=sender,
        to=to,
        cc=cc,
        bcc=bcc,
        reply_to=parse_address_list(request.reply_to, field="reply_to"),
        subject=check_single_line(request.subject, field="subject"),
        text=request.body,
        html=request.html,
        attachments=_attachments(request.attachments, files),
        headers=custom_headers(request.headers),
        in_reply_to=check_message_id(request.in_reply_to, field="in_reply_to")
        if request.in_reply_to
        else None,
        references=_references(request.references),
        importance=request.importance,
    )
