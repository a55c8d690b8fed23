"""move_email: move messages (by UID) to another folder, creating it when missing."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mailwright.activities.context import ActivityContext
from mailwright.activities.mailbox import imap_folder
from mailwright.plugins import ActivitySpec, register_activity


class MoveEmailInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = ""
    folder: str = "INBOX"
    uids: list[int] = Field(min_length=1, max_length=10_000)
    to_folder: str = Field(min_length=1)
    uidvalidity: int | None = Field(default=None, description="refuse if the folder's UIDs changed")
    account_key: str | None = None


async def execute(ctx: ActivityContext, inputs: MoveEmailInput) -> dict[str, Any]:
    target = inputs.target or ctx.require_target("move_email")
    async with imap_folder(
        ctx.targets,
        target,
        activity="move_email",
        folder=inputs.folder,
        account_key=inputs.account_key or ctx.account_key,
        uidvalidity=inputs.uidvalidity,
    ) as connection:
        created = await connection.create_folder(inputs.to_folder)
        await connection.move(inputs.uids, inputs.to_folder)
    return {
        "moved": inputs.uids,
        "from_folder": inputs.folder,
        "to_folder": inputs.to_folder,
        "created": created,
    }


SPEC = register_activity(
    ActivitySpec(
        name="move_email",
        label="Move Email",
        input_model=MoveEmailInput,
        execute=execute,
        description="Move messages by UID to another IMAP folder.",
    )
)
