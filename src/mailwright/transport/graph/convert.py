"""A prepared message (the MIME bytes every target's sender gets) as Graph's message JSON.

Graph's `message` resource has no room for MIME structure: one body (HTML when the
message has an HTML part, else its text), recipients as `emailAddress` objects, and
custom headers only when their names start with `X-` (`internetMessageHeaders`). What
cannot be carried (In-Reply-To, References, other custom headers) is named in the
send's warnings. Bcc recipients are the envelope's recipients that To and Cc do not
name (the MIME never shows Bcc).
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

# Graph takes at most 4 MB per request: attachments from 3 MB on go through an upload session.
LARGE_ATTACHMENT = 3 * 1024 * 1024
MAX_INLINE_TOTAL = 3 * 1024 * 1024  # all small attachments together in one sendMail

# Headers the JSON carries as fields (or that Graph writes itself).
_MAPPED = frozenset(
    {
        "date",
        "from",
        "to",
        "cc",
        "bcc",
        "reply-to",
        "subject",
        "message-id",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "content-disposition",
        "importance",
        "x-priority",
    }
)
_IMPORTANCE = {"low": "low", "normal": "normal", "high": "high"}


@dataclass(slots=True)
class GraphAttachment:
    name: str
    content_type: str
    content: bytes

    @property
    def size(self) -> int:
        return len(self.content)

    def as_json(self) -> dict[str, Any]:
        return {
            "@odata.type": "#microsoft.graph.fileAttachment",
            "name": self.name,
            "contentType": self.content_type,
            "contentBytes": base64.b64encode(self.content).decode("ascii"),
        }


@dataclass(slots=True)
class GraphMessage:
    """The message JSON without attachments, its attachments, and what Graph cannot carry."""

    message: dict[str, Any]
    attachments: list[GraphAttachment] = field(default_factory=list)
    message_id: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def needs_draft(self) -> bool:
        """Too large for one sendMail: a draft, its attachments uploaded, then send."""
        small = sum(a.size for a in self.attachments if a.size < LARGE_ATTACHMENT)
        return any(a.size >= LARGE_ATTACHMENT for a in self.attachments) or small > MAX_INLINE_TOTAL

    def inline(self) -> dict[str, Any]:
        """The message with its attachments inside (sendMail in one request)."""
        if not self.attachments:
            return self.message
        return {**self.message, "attachments": [a.as_json() for a in self.attachments]}


def _recipient(display: str, address: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"address": address}
    if display:
        entry["name"] = display
    return {"emailAddress": entry}


def _addresses(message: EmailMessage, name: str) -> list[tuple[str, str]]:
    header = message[name]
    if header is None:
        return []
    found = getattr(header, "addresses", ())
    return [(a.display_name, a.addr_spec) for a in found if a.addr_spec and a.addr_spec != "<>"]


def _body(message: EmailMessage) -> dict[str, str]:
    part = message.get_body(preferencelist=("html", "plain"))
    if part is None:
        return {"contentType": "text", "content": ""}
    assert isinstance(part, EmailMessage)
    content = part.get_content()
    text = content.replace("\r\n", "\n") if isinstance(content, str) else ""
    # The MIME line end after the last line is the wire's, not the author's.
    text = text.removesuffix("\n")
    kind = "html" if part.get_content_subtype() == "html" else "text"
    return {"contentType": kind, "content": text}


def _attachments(message: EmailMessage) -> list[GraphAttachment]:
    out: list[GraphAttachment] = []
    for part in message.iter_attachments():
        assert isinstance(part, EmailMessage)
        payload = part.get_payload(decode=True)
        out.append(
            GraphAttachment(
                name=part.get_filename() or "attachment",
                content_type=part.get_content_type(),
                content=payload if isinstance(payload, bytes) else b"",
            )
        )
    return out


def graph_message(data: bytes, *, recipients: list[str]) -> GraphMessage:
    """`data` (RFC 5322 bytes) as Graph's message; `recipients` are the envelope's (Bcc included)."""
    parsed = email.parser.BytesParser(policy=email.policy.default).parsebytes(data)
    assert isinstance(parsed, EmailMessage)
    to = _addresses(parsed, "To")
    cc = _addresses(parsed, "Cc")
    shown = {address.lower() for _, address in (*to, *cc)}
    bcc = [("", r) for r in recipients if r.lower() not in shown]
    message: dict[str, Any] = {
        "subject": str(parsed.get("Subject", "")),
        "body": _body(parsed),
        "toRecipients": [_recipient(*r) for r in to],
    }
    if cc:
        message["ccRecipients"] = [_recipient(*r) for r in cc]
    if bcc:
        message["bccRecipients"] = [_recipient(*r) for r in bcc]
    reply_to = _addresses(parsed, "Reply-To")
    if reply_to:
        message["replyTo"] = [_recipient(*r) for r in reply_to]
    senders = _addresses(parsed, "From")
    if senders:
        message["from"] = _recipient(*senders[0])
    importance = _IMPORTANCE.get(str(parsed.get("Importance", "")).strip().lower())
    if importance and importance != "normal":
        message["importance"] = importance
    message_id = str(parsed.get("Message-ID", "")).strip() or None
    if message_id:
        message["internetMessageId"] = message_id
    custom: list[dict[str, str]] = []
    dropped: list[str] = []
    for name, value in parsed.items():
        lowered = name.lower()
        if lowered in _MAPPED:
            continue
        if lowered.startswith("x-"):
            custom.append({"name": name, "value": str(value)})
        else:
            dropped.append(name)
    if custom:
        message["internetMessageHeaders"] = custom
    warnings = []
    if dropped:
        warnings.append(
            f"Microsoft Graph carries only custom headers whose names start with X-; not sent: "
            f"{', '.join(dropped)} (use an SMTP target for these)"
        )
    return GraphMessage(
        message=message, attachments=_attachments(parsed), message_id=message_id, warnings=warnings
    )
