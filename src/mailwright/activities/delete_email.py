"""delete_email: delete messages (by UID) from an IMAP folder."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mailwright.activities.context import ActivityContext
from mailwright.activities.mailbox import imap_folder
from mailwright.plugins import ActivitySpec, register_activity


class DeleteEmailInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = ""
    folder: str = "INBOX"
    uids: list[int] = Field(min_length=1, max_length=10_000)
    uidvalidity: int | None = None
    account_key: str | None = None


async def execute(ctx: ActivityContext, inputs: DeleteEmailInput) -> dict[str, Any]:
    target = inputs.target or ctx.require_target("delete_email")
    async with imap_folder(
        ctx.targets,
        target,
        activity="delete_email",
        folder=inputs.folder,
        account_key=inputs.account_key or ctx.account_key,
        uidvalidity=inputs.uidvalidity,
    ) as connection:
        await connection.delete(inputs.uids)
    return {"deleted": inputs.uids, "folder": inputs.folder}


SPEC = register_activity(
    ActivitySpec(
        name="delete_email",
        label="Delete Email",
        input_model=DeleteEmailInput,
        execute=execute,
        description="Delete messages by UID from an IMAP folder.",
    )
)
