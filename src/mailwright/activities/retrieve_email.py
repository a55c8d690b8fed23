"""retrieve_email: fetch messages over POP3, optionally deleting them after retrieval."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mailwright.activities.context import ActivityContext
from mailwright.activities.mailbox import pop3_mailbox
from mailwright.activities.read_email import ReadEmailInput, message_output
from mailwright.plugins import ActivitySpec, register_activity


class RetrieveEmailInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = ""
    max: int = Field(default=50, ge=1, le=1000)
    download_attachments: bool = False
    attachment_size_limit: int = Field(default=25 * 1024 * 1024, ge=0)
    skip_uidls: list[str] = Field(default_factory=list, description="UIDLs already processed")
    delete_after: bool = Field(default=False, description="delete what was retrieved (at QUIT)")
    account_key: str | None = None


async def execute(ctx: ActivityContext, inputs: RetrieveEmailInput) -> dict[str, Any]:
    target = inputs.target or ctx.require_target("retrieve_email")
    options = ReadEmailInput(
        download_attachments=inputs.download_attachments, attachment_size_limit=inputs.attachment_size_limit
    )
    skip = set(inputs.skip_uidls)
    messages: list[dict[str, Any]] = []
    async with pop3_mailbox(
        ctx.targets, target, activity="retrieve_email", account_key=inputs.account_key or ctx.account_key
    ) as connection:
        listing = await connection.uidl()
        for number, uidl in sorted(listing.items()):
            if uidl in skip:
                continue
            if len(messages) >= inputs.max:
                break
            output = message_output(number, await connection.retrieve(number), options, files=ctx.files)
            if output is None:
                continue
            output["uidl"] = uidl
            messages.append(output)
            if inputs.delete_after:
                await connection.delete(number)
    return {"count": len(messages), "messages": messages, "deleted": inputs.delete_after}


SPEC = register_activity(
    ActivitySpec(
        name="retrieve_email",
        label="Retrieve Email",
        input_model=RetrieveEmailInput,
        execute=execute,
        description="Fetch messages over POP3; optionally delete them after retrieval.",
    )
)
