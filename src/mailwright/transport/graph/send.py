"""Sending one prepared message through Graph.

Small messages go in one `POST /users/{mailbox}/sendMail` (Graph answers 202 Accepted).
A message with an attachment of 3 MB or more (or small ones over 3 MB together) goes
the way Graph requires: a draft (`POST /users/{mailbox}/messages`), each small
attachment added to it, each large one through an upload session
(`createUploadSession`, then PUT chunks with `Content-Range` to its pre-authenticated
URL), then `POST /messages/{id}/send`. A draft that fails before it is sent is deleted.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from mailwright.domain.capabilities import SendReport
from mailwright.errors import TargetError, TargetRejectedError
from mailwright.transport.base import Login, ms
from mailwright.transport.graph.client import GraphClient, GraphEndpoint
from mailwright.transport.graph.convert import LARGE_ATTACHMENT, GraphAttachment, GraphMessage, graph_message

log = logging.getLogger(__name__)

# Upload-session chunks must be multiples of 320 KiB, and under 4 MB each for mail attachments.
CHUNK = 10 * 320 * 1024
ACCEPTED = 202
# PidTagDeleteAfterSubmit: a draft sent with it set leaves no copy in Sent Items.
_DELETE_AFTER_SUBMIT = {"id": "Boolean 0x0E01", "value": "true"}


async def send_message(
    endpoint: GraphEndpoint,
    login: Login | None,
    *,
    data: bytes,
    recipients: list[str],
    save_to_sent_items: bool,
    before_data: Callable[[], Awaitable[None]] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> SendReport:
    """Send `data` to `recipients` (the envelope's, Bcc included) from the endpoint's mailbox."""
    started = time.perf_counter()
    prepared = graph_message(data, recipients=recipients)
    if not recipients:
        raise TargetRejectedError(
            "the message has no recipients", code=400, reply="", target=endpoint.target_name
        )
    async with GraphClient(endpoint, login, transport=transport) as client:
        if prepared.needs_draft:
            await _send_draft(
                client, prepared, save_to_sent_items=save_to_sent_items, before_data=before_data
            )
        else:
            await client.token()  # a token refused shows before the message is marked as sending
            if before_data is not None:
                await before_data()
            await client.request(
                "POST",
                endpoint.user_path("/sendMail"),
                permission="Mail.Send",
                action="send the message",
                json_body={"message": prepared.inline(), "saveToSentItems": save_to_sent_items},
                stage="send",
                unknown_on_timeout=True,
            )
        timings = dict(client.timings)
    timings["graph"] = ms(started)
    reply = "Accepted: Microsoft Graph queued the message for delivery"
    return SendReport(
        recipients=[
            {"address": address, "status": "accepted", "code": ACCEPTED, "reply": reply}
            for address in recipients
        ],
        code=ACCEPTED,
        reply=reply,
        size=len(data),
        timings=timings,
        warnings=prepared.warnings,
    )


async def _send_draft(
    client: GraphClient,
    prepared: GraphMessage,
    *,
    save_to_sent_items: bool,
    before_data: Callable[[], Awaitable[None]] | None,
) -> None:
    ep = client.endpoint
    draft: dict[str, Any] = dict(prepared.message)
    if not save_to_sent_items:
        draft["singleValueExtendedProperties"] = [_DELETE_AFTER_SUBMIT]
    created = await client.request(
        "POST",
        ep.user_path("/messages"),
        permission="Mail.ReadWrite",
        action="create a draft for a message with large attachments",
        json_body=draft,
        stage="draft",
    )
    draft_id = str(created.json().get("id") or "")
    if not draft_id:
        raise TargetError("Microsoft Graph created a draft without an id", target=ep.target_name)
    sent = False
    try:
        for attachment in prepared.attachments:
            if attachment.size >= LARGE_ATTACHMENT:
                await _upload(client, draft_id, attachment)
            else:
                await client.request(
                    "POST",
                    ep.user_path(f"/messages/{draft_id}/attachments"),
                    permission="Mail.ReadWrite",
                    action=f"attach {attachment.name!r} to the draft",
                    json_body=attachment.as_json(),
                    stage="attach",
                )
        if before_data is not None:
            await before_data()
        sent = True  # from here on the outcome may be unknown: the draft is kept
        await client.request(
            "POST",
            ep.user_path(f"/messages/{draft_id}/send"),
            permission="Mail.Send",
            action="send the draft",
            stage="send",
            unknown_on_timeout=True,
        )
    finally:
        if not sent:
            with contextlib.suppress(TargetError):
                await client.request(
                    "DELETE",
                    ep.user_path(f"/messages/{draft_id}"),
                    permission="Mail.ReadWrite",
                    action="delete the unsent draft",
                    stage="cleanup",
                )


async def _upload(client: GraphClient, draft_id: str, attachment: GraphAttachment) -> None:
    ep = client.endpoint
    session = await client.request(
        "POST",
        ep.user_path(f"/messages/{draft_id}/attachments/createUploadSession"),
        permission="Mail.ReadWrite",
        action=f"start the upload of {attachment.name!r}",
        json_body={
            "AttachmentItem": {
                "attachmentType": "file",
                "name": attachment.name,
                "size": attachment.size,
                "contentType": attachment.content_type,
            }
        },
        stage="upload",
    )
    url = str(session.json().get("uploadUrl") or "")
    if not url:
        raise TargetError(
            "Microsoft Graph opened an upload session without an uploadUrl", target=ep.target_name
        )
    content = attachment.content
    for start in range(0, len(content), CHUNK):
        await client.upload(url, content[start : start + CHUNK], start=start, total=len(content))
    log.debug("uploaded %s (%d bytes) to draft of %r", attachment.name, attachment.size, ep.target_name)
