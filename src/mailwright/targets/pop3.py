"""POP3 Endpoint targets: a mailbox read over POP3 (995 implicit TLS, 110 STARTTLS)."""

from __future__ import annotations

from typing import ClassVar

from mailwright.plugins import register_target_type
from mailwright.targets.mailbox import MailboxSettings, mailbox_target_type
from mailwright.transport.pop3 import POP3Endpoint, connection_report


class POP3Settings(MailboxSettings):
    """Settings of an POP3 Endpoint target; presets in targets/presets/pop3.json."""

    endpoint_class: ClassVar[type[POP3Endpoint]] = POP3Endpoint

    def endpoint(self, target_name: str) -> POP3Endpoint:
        return POP3Endpoint(**self.endpoint_fields(target_name))


POP3_ENDPOINT = register_target_type(
    mailbox_target_type(
        name="pop3",
        protocol="POP3",
        ssl_port=995,
        plain_port=110,
        settings_model=POP3Settings,
        report=connection_report,
    )
)
