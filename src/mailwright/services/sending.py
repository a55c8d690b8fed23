"""Send Email: validate a request, resolve the target and key, deliver, report per recipient."""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from mailwright.domain.addresses import Address, AddressInput, parse_address, parse_address_list
from mailwright.domain.message import (
    Attachment,
    Importance,
    OutgoingMessage,
    build_mime,
    check_header,
    check_message_id,
    check_single_line,
    make_message_id,
)
from mailwright.errors import RateLimitedError, TargetError, ValidationError
from mailwright.services.ratelimit import RateLimits
from mailwright.services.targets import ResolvedTarget, TargetService
from mailwright.storage.files import FileStore
from mailwright.transport.pool import PoolLimits, SMTPPool, shared_pools

log = logging.getLogger(__name__)


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


def _headers(value: dict[str, str] | list[str]) -> list[tuple[str, str]]:
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


def _attachment_bytes(item: AttachmentIn, name: str, files: FileStore | None) -> bytes:
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


def _attachments(items: list[AttachmentIn], files: FileStore | None) -> list[Attachment]:
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


def resolve_sender(request: SendEmailRequest, resolved: ResolvedTarget) -> Address:
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
    request: SendEmailRequest, sender: Address, *, files: FileStore | None = None
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
        headers=_headers(request.headers),
        in_reply_to=check_message_id(request.in_reply_to, field="in_reply_to")
        if request.in_reply_to
        else None,
        references=_references(request.references),
        importance=request.importance,
    )


DIRECT_RATE_WAIT = 60.0  # seconds a direct send waits for a rate-limit slot


class SendService:
    def __init__(self, targets: TargetService, files: FileStore | None = None) -> None:
        self._targets = targets
        self._files = files

    def check(self, request: SendEmailRequest) -> None:
        """Everything that can be checked without a server: target, key, sender, every field."""
        resolved = self._targets.resolve(request.target, account_key=request.account_key)
        build_outgoing(request, resolve_sender(request, resolved), files=self._files)

    async def send(self, request: SendEmailRequest) -> SendResult:
        """Send now, in this process (`mailwright send`); runs go through the executor instead."""
        # Everything is validated before any connection is opened.
        resolved = self._targets.resolve(request.target, account_key=request.account_key)
        message = build_outgoing(request, resolve_sender(request, resolved), files=self._files)
        await self._rate_slot(resolved)
        return await deliver(
            message, resolved, continue_if_one_address_valid=request.continue_if_one_address_valid
        )

    async def _rate_slot(self, resolved: ResolvedTarget) -> None:
        """The target's rate limits hold for a direct send too: a near slot is waited for.

        A direct send has no run to defer, so a slot further away than
        `DIRECT_RATE_WAIT` (a spent per-day budget) refuses the message, sending nothing.
        """
        limits = RateLimits.of(resolved.settings)
        name = resolved.target.display_name
        try:
            await self._targets.rate_limits.acquire(
                key=resolved.target.id, limits=limits, target=name, max_wait=DIRECT_RATE_WAIT
            )
        except RateLimitedError as exc:
            raise RateLimitedError(
                f"{exc.reason}: nothing was sent; the next slot is at {exc.until:%Y-%m-%d %H:%M:%S} UTC",
                reason=exc.reason,
                until=exc.until,
                target=name,
                hint="send it later, or queue it (POST /api/v1/send-email, or a workflow): "
                "a run waits for its slot",
            ) from None


async def deliver(
    message: OutgoingMessage,
    resolved: ResolvedTarget,
    *,
    continue_if_one_address_valid: bool,
    message_id: str | None = None,
    before_data: Callable[[], Awaitable[None]] | None = None,
    pool: SMTPPool | None = None,
) -> SendResult:
    """Send one message on a pooled connection to the target.

    Safe for many concurrent calls: sends to one target share its pool. A durable
    caller passes the Message-ID it stored, so a retry sends the very same message,
    and `before_data` to record that the outcome may become unknown.
    """
    output = await deliver_output(
        message,
        resolved,
        continue_if_one_address_valid=continue_if_one_address_valid,
        message_id=message_id,
        before_data=before_data,
        pool=pool,
    )
    return SendResult.model_validate(output)


