"""IMAP Endpoint targets: a mailbox with folders read over IMAP (993 implicit TLS, 143 STARTTLS)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from mailwright.domain.capabilities import FolderMailbox
from mailwright.plugins import register_target_type
from mailwright.targets.mailbox import MailboxSettings, mailbox_target_type

if TYPE_CHECKING:
    from mailwright.transport.base import Login
    from mailwright.transport.imap import IMAPEndpoint


class IMAPSettings(MailboxSettings):
    """Settings of an IMAP Endpoint target; presets in targets/presets/imap.json."""

    def endpoint(self, target_name: str) -> IMAPEndpoint:
        from mailwright.transport.imap import IMAPEndpoint

        return IMAPEndpoint(**self.endpoint_fields(target_name))


async def _report(settings: Any, target_name: str, login: Login | None) -> dict[str, Any]:
    from mailwright.transport.imap import connection_report

    return await connection_report(settings.endpoint(target_name), login)


@asynccontextmanager
async def open_mailbox(
    settings: BaseModel, *, target_name: str, login: Login | None
) -> AsyncIterator[FolderMailbox]:
    """An open, logged-in IMAP connection; closed (LOGOUT) on leaving."""
    from mailwright.transport.imap import IMAPConnection

    assert isinstance(settings, IMAPSettings)
    async with IMAPConnection(settings.endpoint(target_name)) as connection:
        await connection.open(login)
        yield connection


IMAP_ENDPOINT = register_target_type(
    mailbox_target_type(
        name="imap",
        protocol="IMAP",
        ssl_port=993,
        plain_port=143,
        settings_model=IMAPSettings,
        report=_report,
        mailbox=open_mailbox,
        folders=True,
    )
)
