"""mark_email: mark messages (by UID) read, unread, flagged or unflagged."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mailwright.activities.context import ActivityContext
from mailwright.activities.mailbox import imap_folder
from mailwright.plugins import ActivitySpec, register_activity

_FLAGS = {
    "read": ("\\Seen", True),
    "unread": ("\\Seen", False),
    "flagged": ("\\Flagged", True),
    "unflagged": ("\\Flagged", False),
}


class MarkEmailInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = ""
    folder: str = "INBOX"
    uids: list[int] = Field(min_length=1, max_length=10_000)
    mark: Literal["read", "unread", "flagged", "unflagged"] = "read"
    uidvalidity: int | None = None
    account_key: str | None = None


async def execute(ctx: ActivityContext, inputs: MarkEmailInput) -> dict[str, Any]:
    flag, on = _FLAGS[inputs.mark]
    target = inputs.target or ctx.require_target("mark_email")
    async with imap_folder(
        ctx.targets,
        target,
        activity="mark_email",
        folder=inputs.folder,
        account_key=inputs.account_key or ctx.account_key,
        uidvalidity=inputs.uidvalidity,
    ) as connection:
        if on:
            await connection.add_flags(inputs.uids, [flag])
        else:
            await connection.remove_flags(inputs.uids, [flag])
    return {"marked": inputs.uids, "mark": inputs.mark, "folder": inputs.folder}


SPEC = register_activity(
    ActivitySpec(
        name="mark_email",
        label="Mark Email",
        input_model=MarkEmailInput,
        execute=execute,
        description="Mark messages read, unread, flagged or unflagged.",
    )
)
