"""Send Email: validate a request, resolve the target and key, deliver, report per recipient.

The request model and the building of the message are pure (domain/send_request.py);
sending goes through the target's `MailSender` (targets/delivery.py). This module
re-exports them for the faces.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from mailwright.domain.capabilities import MailSender
from mailwright.domain.message import OutgoingMessage
from mailwright.domain.send_request import (
    AttachmentIn,
    RecipientOutcome,
    SendEmailRequest,
    SendResult,
    ServerReply,
    build_outgoing,
    resolve_sender,
)
from mailwright.errors import RateLimitedError
from mailwright.services.targets import ResolvedTarget, TargetService
from mailwright.storage.files import FileStore
from mailwright.targets.delivery import deliver_output as send_through

__all__ = [
    "DIRECT_RATE_WAIT",
    "AttachmentIn",
    "RecipientOutcome",
    "SendEmailRequest",
    "SendResult",
    "SendService",
    "ServerReply",
    "build_outgoing",
    "deliver",
    "deliver_output",
    "resolve_sender",
]


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
        limits = resolved.mail_sender("sending mail").rate_limits
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
    sender: MailSender | None = None,
) -> SendResult:
    """Send one message through the target (on a pooled connection, for SMTP).

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
        sender=sender,
    )
    return SendResult.model_validate(output)


async def deliver_output(
    message: OutgoingMessage,
    resolved: ResolvedTarget,
    *,
    continue_if_one_address_valid: bool,
    message_id: str | None = None,
    before_data: Callable[[], Awaitable[None]] | None = None,
    sender: MailSender | None = None,
) -> dict[str, object]:
    """`deliver`, its result as the JSON of a `SendResult`; `sender`, when the caller holds it already."""
    return await send_through(
        message,
        sender or resolved.mail_sender("sending mail"),
        target_name=resolved.target.display_name,
        account_key=resolved.login.key_name if resolved.login else None,
        continue_if_one_address_valid=continue_if_one_address_valid,
        message_id=message_id,
        before_data=before_data,
    )
