"""Opening a target's mailbox for an activity: one with folders (IMAP), or one drop of messages (POP3)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from mailwright.activities.context import Targets
from mailwright.domain.capabilities import FolderMailbox, MessageDrop
from mailwright.errors import ValidationError


@asynccontextmanager
async def imap_folder(
    targets: Targets,
    target: str,
    *,
    activity: str,
    folder: str,
    account_key: str | None = None,
    uidvalidity: int | None = None,
) -> AsyncIterator[FolderMailbox]:
    """An open mailbox with `folder` selected; stale UIDs (another UIDVALIDITY) are refused."""
    resolved = targets.resolve(target, account_key=account_key)
    async with resolved.mailbox(activity, folders=True) as mailbox:
        assert isinstance(mailbox, FolderMailbox)
        current, _exists = await mailbox.select(folder)
        if uidvalidity is not None and uidvalidity != current:
            raise ValidationError(
                f"folder {folder!r} has UIDVALIDITY {current}, not {uidvalidity}: the UIDs are stale",
                field="uidvalidity",
                hint="read the folder again (read_email) and use the UIDs it gives",
            )
        yield mailbox


@asynccontextmanager
async def pop3_mailbox(
    targets: Targets, target: str, *, activity: str, account_key: str | None = None
) -> AsyncIterator[MessageDrop]:
    """An open drop of numbered messages; deletions take effect when it closes."""
    resolved = targets.resolve(target, account_key=account_key)
    async with resolved.mailbox(activity, folders=False) as mailbox:
        assert isinstance(mailbox, MessageDrop)
        yield mailbox