async def deliver_output(
    message: OutgoingMessage,
    resolved: ResolvedTarget,
    *,
    continue_if_one_address_valid: bool,
    message_id: str | None = None,
    before_data: Callable[[], Awaitable[None]] | None = None,
    pool: SMTPPool | None = None,
) -> dict[str, Any]:
    """`deliver`, its result as the JSON of a `SendResult` (what a run step records).

    A batch records thousands of these a second; building the model only to dump
    it again would cost more than the rest of its bookkeeping. `pool`, when the
    caller holds the target's pool already, spares looking it up.
    """
    started = time.perf_counter()
    target_name = resolved.target.display_name
    pool = pool or target_pool(resolved)
    capabilities = await pool.capabilities()
    smtputf8 = message.needs_smtputf8 and capabilities.smtputf8
    if message.sender.needs_smtputf8 and not smtputf8:
        raise TargetError(
            f"the sender {message.sender.addr} needs SMTPUTF8, which {resolved.smtp().server} does not offer",
            target=target_name,
            hint="send from an ASCII address",
        )
    message_id = message_id or make_message_id(message.sender.ascii_domain)
    date = datetime.now(UTC).replace(microsecond=0)  # what Date shows; equal within a second
    data = build_mime(message, message_id=message_id, date=date, smtputf8=smtputf8)
    delivery = await pool.deliver(
        sender=message.sender.envelope(),
        recipients=[(a.envelope(), a.needs_smtputf8) for a in message.recipients()],
        data=data,
        smtputf8=smtputf8,
        continue_if_one_address_valid=continue_if_one_address_valid,
        before_data=before_data,
    )
    timings = dict(delivery.timings)
    timings["total"] = round((time.perf_counter() - started) * 1000, 2)
    recipients = [r.as_dict() for r in delivery.recipients]
    accepted = sum(r["status"] == "accepted" for r in recipients)
    if log.isEnabledFor(logging.INFO):
        log.info(
            "sent %s via %r: %d accepted, %d refused (%s)",
            message_id,
            target_name,
            accepted,
            len(recipients) - accepted,
            f"{delivery.code} {delivery.reply}",
        )
    return {
        "status": "sent" if accepted == len(recipients) else "partial",
        "message_id": message_id,
        "target": target_name,
        "account_key": resolved.login.key_name if resolved.login else None,
        "sender": message.sender.envelope(),
        "recipients": recipients,
        "server_reply": {"code": delivery.code, "text": delivery.reply},
        "size": delivery.size,
        "smtputf8": smtputf8,
        "timings": timings,
        "warnings": _transport_warnings(resolved, pool.endpoint.host, tls=delivery.tls is not None),
        "run_id": None,
    }


def target_pool(resolved: ResolvedTarget) -> SMTPPool:
    """The connection pool of the target; an edited target or account key gets fresh connections."""
    settings = resolved.smtp()
    login = resolved.login
    # Compared, never shown: the secret enters as a digest, so a changed password is a new pool.
    identity = (
        settings,
        resolved.target.display_name,  # named in the connections' errors
        login.key_name if login else None,
        login.username if login else None,
        _digest(login.password.reveal()) if login else None,
    )
    return shared_pools().pool(
        target_id=resolved.target.id,
        identity=identity,
        endpoint=lambda: settings.endpoint(resolved.target.display_name),
        login=login,
        limits=PoolLimits(
            max_connections=settings.max_connections,
            max_messages_per_connection=settings.max_messages_per_connection,
            idle_timeout=settings.idle_timeout,
        ),
    )


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


@functools.lru_cache(maxsize=256)
def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _transport_warnings(resolved: ResolvedTarget, host: str, *, tls: bool) -> list[str]:
    """What the user should know about how the message travelled."""
    out: list[str] = []
    if resolved.smtp().disable_certificate_validation:
        out.append("certificate validation is disabled for this target: the server was not authenticated")
    if not tls and not _is_loopback(host):
        out.append("the message went to the server without TLS (in plain text)")
    return out
