"""Sending one prepared message through any target's `MailSender`, reported as a Send Email result."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from mailwright import metrics
from mailwright.domain.capabilities import MailSender
from mailwright.domain.message import OutgoingMessage, build_mime, make_message_id
from mailwright.errors import TargetError

log = logging.getLogger(__name__)


async def deliver_output(
    message: OutgoingMessage,
    sender: MailSender,
    *,
    target_name: str,
    account_key: str | None,
    continue_if_one_address_valid: bool,
    message_id: str | None = None,
    before_data: Callable[[], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """Send one message; its result as the JSON of a `SendResult` (what a run step records).

    A batch records thousands of these a second; building the model only to dump it
    again would cost more than the rest of its bookkeeping. A durable caller passes
    the Message-ID it stored, so a retry sends the very same message, and
    `before_data` to record that the outcome may become unknown.
    """
    started = time.perf_counter()
    utf8 = message.needs_smtputf8 and await sender.accepts_utf8()
    if message.sender.needs_smtputf8 and not utf8:
        raise TargetError(
            f"the sender {message.sender.addr} needs SMTPUTF8, which {sender.where} does not offer",
            target=target_name,
            hint="send from an ASCII address",
        )
    message_id = message_id or make_message_id(message.sender.ascii_domain)
    date = datetime.now(UTC).replace(microsecond=0)  # what Date shows; equal within a second
    data = build_mime(message, message_id=message_id, date=date, smtputf8=utf8)
    sending = time.perf_counter()
    report = await sender.send(
        sender=message.sender.envelope(),
        recipients=[(a.envelope(), a.needs_smtputf8) for a in message.recipients()],
        data=data,
        utf8=utf8,
        continue_if_one_address_valid=continue_if_one_address_valid,
        before_data=before_data,
    )
    metrics.send_seconds(time.perf_counter() - sending, target=target_name)
    timings = dict(report.timings)
    timings["total"] = round((time.perf_counter() - started) * 1000, 2)
    recipients = report.recipients
    accepted = sum(r["status"] == "accepted" for r in recipients)
    if log.isEnabledFor(logging.INFO):
        log.info(
            "sent %s via %r: %d accepted, %d refused (%s)",
            message_id,
            target_name,
            accepted,
            len(recipients) - accepted,
            f"{report.code} {report.reply}",
        )
    return {
        "status": "sent" if accepted == len(recipients) else "partial",
        "message_id": message_id,
        "target": target_name,
        "account_key": account_key,
        "sender": message.sender.envelope(),
        "recipients": recipients,
        "server_reply": {"code": report.code, "text": report.reply},
        "size": report.size,
        "smtputf8": utf8,
        "timings": timings,
        "warnings": report.warnings,
        "run_id": None,
    }
