"""Opening the mailbox of an IMAP or POP3 Endpoint target for an activity."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from mailwright.errors import ValidationError
from mailwright.services.targets import TargetService
from mailwright.targets.imap import IMAPSettings
from mailwright.targets.pop3 import POP3Settings
from mailwright.transport.imap import IMAPConnection
from mailwright.transport.pop3 import POP3Connection


def _wrong_type(label: str, name: str, activity: str, wanted: str) -> ValidationError:
    return ValidationError(
        f"target {name!r} is an {label}; {activity} needs an {wanted} target", field="target"
    )


@asynccontextmanager
async def imap_folder(
    targets: TargetService,
    target: str,
    *,
    activity: str,
    folder: str,
    account_key: str | None = None,
    uidvalidity: int | None = None,
) -> AsyncIterator[IMAPConnection]:
    """An open IMAP connection with `folder` selected; stale UIDs (another UIDVALIDITY) are refused."""
    resolved = targets.resolve(target, account_key=account_key)
    if not isinstance(resolved.settings, IMAPSettings):
        raise _wrong_type(resolved.target.type_label, resolved.target.display_name, activity, "IMAP Endpoint")
    async with IMAPConnection(resolved.settings.endpoint(resolved.target.display_name)) as connection:
        await connection.open(resolved.login)
        current, _exists = await connection.select(folder)
        if uidvalidity is not None and uidvalidity != current:
            raise ValidationError(
                f"folder {folder!r} has UIDVALIDITY {current}, not {uidvalidity}: the UIDs are stale",
                field="uidvalidity",
                hint="read the folder again (read_email) and use the UIDs it gives",
            )
        yield connection


@asynccontextmanager
async def pop3_mailbox(
    targets: TargetService, target: str, *, activity: str, account_key: str | None = None
) -> AsyncIterator[POP3Connection]:
    resolved = targets.resolve(target, account_key=account_key)
    if not isinstance(resolved.settings, POP3Settings):
        raise _wrong_type(resolved.target.type_label, resolved.target.display_name, activity, "POP3 Endpoint")
    async with POP3Connection(resolved.settings.endpoint(resolved.target.display_name)) as connection:
        await connection.open(resolved.login)
        yield connection
