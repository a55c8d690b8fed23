"""POP3 Endpoint targets: one inbox read over POP3 (995 implicit TLS, 110 STARTTLS)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from mailwright.domain.capabilities import MessageDrop
from mailwright.plugins import register_target_type
from mailwright.targets.mailbox import MailboxSettings, mailbox_target_type

if TYPE_CHECKING:
    from mailwright.transport.base import Login
    from mailwright.transport.pop3 import POP3Endpoint


class POP3Settings(MailboxSettings):
    """Settings of a POP3 Endpoint target; presets in targets/presets/pop3.json."""

    def endpoint(self, target_name: str) -> POP3Endpoint:
        from mailwright.transport.pop3 import POP3Endpoint

        return POP3Endpoint(**self.endpoint_fields(target_name))


async def _report(settings: Any, target_name: str, login: Login | None) -> dict[str, Any]:
    from mailwright.transport.pop3 import connection_report

    return await connection_report(settings.endpoint(target_name), login)


@asynccontextmanager
async def open_mailbox(
    settings: BaseModel, *, target_name: str, login: Login | None
) -> AsyncIterator[MessageDrop]:
    """An open, logged-in POP3 session; deletions take effect when it closes (QUIT)."""
    from mailwright.transport.pop3 import POP3Connection

    assert isinstance(settings, POP3Settings)
    async with POP3Connection(settings.endpoint(target_name)) as connection:
        await connection.open(login)
        yield connection


POP3_ENDPOINT = register_target_type(
    mailbox_target_type(
        name="pop3",
        protocol="POP3",
        ssl_port=995,
        plain_port=110,
        settings_model=POP3Settings,
        report=_report,
        mailbox=open_mailbox,
        folders=False,
    )
)
