"""IMAP Endpoint targets: a mailbox read over IMAP (993 implicit TLS, 143 STARTTLS)."""

from __future__ import annotations

from typing import ClassVar

from mailwright.plugins import register_target_type
from mailwright.targets.mailbox import MailboxSettings, mailbox_target_type
from mailwright.transport.imap import IMAPEndpoint, connection_report


class IMAPSettings(MailboxSettings):
    """Settings of an IMAP Endpoint target; presets in targets/presets/imap.json."""

    endpoint_class: ClassVar[type[IMAPEndpoint]] = IMAPEndpoint

    def endpoint(self, target_name: str) -> IMAPEndpoint:
        return IMAPEndpoint(**self.endpoint_fields(target_name))


IMAP_ENDPOINT = register_target_type(
    mailbox_target_type(
        name="imap",
        protocol="IMAP",
        ssl_port=993,
        plain_port=143,
        settings_model=IMAPSettings,
        report=connection_report,
    )
)
