"""send_email: the Send Email activity, with a stable Message-ID across retries."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict

from mailwright.activities.context import ActivityContext
from mailwright.domain.message import make_message_id
from mailwright.domain.send_request import SendEmailRequest, build_outgoing, resolve_sender
from mailwright.plugins import ActivitySpec, register_activity
from mailwright.targets.delivery import deliver_output

# A rate-limit slot this near is waited for in place (the run keeps its claim); a later one
# raises RateLimitedError and the engine defers the run.
INLINE_WAIT = 5.0


class SendEmailInput(SendEmailRequest):
    """The fields of /api/v1/send-email; the target comes from the step or the workflow."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    target: str = ""


async def execute(ctx: ActivityContext, inputs: SendEmailInput) -> dict[str, Any]:
    target = inputs.target or ctx.require_target("send_email")
    resolved = ctx.targets.resolve(target, account_key=inputs.account_key or ctx.account_key)
    sender = resolved.mail_sender("sending mail")
    await ctx.targets.rate_limits.acquire(
        key=resolved.target.id,
        limits=sender.rate_limits,
        target=resolved.target.display_name,
        max_wait=INLINE_WAIT,
    )
    message = build_outgoing(inputs, resolve_sender(inputs, resolved), files=ctx.files)
    message_id = ctx.message_id
    if message_id is None:
        message_id = make_message_id(message.sender.ascii_domain)
        ctx.remember_message_id(message_id)
    return await deliver_output(
        message,
        sender,
        target_name=resolved.target.display_name,
        account_key=resolved.login.key_name if resolved.login else None,
        continue_if_one_address_valid=inputs.continue_if_one_address_valid,
        message_id=message_id,
        before_data=ctx.mark_sending,
    )


SPEC = register_activity(
    ActivitySpec(
        name="send_email",
        label="Send Email",
        input_model=SendEmailInput,
        execute=execute,
        description="Send one message through a target that sends mail (an SMTP Endpoint, or a plugin's).",
    )
)
